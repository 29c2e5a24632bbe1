#!/usr/bin/env bash
# A real single-node Slurm on localhost, for the cluster-profile tests (tests/test_cluster.py).
#
#   tests/cluster/slurm.sh start STATE_DIR   install (if needed) and start munged, mariadbd, slurmdbd,
#                                            slurmctld and slurmd; config, logs, pidfiles in STATE_DIR;
#   tests/cluster/slurm.sh stop STATE_DIR    stop every daemon by the PID in its pidfile (never by name)
#
# The configuration goes to /etc/slurm (slurm.conf, slurmdbd.conf), where every Slurm command and the
# Slurm executor's nested srun look for it (the plugin drops SLURM_CONF from the job's environment); an
# existing slurm.conf not written by this script is never overwritten. `stop` removes both files. Needs root (CI runs as root on Debian 12, no systemd). Facts this
# follows: ../shared/docs/local-slurm.md (sacct, which the Slurm executor polls, needs slurmdbd).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cmd="${1:?usage: slurm.sh start|stop STATE_DIR}"
D="${2:?usage: slurm.sh start|stop STATE_DIR}"
DAEMONS="slurmd slurmctld slurmdbd mariadbd munged"   # stop order
ETC=/etc/slurm
MARK="# written by skysnake tests/cluster/slurm.sh"

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local t="$1" what="$2"; shift 2
    for _ in $(seq 1 $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "slurm.sh: $what did not come up in ${t}s; see the logs in $D" >&2
    return 1
}

stop() {
    for d in $DAEMONS; do
        f="$D/$d.pid"
        [ "$d" = mariadbd ] && f="$D/mysql/mariadbd.pid"
        [ "$d" = munged ] && f="$D/munge/munged.pid"
        [ -s "$f" ] || continue
        pid="$(cat "$f")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
    for f in "$ETC/slurm.conf" "$ETC/slurmdbd.conf"; do
        [ -f "$f" ] && head -1 "$f" | grep -qF "$MARK" && rm -f "$f"
    done
    return 0
}

start() {
    bash "$here/install_slurm.sh"
    if [ -f "$ETC/slurm.conf" ] && ! head -1 "$ETC/slurm.conf" | grep -qF "$MARK"; then
        echo "slurm.sh: $ETC/slurm.conf exists and was not written by this script: not touching a real cluster" >&2
        exit 1
    fi
    mkdir -p "$D"/{ctld,spool,mysql,munge}
    chmod 755 "$D"
    host="$(hostname -s)"
    me="$(id -un)"
    # --- munge: authentication between the daemons and commands (default socket) ---
    [ -s /etc/munge/munge.key ] || mungekey --create
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge "$D/munge"
    runuser -u munge -- munged --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log"
    wait_for 10 munged munge -n
    # --- MariaDB for slurmdbd (its own data dir, TCP on 127.0.0.1 only) ---
    chown mysql:mysql "$D/mysql"
    if [ ! -d "$D/mysql/mysql" ]; then
        mariadb-install-db --user=mysql --datadir="$D/mysql" --auth-root-authentication-method=socket \
            --skip-test-db >"$D/mariadb-install.log" 2>&1
    fi
    mariadbd --user=mysql --datadir="$D/mysql" --bind-address=127.0.0.1 --port=3306 \
        --socket="$D/mysql/mysqld.sock" --pid-file="$D/mysql/mariadbd.pid" --log-error="$D/mysql/mariadbd.log" \
        --skip-log-bin >/dev/null 2>&1 &
    wait_for 30 mariadbd test -s "$D/mysql/mariadbd.pid"
    wait_for 30 mariadbd mariadb --socket="$D/mysql/mysqld.sock" -e "select 1"
    mariadb --socket="$D/mysql/mysqld.sock" -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
    # --- Slurm configuration ---
    node="$(slurmd -C | head -1 | sed -E 's/RealMemory=[0-9]+/RealMemory=16000/')"
    mkdir -p "$ETC"
    cat >"$ETC/slurm.conf" <<CONF
$MARK (state in $D)
ClusterName=skysnake
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$me
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MinJobAge=600
ReturnToService=2
StateSaveLocation=$D/ctld
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
# A job using more memory than it asked for is killed (as on real clusters with cgroups)
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
SchedulerParameters=sched_interval=1
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    cat >"$ETC/slurmdbd.conf" <<CONF
$MARK (state in $D)
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=$me
PidFile=$D/slurmdbd.pid
LogFile=$D/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$ETC/slurmdbd.conf"
    slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster skysnake >/dev/null 2>&1 || true
    sacctmgr -i add account skysnake cluster=skysnake >/dev/null 2>&1 || true
    sacctmgr -i add user "$me" account=skysnake cluster=skysnake >/dev/null 2>&1 || true
    slurmctld
    wait_for 30 slurmctld scontrol ping
    slurmd
    wait_for 30 "slurmd (node idle)" bash -c "sinfo -h -o %t | grep -q idle"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: slurm.sh start|stop STATE_DIR" >&2; exit 2 ;;
esac
