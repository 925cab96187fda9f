#!/usr/bin/env bash
# Provisioner (amazon-ebs.aws only): install the boot-time config fetcher and the systemd units
# (files/app-config.service, files/app.service, with @APP@ replaced by $APP).
#
# The boot contract with the deployment's user data (cloud-config, rendered by
# immudeploy.aws.groups.launch.release_user_data): cloud-init's `write_files` writes
# /etc/immutable/release.env (IMMUTABLE_SSM_PATH, IMMUTABLE_CACHE_PREFIX, ...) in
# cloud-init.service, before network-online.target; $APP-config.service is ordered after
# cloud-init.service and fetches that SSM path into /run/$APP/config.env; $APP.service starts
# after it with both files as its environment. No shell-script user data: that runs in
# cloud-final, after the units have already failed for lack of release.env.
#
# IMMUTABLE_ROOT installs into another root instead (the unit tests verify the installed units
# there with systemd-analyze); FILES is where the file provisioners put the sources.
set -euxo pipefail

: "${APP:?}"
root="${IMMUTABLE_ROOT:-}"
files="${FILES:-/tmp}"
if [[ ! "$APP" =~ ^[a-z][a-z0-9]*$ ]]; then
  echo "APP must be lower-case letters and digits, got '$APP'" >&2
  exit 1
fi

install -D -m 0755 "$files/immutable-fetch-config" "$root/usr/local/bin/immutable-fetch-config"
install -d -m 0755 "$root/etc/immutable" "$root/etc/systemd/system"
sed "s/@APP@/$APP/g" "$files/app-config.service" >"$root/etc/systemd/system/$APP-config.service"
sed "s/@APP@/$APP/g" "$files/app.service" >"$root/etc/systemd/system/$APP.service"
chmod 0644 "$root/etc/systemd/system/$APP-config.service" "$root/etc/systemd/system/$APP.service"

if [[ -n "$root" ]]; then
  systemctl --root="$root" enable "$APP-config.service" "$APP.service"
else
  rm -f "$files/immutable-fetch-config" "$files/app-config.service" "$files/app.service"
  systemctl daemon-reload
  systemctl enable "$APP-config.service" "$APP.service"
fi
