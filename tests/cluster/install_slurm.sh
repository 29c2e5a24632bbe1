#!/usr/bin/env bash
# Install a single-node Slurm (with slurmdbd + MariaDB and the torque/PBS wrappers) from Debian packages.
# Idempotent: does nothing when the packages are already installed. Needs root (CI runs as root).
set -euo pipefail
PKGS="munge slurmctld slurmd slurm-client slurmdbd mariadb-server slurm-wlm-torque"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install_slurm.sh: need root to apt-get install:$missing" >&2
    exit 1
fi
# Package scripts must not try to start services (no systemd here): policy-rc.d exits 101.
had_policy=0
[ -e /usr/sbin/policy-rc.d ] && had_policy=1
if [ "$had_policy" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
fi
trap '[ "$had_policy" = 0 ] && rm -f /usr/sbin/policy-rc.d' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
