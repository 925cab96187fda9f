# The immudeploy Airflow image: the official image plus Debian's Packer, the project package
# (installed, not mounted, so every container runs the same code) and its DAGs, templates and config.
# The FROM tag must name the apache-airflow version pinned in pyproject.toml (tests/test_compose.py checks).
FROM apache/airflow:3.3.2-python3.11

USER root
# /opt/airflow/config is where docker-compose.yaml keeps the shared airflow.cfg (a named volume starts
# as a copy of this directory, so it must already belong to the airflow user).
# Packer 1.6.6 from Debian: all builders built in, no plugin download at bake time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends packer \
    && apt-get autoremove -yqq --purge \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /opt/immudeploy /opt/airflow/config \
    && chown airflow:root /opt/immudeploy /opt/airflow/config
USER airflow

WORKDIR /opt/immudeploy
COPY --chown=airflow:root pyproject.toml constraints.txt ./
COPY --chown=airflow:root src/ src/
# The lock file pins Airflow itself too, so the image's Airflow is never replaced by a resolver choice.
# The celery extra: the CeleryExecutor provider and the PostgreSQL driver, at the locked versions.
RUN pip install --no-cache-dir -c constraints.txt "apache-airflow==${AIRFLOW_VERSION}" ".[celery]"

# config/deployments.yaml names its Packer template as ../packer: keep the two side by side.
COPY --chown=airflow:root packer/ packer/
COPY --chown=airflow:root config/ config/
COPY --chown=airflow:root dags/ /opt/airflow/dags/
# plugins/ holds only AirflowPlugin modules (console links); the package itself is installed above.
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/

ENV IMMUDEPLOY_CONFIG=/opt/immudeploy/config/deployments.yaml \
    IMMUDEPLOY_PACKER_DIR=/opt/immudeploy/packer \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

WORKDIR /opt/airflow
