# A single-node Slurm cluster for the tests of the `slurm` driver (test/slurm/): Debian's
# slurm-wlm (slurmctld + slurmd) and munge, started here without systemd, every file of
# it (slurm.conf, the munge key and socket, state, spool, logs, job records) under one
# temporary directory; never the system's /etc/slurm or munge. No slurmdbd: finished jobs
# are recorded by jobcomp/filetxt (one line each, with JobState and ExitCode) and kept by
# slurmctld for MinJobAge seconds. Sourced by scripts/test-env.sh.
#
# Exports BERTH_SLURM_CONF (= SLURM_CONF), BERTH_SLURM_DIR, BERTH_SLURM_WORKDIR (a
# directory for the driver's job files), BERTH_SLURM_JOBCOMP, BERTH_SLURM_CLUSTER,
# BERTH_SLURM_NODE and BERTH_SLURM_PARTITION; stops everything it started through
# berth_on_cleanup (berth_slurm_stop).

berth_slurm_answers() { # slurm.conf -> the node is idle or has jobs
  SLURM_CONF="$1" sinfo -h -o %T 2>/dev/null | grep -Eqx 'idle|mixed|allocated|completing'
}

# A port base (ctld +17, slurmd +18, srun +20..+99) with nothing listening on it: a cluster
# of another shell on this machine keeps its own.
berth_slurm_port_base() {
  local b p busy
  for b in $(seq "${BERTH_SLURM_PORT_BASE:-44800}" 100 46800); do
    busy=0
    for p in $((b + 17)) $((b + 18)); do
      ss -Hltn "sport = :$p" 2>/dev/null | grep -q . && busy=1
    done
    [ $busy = 0 ] && { echo "$b"; return 0; }
  done
  return 1
}

berth_ensure_slurm() {
  if [ -n "${BERTH_SLURM_CONF:-}" ] && berth_slurm_answers "$BERTH_SLURM_CONF"; then
    export SLURM_CONF="$BERTH_SLURM_CONF"
    berth_log "slurm: BERTH_SLURM_CONF is set and its node answers ($BERTH_SLURM_CONF)"
    return 0
  fi
  local started=$SECONDS
  if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1 || ! command -v sbatch >/dev/null 2>&1; then
    # The packages' postinst would start the system's daemons unless policy-rc.d says no.
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi
    berth_install_debian slurm-wlm munge || { [ $made_policy = 0 ] || rm -f /usr/sbin/policy-rc.d; berth_log "could not install slurm-wlm/munge"; return 1; }
    [ $made_policy = 0 ] || rm -f /usr/sbin/policy-rc.d
  fi
  [ "$(id -u)" = 0 ] || { berth_log "slurm: slurmd must run as root to start jobs; run the tests as root"; return 1; }

  local d b host node mem
  d=$(mktemp -d /tmp/berth-slurm.XXXXXX) || return 1
  chmod 711 "$d"
  b=$(berth_slurm_port_base) || { berth_log "slurm: no free port base for slurmctld/slurmd"; return 1; }
  host=$(hostname -s)
  # A node name of this cluster's own (slurmd -N): slurm's cgroup root is slurm_<node>, so
  # two clusters on one machine never share one.
  node="berth$(basename "$d" | tr -dc 'a-zA-Z0-9' | tail -c 7 | tr 'A-Z' 'a-z')"
  mkdir -p "$d"/{munge,state,spool,etc,work}
  chmod 700 "$d/munge"
  chmod 1777 "$d/work"
  berth_on_cleanup "berth_slurm_stop '$d' '$node'"

  head -c 1024 /dev/urandom >"$d/munge/munge.key"
  chmod 400 "$d/munge/munge.key"
  # --force: munged refuses a key or socket directory it does not like otherwise; it daemonizes and writes its pid file.
  munged --force --key-file="$d/munge/munge.key" --socket="$d/munge/munge.socket.2" \
    --pid-file="$d/munge/munged.pid" --log-file="$d/munge/munged.log" --seed-file="$d/munge/munged.seed" \
    || { berth_log "slurm: munged did not start"; return 1; }

  # Which process tracking this kernel gives: the v1 cgroup controllers (a hybrid host) let
  # Slurm kill a job's every process, grandchildren that left its session included, and
  # hold it to its memory; a pure v2 host without systemd gets linuxproc (parent pids).
  local proctrack task cgroup_plugin
  if [ -d /sys/fs/cgroup/memory ] && [ -d /sys/fs/cgroup/freezer ]; then
    proctrack=proctrack/cgroup task=task/cgroup cgroup_plugin=cgroup/v1
  else
    proctrack=proctrack/linuxproc task=task/none cgroup_plugin=
  fi
  mem=$(($(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 3 / 4))
  cat >"$d/etc/slurm.conf" <<EOF
ClusterName=berth
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge/munge.socket.2
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool/%n
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/slurmctld.log
SlurmdLogFile=$d/slurmd.log
SlurmctldPort=$((b + 17))
SlurmdPort=$((b + 18))
SrunPortRange=$((b + 20))-$((b + 99))
ProctrackType=$proctrack
TaskPlugin=$task
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$d/jobcomp.log
MinJobAge=600
KillWait=2
OverTimeLimit=0
InactiveLimit=0
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
ReturnToService=2
MpiDefault=none
NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  if [ -n "$cgroup_plugin" ]; then
    # A hybrid host: Slurm must be told v1 (its autodetection sees the v2 mount and fails).
    printf 'CgroupPlugin=%s\nCgroupMountpoint=/sys/fs/cgroup\nConstrainCores=yes\nConstrainRAMSpace=yes\n' "$cgroup_plugin" >"$d/etc/cgroup.conf"
  fi

  slurmctld -f "$d/etc/slurm.conf" || { berth_log "slurm: slurmctld did not start:"; tail -5 "$d/slurmctld.log" >&2; return 1; }
  slurmd -f "$d/etc/slurm.conf" -N "$node" || { berth_log "slurm: slurmd did not start:"; tail -5 "$d/slurmd.log" >&2; return 1; }
  local i
  for ((i = 0; i < 300; i++)); do
    SLURM_CONF="$d/etc/slurm.conf" sinfo -h -n "$node" -o %T 2>/dev/null | grep -qx idle && break
    sleep 0.1
  done
  if ! SLURM_CONF="$d/etc/slurm.conf" sinfo -h -n "$node" -o %T 2>/dev/null | grep -qx idle; then
    berth_log "slurm: node $node did not become idle in 30 s:"
    tail -5 "$d/slurmctld.log" "$d/slurmd.log" >&2
    return 1
  fi
  export BERTH_SLURM_CONF="$d/etc/slurm.conf" SLURM_CONF="$d/etc/slurm.conf" BERTH_SLURM_DIR="$d" BERTH_SLURM_WORKDIR="$d/work"
  export BERTH_SLURM_JOBCOMP="$d/jobcomp.log" BERTH_SLURM_CLUSTER=berth BERTH_SLURM_NODE="$node" BERTH_SLURM_PARTITION=debug
  berth_log "slurm: $(slurmctld -V) node $node idle under $d (ports $((b + 17))/$((b + 18)), $proctrack) in $((SECONDS - started)) s"
}

berth_slurm_stop() { # state-dir node
  local d=$1 node=$2 f pid
  [ -d "$d" ] || return 0
  SLURM_CONF="$d/etc/slurm.conf" scancel --full --quiet --nodelist="$node" >/dev/null 2>&1 || true
  # slurmd first (it takes a few seconds to stop), then slurmctld and munged, each by its own pid file.
  for f in slurmd.pid slurmctld.pid munge/munged.pid; do
    pid=$(cat "$d/$f" 2>/dev/null || true)
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  # slurmstepd of this node's jobs (their argv names the node), then its cgroup trees, deepest first.
  for pid in $(pgrep -f "slurmstepd" || true); do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "\[$node\]\|$d/" && kill -9 "$pid" 2>/dev/null
  done
  local c
  for c in /sys/fs/cgroup/*/"slurm_$node"; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  rm -rf "$d"
}
