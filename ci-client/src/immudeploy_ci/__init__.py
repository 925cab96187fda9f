"""immudeploy-ci: trigger immudeploy's DAGs from CI over Airflow's REST API, without installing Airflow."""

__version__ = "0.1.0"
