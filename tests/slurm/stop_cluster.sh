#!/usr/bin/env bash
# Stop the local test SLURM cluster started by start_cluster.sh (manual use;
# the tests never call this). Stops slurmd, slurmctld, slurmdbd, then mariadbd
# and munged. Pass --slurm-only to leave mariadbd and munged running.
# Config, state and the accounting database are kept, so start_cluster.sh
# brings everything back.
set -uo pipefail

[[ $(id -u) -eq 0 ]] || { echo "stop_cluster: must run as root" >&2; exit 1; }

stop_daemon() {  # NAME PIDFILE: TERM (by pid), then KILL after ~10 s
    local name=$1 pidfile=$2 pid i
    while :; do
        pid=""
        [[ -r $pidfile ]] && pid=$(head -n1 "$pidfile" | tr -dc 0-9)
        [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] \
            || pid=$(pgrep -x "$name" | head -n1)
        [[ -n $pid ]] || break
        echo "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        sleep 0.2
    done
    rm -f "$pidfile"
}

stop_daemon slurmd /run/slurm/slurmd.pid
stop_daemon slurmctld /run/slurm/slurmctld.pid
stop_daemon slurmdbd /run/slurm/slurmdbd.pid
if [[ ${1:-} != --slurm-only ]]; then
    stop_daemon mariadbd /run/mysqld/mysqld.pid
    stop_daemon munged /run/munge/munged.pid
fi
echo "slurm stopped"
