#!/usr/bin/env bash
# Stop the one-node SLURM cluster that tests/slurm_up.sh started (its jobs are cancelled first).
set -uo pipefail
[ "$(id -u)" = 0 ] || { echo "error: run as root (sudo $0)" >&2; exit 2; }
command -v scancel >/dev/null && scancel --quiet --full "--user=$(id -un)" 2>/dev/null || true
pids=""
for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    [ -s $pidfile ] && pids="$pids $(cat $pidfile)"
done
[ -n "$pids" ] && kill $pids 2>/dev/null
for _ in $(seq 60); do                         # until they have exited (their pid files go before they do)
    alive=""
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.5
done
[ -s /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null
echo "slurm_down: daemons stopped"
