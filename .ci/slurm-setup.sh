#!/usr/bin/env bash
# A single-node SLURM test cluster on this machine, with accounting (slurmdbd + MariaDB), for
# tests/test_slurm.py. Run as root; idempotent (a second run only checks, or starts what is down).
# No systemd here: the daemons are started directly. Debian 12 packages: SLURM 22.05, MariaDB 10.11.
#
# Cluster "strata-ci": node $(hostname -s) at 127.0.0.1 with the machine's CPUs and memory
# (from `slurmd -C`), in two partitions "cpu" (default) and "cpu2" so that per-rule partitions are
# exercised; account "strata" with user root. Logs: /var/log/slurm/*.log, /var/log/mysql/strata-ci.log.
set -euo pipefail

CLUSTER=strata-ci
ACCOUNT=strata
NODE=$(hostname -s)
LOGDIR=/var/log/slurm
RUNDIR=/run/slurm
DB_LOG=/var/log/mysql/strata-ci.log
DB_SOCKET=/run/mysqld/mysqld.sock
T0=$(date +%s)

say() { printf '[slurm-setup %3ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() {
    printf '[slurm-setup] ERROR: %s\n' "$1" >&2
    shift
    for log in "$@"; do
        if [ -f "$log" ]; then
            printf -- '----- last lines of %s -----\n' "$log" >&2
            tail -n 40 "$log" >&2
        fi
    done
    exit 1
}
# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND once a second until it succeeds.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    return 1
}
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"

# ---------------------------------------------------------------------------------------------
# 1. packages
need_install=0
for cmd in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd; do
    command -v "$cmd" >/dev/null 2>&1 || need_install=1
done
if [ "$need_install" = 1 ]; then
    say "apt-get install slurm-wlm slurmdbd munge mariadb-server ..."
    export DEBIAN_FRONTEND=noninteractive
    # Keep package scripts from starting services (no init system here; we start them below).
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_created=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server \
        >/tmp/strata-slurm-apt.log 2>&1 || die "apt-get install failed" /tmp/strata-slurm-apt.log
    if [ "$policy_created" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    say "installed: $(dpkg-query -W -f='${Package} ${Version}, ' slurmctld slurmdbd munge mariadb-server)"
else
    say "packages already installed ($(slurmctld -V))"
fi

# ---------------------------------------------------------------------------------------------
# 2. munge (authentication between the SLURM daemons and clients)
id munge >/dev/null 2>&1 || die "user munge missing (package munge not installed correctly?)"
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged || die "munged did not start" /var/log/munge/munged.log
    wait_for 15 munge bash -c 'munge -n | unmunge' || die "munge does not answer" /var/log/munge/munged.log
fi
say "munge ok"

# ---------------------------------------------------------------------------------------------
# 3. MariaDB (the accounting store of slurmdbd)
install -d -o mysql -g mysql -m 0755 /run/mysqld /var/log/mysql
if [ ! -d /var/lib/mysql/mysql ]; then
    say "initialising /var/lib/mysql"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/tmp/strata-mariadb-install.log 2>&1 ||
        die "mariadb-install-db failed" /tmp/strata-mariadb-install.log
fi
if ! mariadb-admin --socket="$DB_SOCKET" ping >/dev/null 2>&1; then
    say "starting mariadbd"
    setsid nohup /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket="$DB_SOCKET" \
        --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 --log-error="$DB_LOG" \
        --innodb-buffer-pool-size=128M </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadb mariadb-admin --socket="$DB_SOCKET" ping || die "mariadbd did not come up" "$DB_LOG"
fi
say "mariadb ok"

# slurmdbd's database user; the password is generated once and kept in slurmdbd.conf.
DBD_CONF=/etc/slurm/slurmdbd.conf
install -d -m 0755 /etc/slurm
DB_PASS=$(sed -n 's/^StoragePass=//p' "$DBD_CONF" 2>/dev/null || true)
[ -n "$DB_PASS" ] || DB_PASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
mariadb --socket="$DB_SOCKET" -u root <<SQL || die "could not create the slurm_acct_db database/user" "$DB_LOG"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---------------------------------------------------------------------------------------------
# 4. configuration
id slurm >/dev/null 2>&1 || die "user slurm missing (package slurmctld not installed correctly?)"
install -d -o slurm -g slurm -m 0755 "$LOGDIR" "$RUNDIR" /var/spool/slurmctld
install -d -o root -g root -m 0755 /var/spool/slurmd

# Node line from the hardware slurmd sees (CPUs, sockets/cores/threads, RealMemory), so that the
# node is not drained for "Low RealMemory" or a CPU count mismatch.
HW=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //' -e 's/UpTime=.*//')
[ -n "$HW" ] || die "slurmd -C printed no node configuration"

write_if_changed() { # FILE MODE OWNER, content on stdin; prints "changed" when it wrote
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
        rm -f "$tmp"
    else
        install -m "$2" -o "$3" -g "$3" "$tmp" "$1"
        rm -f "$tmp"
        echo changed
    fi
}

conf_changed=$(write_if_changed /etc/slurm/slurm.conf 0644 root <<EOF
# Written by .ci/slurm-setup.sh: a single-node test cluster for Strata's SLURM tests.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUNDIR/slurmctld.pid
SlurmdPidFile=$RUNDIR/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
# No cgroups in this sandbox: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
# Keep sbatch --comment (the Snakemake plugin writes rule_<name>_wildcards_... there).
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
SlurmctldTimeout=60
SlurmdTimeout=120
InactiveLimit=0
KillWait=30
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu2 Nodes=$NODE MaxTime=INFINITE State=UP
EOF
)
dbd_changed=$(write_if_changed "$DBD_CONF" 0600 slurm <<EOF
# Written by .ci/slurm-setup.sh.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGDIR/slurmdbd.log
PidFile=$RUNDIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
)
# slurmd reads cgroup.conf when present; none of its plugins is used here.
say "configuration: /etc/slurm/slurm.conf${conf_changed:+ (written)}, $DBD_CONF${dbd_changed:+ (written)}"
say "node: NodeName=$NODE $HW"

# ---------------------------------------------------------------------------------------------
# 5. slurmdbd, then the cluster/account/user associations, then slurmctld and slurmd
if running "$RUNDIR/slurmdbd.pid" && [ -n "$dbd_changed" ]; then
    say "restarting slurmdbd (configuration changed)"
    kill "$(cat "$RUNDIR/slurmdbd.pid")"
    sleep 2
fi
if ! running "$RUNDIR/slurmdbd.pid"; then
    say "starting slurmdbd"
    slurmdbd || die "slurmdbd did not start" "$LOGDIR/slurmdbd.log"
fi
wait_for 60 slurmdbd sacctmgr -n list cluster || die "slurmdbd does not answer sacctmgr" "$LOGDIR/slurmdbd.log"
say "slurmdbd ok"

if [ -z "$(sacctmgr -n -P list cluster "$CLUSTER" format=cluster)" ]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
if [ -z "$(sacctmgr -n -P list account "$ACCOUNT" format=account)" ]; then
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="Strata CI" Organization=strata >/dev/null
fi
if [ -z "$(sacctmgr -n -P list assoc cluster="$CLUSTER" account="$ACCOUNT" user=root format=user)" ]; then
    sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
fi
say "accounting: cluster $CLUSTER, account $ACCOUNT, user root"

if running "$RUNDIR/slurmctld.pid"; then
    [ -n "$conf_changed" ] && { say "scontrol reconfigure (configuration changed)"; scontrol reconfigure; }
else
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start" "$LOGDIR/slurmctld.log"
fi
wait_for 60 slurmctld scontrol ping || die "slurmctld does not answer" "$LOGDIR/slurmctld.log"
if ! running "$RUNDIR/slurmd.pid"; then
    say "starting slurmd"
    slurmd || die "slurmd did not start" "$LOGDIR/slurmd.log"
fi
say "slurmctld and slurmd up"

# The node is idle once slurmd has registered; resume it if an earlier run left it down/drained.
node_state() { sinfo -h -n "$NODE" -o '%T' | sort -u | tr '\n' ' '; }
for i in $(seq 60); do
    state=$(node_state)
    case "$state" in
        *idle* | *mixed* | *allocated*) break ;;
        *down* | *drain* | *fail*)
            if [ "$i" -gt 3 ]; then scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true; fi ;;
    esac
    sleep 1
done
case "$(node_state)" in
    *idle* | *mixed* | *allocated*) ;;
    *) die "node $NODE is not idle: $(sinfo -h -N -o '%N %P %T %E')" "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" ;;
esac
sinfo -o '%P %a %D %c %m %T' | sed 's/^/    /'

# A real job through each partition; accounting must then list them (records reach slurmdbd
# asynchronously, a few seconds after the jobs end).
check=strata-setup-check-$$
for partition in cpu cpu2; do
    out=$(timeout 120 srun -J "$check" -p "$partition" -A "$ACCOUNT" -n 1 -c 1 --mem=100 -t 1 hostname 2>&1) ||
        die "test job on partition $partition failed: $out" "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log"
done
accounted() { [ "$(sacct -n -X -P -S now-1hours --name "$check" -o Partition | sort -u | wc -l)" -eq 2 ]; }
wait_for 60 sacct accounted || die "sacct does not list the test jobs: $(sacct -X -a -S now-1hours 2>&1)" \
    "$LOGDIR/slurmdbd.log" "$LOGDIR/slurmctld.log"
say "test jobs ran on partitions cpu and cpu2 and sacct lists them"
say "SLURM cluster $CLUSTER is up"
