#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests in tests/slurm/ and for trying
# `python run.py -m hydra/launcher=slurm` without a real cluster.
#
#   scripts/slurm_local.sh up       install (Debian packages, needs root) when missing, start
#   scripts/slurm_local.sh down     stop the daemons it started
#   scripts/slurm_local.sh status   say whether the node answers and is idle
#
# `up` is idempotent: running daemons are left alone, a written config is kept unless the
# machine's CPUs or memory changed. The node is this host (`hostname -s`), with one
# partition `debug`; processes are tracked without cgroups (proctrack/linuxproc,
# task/none), so it also runs inside containers.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
RUN=/run/slurm-local
LOGS=/var/log/slurm
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  local missing=()
  for cmd in slurmctld slurmd sinfo munged mungekey; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; run as root to install ${PACKAGES[*]}"
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install ${PACKAGES[*]}"
  echo "installing ${PACKAGES[*]} ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${PACKAGES[@]}" >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${PACKAGES[@]}" >/dev/null; } \
    || die "apt-get could not install ${PACKAGES[*]}"
}

write_config() {
  local host node
  host=$(hostname -s)
  # slurmd -C prints this machine's NodeName line (CPUs, sockets, cores, RealMemory).
  node=$(slurmd -C | head -n 1)
  [[ $node == NodeName=* ]] || die "slurmd -C did not describe this node: $node"
  node="NodeName=$host ${node#NodeName=* }"
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS" "$RUN"
  local text
  text=$(cat <<CONFIG
# Written by scripts/slurm_local.sh: a one-node cluster for tests and trials.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# No cgroups: works in containers.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Cores are scheduled, memory is not: jobs without --mem share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
# Finished jobs leave the controller's memory after a few seconds.
MinJobAge=10
# Jobs may be requeued (submitit requeues preempted and timed-out jobs).
JobRequeue=1
KillWait=30
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONFIG
)
  if [[ ! -f $CONF ]] || [[ $(cat "$CONF") != "$text" ]]; then
    printf '%s\n' "$text" > "$CONF"
    CONFIG_CHANGED=1
  fi
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey -c -k /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if ! pid_alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
  fi
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && return; sleep 0.1; done
  die "munged does not answer (see /var/log/munge/munged.log)"
}

start_slurm() {
  if [[ ${CONFIG_CHANGED:-0} == 1 ]]; then
    stop_slurm
  fi
  pid_alive "$RUN/slurmctld.pid" || slurmctld
  pid_alive "$RUN/slurmd.pid" || slurmd
}

wait_idle() {
  local host state
  host=$(hostname -s)
  for _ in $(seq 120); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    case $state in
      idle|mix|alloc) echo "slurm: node $host is $state (partition debug)"; return ;;
      drain*|down*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "node $host did not become idle (state '${state:-none}'); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
}

stop_pid() {  # pid file
  local pid
  pid_alive "$1" || return 0
  pid=$(cat "$1")
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

stop_slurm() {
  stop_pid "$RUN/slurmd.pid"
  stop_pid "$RUN/slurmctld.pid"
}

case ${1:-} in
  up)
    install_packages
    write_config
    start_munge
    start_slurm
    wait_idle
    ;;
  down)
    stop_slurm
    stop_pid /run/munge/munged.pid
    echo "slurm: stopped"
    ;;
  status)
    if pid_alive "$RUN/slurmctld.pid" && pid_alive "$RUN/slurmd.pid"; then
      sinfo
    else
      echo "slurm: not running (scripts/slurm_local.sh up starts it)"
      exit 1
    fi
    ;;
  *)
    die "usage: scripts/slurm_local.sh up|down|status"
    ;;
esac
