#!/usr/bin/env bash
# Provisioner (amazon-ebs.aws only): install the boot-time config fetcher and the systemd units.
# At boot, $APP-config.service reads /etc/immutable/release.env (IMMUTABLE_SSM_PATH,
# IMMUTABLE_CACHE_PREFIX), fetches that SSM path into /run/$APP/config.env, and $APP.service
# starts with both files as its environment. The user data must write release.env with
# cloud-config write_files: that runs in cloud-init.service, before network-online.target.
# (A shell-script user data runs in cloud-final, after multi-user.target; it must then end with
# `systemctl restart $APP.service`.) A missing file or a failed fetch fails the units loudly:
# the instance never turns healthy and the deployment's health gate stops the rollout.
set -euxo pipefail

: "${APP:?}"

install -m 0755 /tmp/immutable-fetch-config /usr/local/bin/immutable-fetch-config
rm -f /tmp/immutable-fetch-config
install -d -m 0755 /etc/immutable

cat >"/etc/systemd/system/$APP-config.service" <<UNIT
[Unit]
Description=Fetch $APP configuration from SSM Parameter Store
Wants=network-online.target
After=network-online.target cloud-init.service

[Service]
Type=oneshot
RemainAfterExit=yes
EnvironmentFile=/etc/immutable/release.env
ExecStart=/usr/local/bin/immutable-fetch-config /run/$APP/config.env

[Install]
WantedBy=multi-user.target
UNIT

cat >"/etc/systemd/system/$APP.service" <<UNIT
[Unit]
Description=$APP
Requires=$APP-config.service
After=$APP-config.service

[Service]
User=$APP
Group=$APP
WorkingDirectory=/opt/$APP/current
EnvironmentFile=/etc/immutable/release.env
EnvironmentFile=/run/$APP/config.env
ExecStart=/opt/$APP/current/bin/start
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable "$APP-config.service" "$APP.service"
