#!/usr/bin/env bash
# Provisioner (amazon-ebs.aws only), last: remove build leftovers so every instance boots fresh.
set -euxo pipefail

apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*
# Instance identity is regenerated on first boot of each instance.
rm -f /etc/ssh/ssh_host_*
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs
fi
find /var/log -type f -exec truncate -s 0 {} +
rm -f /root/.bash_history "/home/${SUDO_USER:-admin}/.bash_history"
