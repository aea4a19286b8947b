#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine (Debian/Ubuntu, as root): controller and node daemon on the
# same host, munge for authentication, no cgroups, no accounting database. For CI (before tests/test_slurm.py)
# and for a user who wants to try `python -m ala_paper.sweep --launcher slurm` without a cluster.
#   sudo tests/slurm_up.sh        # installs slurm-wlm + munge with apt-get if sbatch is missing, starts the daemons
#   tests/slurm_down.sh           # stops them
# Partition: `debug` (the default), one node (this host) with all its CPUs, no GPUs.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "error: run as root (sudo $0): it installs packages and starts daemons" >&2; exit 2; }
start=$(date +%s)
if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    echo "slurm_up: apt-get install slurm-wlm munge took $(( $(date +%s) - start )) s"
fi

# munge: a key (the package makes one; make it if not), then the daemon as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
chmod 400 /etc/munge/munge.key
chmod 755 /run/munge
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.2; done
fi
munge -n | unmunge >/dev/null || { echo "error: munged did not start (see /var/log/munge/munged.log)" >&2; exit 1; }

# slurm.conf: this host as controller and as the one node, with the CPU count and memory slurmd detects.
node=$(slurmd -C | head -1)              # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
host=$(echo "$node" | sed -E 's/^NodeName=([^ ]+).*/\1/')
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<EOF
# Written by ala-paper tests/slurm_up.sh: a one-node cluster for tests.
ClusterName=ala-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
SchedulerParameters=batch_sched_delay=0
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
rm -f /etc/slurm/cgroup.conf

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o '%T' 2>/dev/null || true)
    [ "$state" = idle ] && break
    [ "$state" = down ] || [ "$state" = drained ] && scontrol update nodename="$host" state=resume 2>/dev/null || true
    sleep 1
done
if [ "$(sinfo -h -n "$host" -o '%T' 2>/dev/null)" != idle ]; then
    echo "error: node $host is not idle (sinfo: $(sinfo -h -o '%T %E' 2>&1)); see /var/log/slurm/" >&2
    exit 1
fi
echo "slurm_up: node $host idle in partition debug ($(echo "$node" | grep -o 'CPUs=[0-9]*')), $(( $(date +%s) - start )) s in all"
