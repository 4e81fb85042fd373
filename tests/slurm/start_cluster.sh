#!/usr/bin/env bash
# Start (or repair) a real one-node SLURM cluster on this host, for the test suite.
#
# Idempotent: run it as often as you like; it installs what is missing, starts
# what is not running, restarts daemons whose config changed, resumes a
# DOWN/DRAIN node, then waits until the node is usable and sacct answers.
# Needs root. No systemd: daemons are started directly. No prompts.
#
# Exit 0 and one summary line on success; exit 1 with log tails on failure.
set -euo pipefail
exec </dev/null

CLUSTER_NAME=localcluster
PARTITION=debug
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurm_test_pw
READY_TIMEOUT=${SLURM_READY_TIMEOUT:-60}

ETC=/etc/slurm
LOGDIR=/var/log/slurm
RUNDIR=/run/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
MYSQL_SOCK=/run/mysqld/mysqld.sock

log() { echo "[start_cluster] $*" >&2; }

dump_logs() {
    local f
    for f in "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" "$LOGDIR/slurmdbd.log" \
             "$LOGDIR/mariadb.log" /var/log/munge/munged.log; do
        [[ -s $f ]] || continue
        echo "----- tail $f -----" >&2
        tail -n 25 "$f" >&2
    done
}

die() {
    log "ERROR: $*"
    dump_logs
    exit 1
}

[[ $(id -u) -eq 0 ]] || { log "ERROR: must run as root"; exit 1; }

# ---------------------------------------------------------------- install
need_install=0
for bin in slurmctld slurmd slurmdbd sinfo sacct munged mariadbd; do
    command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin ]] || need_install=1
done
if (( need_install )); then
    command -v apt-get >/dev/null 2>&1 || die "slurm not installed and no apt-get"
    log "installing slurm-wlm munge slurmdbd mariadb-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # Lock timeout: wait for another apt/dpkg run instead of failing on its lock.
    apt-get -o DPkg::Lock::Timeout=600 update -q >&2 || die "apt-get update failed"
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        slurm-wlm munge slurmdbd mariadb-server >&2 || die "apt-get install failed"
fi
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

# ---------------------------------------------------------------- helpers
# pid of a running daemon: from its pid file if valid, else by exact name.
daemon_pid() {
    local name=$1 pidfile=${2:-} pid=""
    if [[ -n $pidfile && -r $pidfile ]]; then
        pid=$(head -n1 "$pidfile" 2>/dev/null | tr -dc 0-9)
        if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
            echo "$pid"; return 0
        fi
    fi
    pid=$(pgrep -x "$name" | head -n1 || true)
    [[ -n $pid ]] && { echo "$pid"; return 0; }
    return 1
}

stop_daemon() {
    local name=$1 pidfile=${2:-} pid i
    while pid=$(daemon_pid "$name" "$pidfile"); do
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    done
    [[ -n $pidfile ]] && rm -f "$pidfile"
    return 0
}

# ensure_daemon NAME PIDFILE SECONDS CHECK_CMD -- START_CMD...
# Start NAME when it is not running, until CHECK_CMD succeeds. Restarts it if it
# dies meanwhile (e.g. it was still shutting down from a kill when we looked).
ensure_daemon() {
    local name=$1 pidfile=$2 secs=$3 check=$4; shift 5
    local end=$((SECONDS + secs)) tries=0
    until eval "$check" >/dev/null 2>&1; do
        if ! daemon_pid "$name" "$pidfile" >/dev/null; then
            (( tries++ < 3 )) || die "$name keeps dying"
            log "starting $name"
            "$@" </dev/null >>"$LOGDIR/$name.out" 2>&1 || log "$name: start command failed (rc=$?)"
        fi
        (( SECONDS < end )) || die "timeout (${secs}s) waiting for $name"
        sleep 0.3
    done
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
    local secs=$1 what=$2; shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        (( SECONDS < end )) || die "timeout (${secs}s) waiting for $what"
        sleep 0.3
    done
}

# write $2 (content) to $1 only if different; mode $3
write_if_changed() {
    local path=$1 content=$2 mode=$3
    if [[ ! -f $path ]] || [[ "$(cat "$path")" != "$content" ]]; then
        log "writing $path"
        umask 077
        printf '%s\n' "$content" > "$path.tmp"
        chown root:root "$path.tmp"; chmod "$mode" "$path.tmp"
        mv -f "$path.tmp" "$path"
        umask 022
    fi
}

# ---------------------------------------------------------------- dirs / host
install -d -m 755 "$ETC" "$LOGDIR" "$RUNDIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
HOST=$(hostname -s)
[[ -n $HOST ]] || die "hostname -s is empty"
if ! getent hosts "$HOST" >/dev/null 2>&1; then
    log "adding $HOST to /etc/hosts"
    echo "127.0.1.1 $HOST" >> /etc/hosts
fi

# ---------------------------------------------------------------- munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    install -d -o munge -g munge -m 700 /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        mungekey -c -f -k /etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    stop_daemon munged /run/munge/munged.pid
    log "starting munged"
    runuser -u munge -- munged --force </dev/null >/dev/null 2>&1 || die "munged failed to start"
    wait_for 10 munged munge_ok
fi

# ---------------------------------------------------------------- mariadb
mysql_ok() { mariadb-admin --socket="$MYSQL_SOCK" ping >/dev/null 2>&1; }
if ! mysql_ok; then
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising mariadb datadir"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOGDIR/mariadb-install.log" 2>&1 \
            || { cat "$LOGDIR/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    stop_daemon mariadbd /run/mysqld/mysqld.pid
    install -d -o mysql -g mysql -m 755 /run/mysqld
    log "starting mariadbd"
    setsid mariadbd --user=mysql --socket="$MYSQL_SOCK" --pid-file=/run/mysqld/mysqld.pid \
        </dev/null >>"$LOGDIR/mariadb.log" 2>&1 &
    wait_for 30 "mariadb socket" mysql_ok
fi
mariadb --socket="$MYSQL_SOCK" -e "
    CREATE DATABASE IF NOT EXISTS $DB_NAME;
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
    FLUSH PRIVILEGES;" || die "mariadb: cannot create $DB_NAME / user $DB_USER"

# ---------------------------------------------------------------- config
NODE_LINE=$(slurmd -C 2>/dev/null | grep '^NodeName=' | head -n1)
[[ -n $NODE_LINE ]] || die "slurmd -C printed no NodeName line"

write_if_changed "$ETC/slurmdbd.conf" "# generated by tests/slurm/start_cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUNDIR/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME" 600

write_if_changed "$ETC/slurm.conf" "# generated by tests/slurm/start_cluster.sh
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$RUNDIR/slurmctld.pid
SlurmdPidFile=$RUNDIR/slurmd.pid
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
EnforcePartLimits=ALL
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2048
MaxArraySize=1001
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobCompType=jobcomp/none
$NODE_LINE State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP" 644

# A daemon is restarted when its conf differs from the one it was started with
# (checksum kept next to the conf).
conf_sum() { sha256sum "$1" | cut -d' ' -f1; }
started_with() { cat "$1.started.sha256" 2>/dev/null || true; }

# ---------------------------------------------------------------- slurmdbd
DBD_PID=$RUNDIR/slurmdbd.pid
if [[ $(started_with "$ETC/slurmdbd.conf") != $(conf_sum "$ETC/slurmdbd.conf") ]]; then
    stop_daemon slurmdbd "$DBD_PID"
fi
ensure_daemon slurmdbd "$DBD_PID" 30 "sacctmgr -n -P list cluster" -- slurmdbd
conf_sum "$ETC/slurmdbd.conf" > "$ETC/slurmdbd.conf.started.sha256"

# ---------------------------------------------------------------- slurmctld + slurmd
CTLD_PID=$RUNDIR/slurmctld.pid
SLURMD_PID=$RUNDIR/slurmd.pid
if [[ $(started_with "$ETC/slurm.conf") != $(conf_sum "$ETC/slurm.conf") ]]; then
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
fi
# -i: ignore unreadable state files left by an older run.
ensure_daemon slurmctld "$CTLD_PID" 30 "scontrol ping | grep -q UP" -- slurmctld -i
ensure_daemon slurmd "$SLURMD_PID" 30 "daemon_pid slurmd $SLURMD_PID" -- slurmd
conf_sum "$ETC/slurm.conf" > "$ETC/slurm.conf.started.sha256"

# ---------------------------------------------------------------- wait until usable
end=$((SECONDS + READY_TIMEOUT))
state=""
while :; do
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n1 || true)
    case $state in
        idle|mix|alloc|comp)
            sacct -n -X -S now >/dev/null 2>&1 && break ;;
        down*|drain*|drng*|fail*)
            log "node state '$state': resuming"
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    (( SECONDS < end )) || die "node $HOST not ready after ${READY_TIMEOUT}s (state='$state')"
    sleep 0.5
done

read -r cpus mem <<<"$(sinfo -h -n "$HOST" -o '%c %m' | head -n1)"
echo "slurm ready: node=$HOST partition=$PARTITION cpus=$cpus mem=${mem}MB state=$state"
