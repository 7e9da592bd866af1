#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the SLURM tests and for trying the cluster path by hand.
#
#   bash .ci/slurm.sh install    # Debian packages: slurmctld slurmd slurm-client munge slurmdbd mariadb-server
#   bash .ci/slurm.sh start      # munged, MariaDB + slurmdbd (so sacct works), slurmctld, slurmd; waits for idle
#   export SLURM_CONF=/tmp/iluvattnshun-slurm/slurm.conf   # what `start` prints last; every client needs it
#   bash .ci/slurm.sh stop       # stops every daemon that `start` started (by PID file, in reverse order)
#   bash .ci/slurm.sh status     # sinfo / squeue
#   bash .ci/slurm.sh running    # exit status 0 when this script's cluster is up
#
# Everything lives in $SLURM_STATE_DIR (default /tmp/iluvattnshun-slurm): configs, keys, spool, logs, PID files,
# the database. Nothing under /etc is changed and no system service is started. Runs as root (SlurmUser=root).
# Measured facts and pitfalls behind the settings: ../shared/notes/slurm-one-node.md.
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/tmp/iluvattnshun-slurm}
CTLD_PORT=${SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_SLURMD_PORT:-6818}
DBD_PORT=${SLURM_DBD_PORT:-6819}
DB_PORT=${SLURM_DB_PORT:-3307}
ACCOUNTING=${SLURM_ACCOUNTING:-1}  # 0: no slurmdbd / MariaDB (sacct then fails; cancelled jobs look unknown)
HOST=$(hostname -s)
SOCK=$STATE/munge/munge.socket.2

log() { echo "slurm.sh: $*" >&2; }

install() {
    local pkgs=(slurmctld slurmd slurm-client munge)
    [ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
    local missing=()
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt-get update -qq >/dev/null 2>&1 || true
    # Debian's policy keeps packages from starting their services in containers; this script starts its own.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            log "$what did not come up within ${limit}s; logs in $STATE/log"
            for f in "$STATE"/log/*.log; do echo "== $f" >&2; tail -n 5 "$f" >&2; done
            return 1
        fi
        sleep 0.2
    done
}

write_configs() {
    local cpus
    cpus=$(nproc)
    mkdir -p "$STATE"/{munge,log,run,spool/ctld,spool/d,db}
    chmod 755 "$STATE" "$STATE/munge"  # munged refuses a socket directory that is not world-executable
    cat >"$STATE/slurm.conf" <<EOF
# Written by .ci/slurm.sh: a one-node cluster for tests (no cgroups needed).
ClusterName=iluvattnshun
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=10
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
KillWait=5
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    if [ "$ACCOUNTING" = 1 ]; then
        cat >>"$STATE/slurm.conf" <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$SOCK
JobCompType=jobcomp/none
EOF
        cat >"$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
        chmod 600 "$STATE/slurmdbd.conf"  # slurmdbd refuses a readable config (it holds a password)
    fi
}

start() {
    command -v slurmctld >/dev/null || { log "SLURM is not installed: bash .ci/slurm.sh install"; exit 1; }
    if pid_alive "$STATE/run/slurmctld.pid"; then
        log "already running ($STATE)"
        echo "export SLURM_CONF=$STATE/slurm.conf"
        return 0
    fi
    local t0=$SECONDS
    write_configs
    export SLURM_CONF=$STATE/slurm.conf

    [ -f "$STATE/munge.key" ] || { dd if=/dev/urandom of="$STATE/munge.key" bs=1024 count=1 status=none; }
    chmod 600 "$STATE/munge.key"
    munged --force --key-file="$STATE/munge.key" --socket="$SOCK" --pid-file="$STATE/run/munged.pid" \
        --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge.seed"
    wait_for 10 munged munge --socket="$SOCK" -n

    if [ "$ACCOUNTING" = 1 ]; then
        if [ ! -d "$STATE/db/mysql" ]; then
            mariadb-install-db --user=root --datadir="$STATE/db" --skip-test-db --auth-root-authentication-method=socket \
                >"$STATE/log/mariadb-install.log" 2>&1
        fi
        mariadbd --user=root --datadir="$STATE/db" --socket="$STATE/run/mysqld.sock" --port="$DB_PORT" \
            --bind-address=127.0.0.1 --pid-file="$STATE/run/mariadb.pid" --log-error="$STATE/log/mariadb.log" \
            --skip-log-bin --innodb-buffer-pool-size=32M >/dev/null 2>&1 &
        wait_for 30 mariadb mariadb --socket="$STATE/run/mysqld.sock" -u root -e "SELECT 1"
        mariadb --socket="$STATE/run/mysqld.sock" -u root -e "
            CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
        slurmdbd  # finds slurmdbd.conf beside $SLURM_CONF
        wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT"
    fi

    slurmctld -f "$STATE/slurm.conf"
    wait_for 30 slurmctld scontrol ping
    slurmd -f "$STATE/slurm.conf"
    wait_for 60 "the node" bash -c '[ "$(sinfo -h -N -o %T | head -n1)" = idle ]'
    log "cluster up in $((SECONDS - t0)) s ($STATE; accounting: $ACCOUNTING)"
    echo "export SLURM_CONF=$STATE/slurm.conf"
}

stop_one() {  # stop_one NAME: TERM by PID file, then KILL after 10 s
    local pidfile=$STATE/run/$1.pid pid
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { log "$1 ($pid) ignored TERM; killing"; kill -KILL "$pid" 2>/dev/null || true; }
    rm -f "$pidfile"
}

stop() {
    local t0=$SECONDS
    export SLURM_CONF=$STATE/slurm.conf
    # Jobs first (their processes belong to slurmd's steps), then the daemons in reverse start order.
    if pid_alive "$STATE/run/slurmctld.pid"; then scancel --full --quiet -u "$(id -un)" 2>/dev/null || true; fi
    stop_one slurmd
    stop_one slurmctld
    stop_one slurmdbd
    stop_one mariadb
    stop_one munged
    log "stopped in $((SECONDS - t0)) s"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    env) echo "export SLURM_CONF=$STATE/slurm.conf" ;;
    running) pid_alive "$STATE/run/slurmctld.pid" ;;
    status) export SLURM_CONF=$STATE/slurm.conf; sinfo; squeue ;;
    *) echo "usage: bash .ci/slurm.sh install|start|stop|restart|status|env|running" >&2; exit 2 ;;
esac
