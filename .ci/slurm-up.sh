#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on this machine (Debian, root, no systemd) with slurmdbd and
# MariaDB, so that `sacct` works as on a real cluster. The node advertises no GPU.
# Writes the PIDs of the daemons it starts to /tmp/lmid-slurm.pids for .ci/slurm-down.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=""
for b in slurmctld slurmd slurmdbd munged mariadbd sbatch; do command -v "$b" >/dev/null || need=1; done
if [ -n "$need" ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null
fi
host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /run/mysqld
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld 2>/dev/null || true
if [ ! -s /etc/munge/munge.key ]; then
  head -c 1024 /dev/urandom > /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=lmid
SlurmctldHost=${host}
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
MinJobAge=600
DefMemPerCPU=1000
ReturnToService=2
SlurmdTimeout=300
MpiDefault=none
NodeName=${host} CPUs=$(nproc) RealMemory=${mem_mb} State=UNKNOWN
PartitionName=main Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=lmid-ci
StorageLoc=slurm_acct_db
CONF
chown slurm:slurm /etc/slurm/slurmdbd.conf
chmod 600 /etc/slurm/slurmdbd.conf

: > /tmp/lmid-slurm.started
start() {  # name, command...: start a daemon unless it runs already; remember that we did
  local name=$1; shift
  pgrep -x "$name" >/dev/null && return 0
  "$@"
  echo "$name" >> /tmp/lmid-slurm.started
}
start munged su -s /bin/sh munge -c /usr/sbin/munged
start mariadbd /etc/init.d/mariadb start >/dev/null
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'lmid-ci'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
start slurmdbd /usr/sbin/slurmdbd
for _ in $(seq 1 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
sacctmgr -i add cluster lmid >/dev/null 2>&1 || true
start slurmctld /usr/sbin/slurmctld
start slurmd /usr/sbin/slurmd
sacctmgr -i add account lmid Description=lmid Organization=lmid >/dev/null 2>&1 || true
sacctmgr -i add user "$(id -un)" Account=lmid >/dev/null 2>&1 || true
for _ in $(seq 1 60); do sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|alloc)' && break; sleep 0.5; done
sinfo
