"""What a child process (Packer, the staging test command) inherits from the worker: an allow-list.

The worker's environment holds Airflow's secrets (the metadata database URL with its password, the
broker URL, every `AIRFLOW_CONN_*`, the worker's own AWS credentials); none of it is a child's business.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

# Locale, paths and TLS trust: what any program needs to run at all.
BASE_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "SSL_CERT_FILE")
# A worker behind a proxy reaches AWS (and Packer its plugins) through it.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def allowed_environment(
    extra_names: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The allow-listed variables of `environ` (the worker's environment by default)."""
    source = os.environ if environ is None else environ
    names = (*BASE_VARIABLES, *PROXY_VARIABLES, *extra_names)
    return {name: source[name] for name in names if name in source}
