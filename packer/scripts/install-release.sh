#!/usr/bin/env bash
# Provisioner (amazon-ebs.aws only): install the release tarball under /opt/$APP/releases/$VERSION
# and point /opt/$APP/current at it. Inputs come from the provisioner's environment_vars:
# APP, VERSION, RELEASE_URL.
set -euxo pipefail

: "${APP:?}" "${VERSION:?}"
if [[ -z "${RELEASE_URL:-}" ]]; then
  echo "RELEASE_URL is empty: set the release_url variable for a real AWS build" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# awscli and python3 are used at boot by /usr/local/bin/immutable-fetch-config.
apt-get install -y -q --no-install-recommends ca-certificates curl awscli python3

if ! id "$APP" >/dev/null 2>&1; then
  useradd --system --home-dir "/opt/$APP" --shell /usr/sbin/nologin "$APP"
fi

release_dir="/opt/$APP/releases/$VERSION"
install -d -m 0755 "/opt/$APP" "/opt/$APP/releases" "$release_dir"
tarball="$(mktemp)"
# No xtrace around the download: a presigned URL carries a signature.
set +x
curl -fsSL --retry 5 --retry-connrefused -o "$tarball" "$RELEASE_URL"
set -x
tar -xzf "$tarball" -C "$release_dir" --no-same-owner
rm -f "$tarball"
if [[ ! -x "$release_dir/bin/start" ]]; then
  echo "release tarball must contain an executable bin/start" >&2
  exit 1
fi
chown -R root:root "$release_dir"
ln -sfn "$release_dir" "/opt/$APP/current"
