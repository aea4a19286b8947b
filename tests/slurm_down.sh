#!/usr/bin/env bash
# Stop the one-node SLURM cluster that tests/slurm_up.sh started (its jobs are cancelled first).
set -uo pipefail
[ "$(id -u)" = 0 ] || { echo "error: run as root (sudo $0)" >&2; exit 2; }
command -v scancel >/dev/null && scancel --quiet --full "--user=$(id -un)" 2>/dev/null || true
for daemon in slurmd slurmctld; do
    pidfile=/run/$daemon.pid
    [ -s $pidfile ] && kill "$(cat $pidfile)" 2>/dev/null
done
for _ in $(seq 30); do
    { [ -s /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null; } || \
    { [ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; } || break
    sleep 0.5
done
[ -s /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null
echo "slurm_down: daemons stopped"
