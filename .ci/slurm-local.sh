#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the Slurm backend's tests and for trying
# `dnlrepro launch --backend slurm` without a cluster:
#
#   sudo .ci/slurm-local.sh start    # install slurm-wlm + munge if missing, configure, start
#   srun hostname                    # answers within seconds
#   sudo .ci/slurm-local.sh stop     # stop slurmd, slurmctld and munged
#
# The node is this machine with all of its CPUs (one partition `debug`, the default). Memory is
# not a consumable resource, so a job asking for one CPU always fits; GPUs are not configured.
# Process tracking by process group and no task plugin: no cgroups and no systemd needed, so it
# runs in containers. No slurmdbd: `sacct` cannot answer; finished jobs stay visible to
# `scontrol show job` for MinJobAge (1 h) and are appended to the job-completion file
# (`sacct --completion` reads it).
#
# State, logs and pid files live in $DNLREPRO_SLURM_DIR (default /var/tmp/dnlrepro-slurm). The
# configuration goes to /etc/slurm/slurm.conf, where every Slurm command looks; a slurm.conf this
# script did not write is never replaced.
set -euo pipefail

dir="${DNLREPRO_SLURM_DIR:-/var/tmp/dnlrepro-slurm}"
conf=/etc/slurm/slurm.conf
marker="# written by dnlrepro .ci/slurm-local.sh"

die() { echo "slurm-local: $*" >&2; exit 1; }

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null \
    && return 0
  [ "$(id -u)" = 0 ] || die "slurm-wlm/munge are missing; run as root to install them (apt-get)"
  echo "slurm-local: installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
  if [ -f "$conf" ] && ! grep -qF "$marker" "$conf"; then
    die "$conf exists and was not written by this script; not replacing it (move it away first)"
  fi
  local host cpus mem
  host="$(hostname -s)"
  cpus="$(nproc)"
  mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
  mkdir -p "$dir/state" "$dir/spool" /etc/slurm
  cat >"$conf" <<EOF
$marker ($(date -u +%FT%TZ)); state in $dir
ClusterName=dnlrepro-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=30
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  [ -f /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged
  touch "$dir/munged.ours"  # stop ends only a munged that this script started
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "munged did not answer (see /var/log/munge/munged.log)"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  install_packages
  [ "$(id -u)" = 0 ] || die "start needs root (it writes $conf and starts the daemons)"
  write_conf
  start_munge
  alive "$dir/slurmctld.pid" || slurmctld
  alive "$dir/slurmd.pid" || slurmd
  # A node that was up before a restart comes back DOWN; ReturnToService=2 revives it once
  # slurmd registers, `scontrol update` covers older state files.
  for _ in $(seq 100); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      timeout 60 srun -N1 -n1 hostname >/dev/null && { echo "slurm-local: up ($conf)"; return 0; }
    fi
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 0.3
  done
  die "the node did not become idle; logs: $dir/slurmctld.log, $dir/slurmd.log"
}

stop() {
  local name pidfile
  for name in slurmd slurmctld; do
    pidfile="$dir/$name.pid"
    if alive "$pidfile"; then
      kill "$(cat "$pidfile")"
      for _ in $(seq 50); do alive "$pidfile" || break; sleep 0.2; done
    fi
  done
  if [ -f "$dir/munged.ours" ] && alive /run/munge/munged.pid; then
    kill "$(cat /run/munge/munged.pid)"
  fi
  rm -f "$dir/munged.ours"
  echo "slurm-local: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
