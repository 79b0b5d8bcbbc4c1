#!/usr/bin/env bash
# Single-node throw-away SLURM cluster for tests (Debian 12, slurm-wlm 22.05).
#
#   tests/slurm/cluster.sh start  STATE_DIR
#   tests/slurm/cluster.sh status STATE_DIR
#   tests/slurm/cluster.sh stop   STATE_DIR
#
# Everything lives in STATE_DIR: configuration, a private munged (own key and
# socket), slurmctld/slurmd state, logs, pid files and the fake GPU device.
# The one thing outside it: /etc/slurm/slurm.conf becomes a symlink to
# STATE_DIR/etc/slurm.conf while the cluster runs (removed again by stop).
# Clients find the cluster through SLURM_CONF, but Snakemake's job step
# (snakemake-executor-plugin-slurm-jobstep) drops all SLURM_* variables
# before it calls `srun` inside the job, so that srun only finds the
# configuration at the default path.  An existing regular
# /etc/slurm/slurm.conf is never replaced (start fails instead).
# A system munged (if any) is left alone.  `stop` signals the pids recorded
# in STATE_DIR (after checking their command name), then every process whose
# environment holds this cluster's SLURM_CONF (job steps and scripts), and
# waits until they are gone; zombies count as gone, PID 1 may reap them late.
#
# Clients should use this cluster's configuration:
#   export SLURM_CONF=STATE_DIR/etc/slurm.conf   (also written to STATE_DIR/env.sh)
#
# Needs root (the daemons run as root, munged as user "munge") and the
# packages from .ci/install_slurm.sh.  STATE_DIR and its parents must be
# traversable by the munge user (a fresh dir from `mktemp -d` in /tmp is
# fine; start makes STATE_DIR itself 0755).
#
# Environment knobs:
#   SLURM_TEST_CTLD_PORT  (default 6917)  slurmctld port
#   SLURM_TEST_SLURMD_PORT (default 6918) slurmd port
#   SLURM_TEST_PARTITION  (default debug) partition name (profiles/slurm uses "debug")
#   SLURM_TEST_GPUS       (default 1)     number of fake GPUs (0 disables GRES)
#   SLURM_TEST_START_TIMEOUT (default 60) seconds to wait for the node to be idle
set -euo pipefail

usage() { echo "usage: $0 start|stop|status STATE_DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
ACTION=$1
mkdir -p "$2"
STATE=$(cd "$2" && pwd -P)

CTLD_PORT=${SLURM_TEST_CTLD_PORT:-6917}
SLURMD_PORT=${SLURM_TEST_SLURMD_PORT:-6918}
PARTITION=${SLURM_TEST_PARTITION:-debug}
NGPUS=${SLURM_TEST_GPUS:-1}
START_TIMEOUT=${SLURM_TEST_START_TIMEOUT:-60}
NODE=localhost

ETC=$STATE/etc
MUNGE_DIR=$STATE/munge
PIDS=$STATE/pids
LOGS=$STATE/log
export SLURM_CONF=$ETC/slurm.conf

log() { echo "cluster.sh: $*" >&2; }

# --- process helpers ------------------------------------------------------

# alive PID: true if PID exists and is not a zombie (kill -0 succeeds on zombies).
alive() {
    local pid=$1 st
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    # field 3 of /proc/PID/stat, after the ")" that closes the command name
    st=$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# pid_of NAME: pid from STATE's pid file if that process is alive and really NAME.
pid_of() {
    local name=$1 f pid comm
    f=$PIDS/$name.pid
    [ "$name" = munged ] && f=$MUNGE_DIR/munged.pid
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' <"$f")
    alive "$pid" || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    [ "$comm" = "$name" ] || return 1
    echo "$pid"
}

tail_logs() {
    local f
    for f in "$LOGS/slurmctld.log" "$LOGS/slurmd.log" "$MUNGE_DIR/munged.log"; do
        [ -f "$f" ] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 25 "$f" >&2 || true
    done
}

die() { log "ERROR: $*"; tail_logs; exit 1; }

# --- configuration --------------------------------------------------------

write_config() {
    mkdir -p "$ETC" "$PIDS" "$LOGS" "$STATE/ctld" "$STATE/spool" "$STATE/dev"

    # Topology as slurmd itself sees it; RealMemory must not exceed what
    # slurmd detects or the node is drained ("Low RealMemory").
    local hw cpus boards sockets cores threads mem
    hw=$(slurmd -C | head -n1)
    field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
    cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
    cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
    { [ -n "$cpus" ] && [ -n "$mem" ]; } || die "cannot parse 'slurmd -C': $hw"

    local gres_node="" gres_types=""
    if [ "$NGPUS" -gt 0 ]; then
        gres_types="GresTypes=gpu"
        gres_node="Gres=gpu:$NGPUS"
        # Fake GPU device files: character devices with /dev/null's numbers
        # (1,3); nothing ever opens them and with task/none nothing
        # constrains access.  A GPU job gets CUDA_VISIBLE_DEVICES=0.
        # (Only SLURM_TEST_GPUS=1 is tested.)
        : >"$ETC/gres.conf.tmp"
        echo "AutoDetect=off" >>"$ETC/gres.conf.tmp"
        local i
        for ((i = 0; i < NGPUS; i++)); do
            # (a regular file is not enough: the job then gets an empty
            # CUDA_VISIBLE_DEVICES)
            [ -c "$STATE/dev/gpu$i" ] || mknod -m 666 "$STATE/dev/gpu$i" c 1 3 \
                || die "mknod $STATE/dev/gpu$i failed (needs CAP_MKNOD); set SLURM_TEST_GPUS=0 to run without GPUs"
            echo "NodeName=$NODE Name=gpu Count=1 File=$STATE/dev/gpu$i" >>"$ETC/gres.conf.tmp"
        done
        mv "$ETC/gres.conf.tmp" "$ETC/gres.conf"
    else
        : >"$ETC/gres.conf"
    fi

    cat >"$ETC/slurm.conf" <<EOF
# Generated by tests/slurm/cluster.sh -- single-node test cluster.
ClusterName=dapttest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_DIR/munge.socket.2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
MailProg=/bin/true
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers, CI): track processes via /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
# No slurmdbd: no accounting, no job completion log.  (sacct cannot see jobs;
# the Snakemake profile therefore polls with squeue.)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Keep finished jobs visible to squeue for 10 min (the plugin only uses squeue
# when MinJobAge >= 3 x init-seconds-before-status-checks).
MinJobAge=600
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default every job gets all node memory -> jobs run one at a time.
DefMemPerCPU=1024
# Schedule immediately instead of batching submissions.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
$gres_types
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$mem $gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    echo "export SLURM_CONF=$ETC/slurm.conf" >"$STATE/env.sh"
}

# --- /etc/slurm/slurm.conf -> STATE_DIR/etc/slurm.conf -----------------------

SYS_CONF=/etc/slurm/slurm.conf

link_system_conf() {
    if [ -L "$SYS_CONF" ]; then
        local target
        target=$(readlink "$SYS_CONF")
        if [ "$target" != "$ETC/slurm.conf" ]; then
            # only ever replace links made by this script (stale or not)
            case "$target" in
            */etc/slurm.conf) [ ! -e "$target" ] || grep -q '^# Generated by tests/slurm/cluster.sh' "$target" \
                || die "$SYS_CONF links to $target, not made by cluster.sh; not touching it" ;;
            *) die "$SYS_CONF links to $target, not made by cluster.sh; not touching it" ;;
            esac
            if [ -e "$target" ]; then log "replacing link $SYS_CONF -> $target (another test cluster?)"; fi
        fi
    elif [ -e "$SYS_CONF" ]; then
        die "$SYS_CONF exists (a real SLURM configuration?); refusing to replace it"
    fi
    mkdir -p "$(dirname "$SYS_CONF")"
    ln -sfn "$ETC/slurm.conf" "$SYS_CONF"
}

unlink_system_conf() {
    if [ -L "$SYS_CONF" ] && [ "$(readlink "$SYS_CONF")" = "$ETC/slurm.conf" ]; then
        rm -f "$SYS_CONF"
    fi
}

# --- munge ----------------------------------------------------------------

start_munged() {
    if pid_of munged >/dev/null; then return 0; fi
    getent passwd munge >/dev/null || die "user 'munge' missing (run .ci/install_slurm.sh)"
    chmod 0755 "$STATE"
    mkdir -p "$MUNGE_DIR"
    chown munge:munge "$MUNGE_DIR"
    chmod 0755 "$MUNGE_DIR"  # socket dir: clients of any user need x
    if ! setpriv --reuid=munge --regid=munge --clear-groups test -x "$MUNGE_DIR"; then
        die "user 'munge' cannot reach $MUNGE_DIR (a parent directory is not world-traversable); use a STATE_DIR under /tmp"
    fi
    if [ ! -s "$MUNGE_DIR/munge.key" ]; then
        # private key for this cluster only
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1 count=1024 status=none
    fi
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 0400 "$MUNGE_DIR/munge.key"
    rm -f "$MUNGE_DIR/munge.socket.2" "$MUNGE_DIR/munged.pid"
    # munged daemonizes itself and returns once its socket is ready.
    setpriv --reuid=munge --regid=munge --clear-groups \
        munged --socket="$MUNGE_DIR/munge.socket.2" \
        --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$MUNGE_DIR/munged.pid" \
        --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" \
        || die "munged failed to start"
    local i
    for ((i = 0; i < 50; i++)); do
        pid_of munged >/dev/null && [ -S "$MUNGE_DIR/munge.socket.2" ] && break
        sleep 0.1
    done
    pid_of munged >/dev/null || die "munged did not come up"
    munge -n --socket="$MUNGE_DIR/munge.socket.2" | unmunge --socket="$MUNGE_DIR/munge.socket.2" >/dev/null \
        || die "munge credential round trip failed"
}

# --- actions ---------------------------------------------------------------

node_state() { sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n1; }

do_start() {
    command -v slurmctld >/dev/null || { log "slurmctld not installed (run .ci/install_slurm.sh)"; exit 3; }
    [ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 3; }
    if pid_of slurmctld >/dev/null && pid_of slurmd >/dev/null && pid_of munged >/dev/null; then
        log "already running ($STATE)"
        return 0
    fi
    write_config
    link_system_conf
    start_munged
    if ! pid_of slurmctld >/dev/null; then
        # -c: clear previous state (jobs, node state) from an earlier run
        slurmctld -c -f "$SLURM_CONF" || die "slurmctld failed to start"
    fi
    if ! pid_of slurmd >/dev/null; then
        slurmd -N "$NODE" -f "$SLURM_CONF" || die "slurmd failed to start"
    fi
    local t0=$SECONDS st=""
    while :; do
        st=$(node_state || true)
        case "$st" in
        idle) break ;;
        drain* | drng | down* | fail*)
            # e.g. left over from a stale state: try to bring it back once
            scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        for d in slurmctld slurmd; do
            pid_of $d >/dev/null || die "$d exited during start-up"
        done
        if ((SECONDS - t0 >= START_TIMEOUT)); then
            sinfo -N -l >&2 || true
            scontrol show node "$NODE" >&2 || true
            die "node '$NODE' not idle after ${START_TIMEOUT}s (state: '${st:-none}')"
        fi
        sleep 0.5
    done
    log "up in $((SECONDS - t0))s: partition '$PARTITION', node '$NODE' idle; export SLURM_CONF=$SLURM_CONF"
}

do_status() {
    local rc=0 d pid
    for d in munged slurmctld slurmd; do
        if pid=$(pid_of $d); then echo "$d: running (pid $pid)"; else echo "$d: stopped"; rc=1; fi
    done
    if [ $rc -eq 0 ]; then
        sinfo -N -o '%N %P %t %c %m %G' || rc=1
        squeue || true
    fi
    return $rc
}

# wait_gone PID SECONDS: wait until PID is gone (or a zombie)
wait_gone() {
    local pid=$1 n=$(($2 * 10))
    while alive "$pid" && ((n-- > 0)); do sleep 0.1; done
    ! alive "$pid"
}

stop_one() {
    local name=$1 pid
    pid=$(pid_of "$name") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 20; then
        log "$name (pid $pid) ignores SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || log "WARNING: $name (pid $pid) still alive"
    fi
}

# sweep: end every process still carrying this cluster's SLURM_CONF in its environment (job steps
# and job scripts slurmd left, a Snakemake run whose pytest died), except this script, its
# ancestors and its children (they may carry it too).
ppid_of() { sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f2; }

sweep() {
    local keep=" " pid=$$ p victims=()
    while [ -n "$pid" ] && [ "$pid" -gt 1 ]; do keep+="$pid "; pid=$(ppid_of "$pid"); done
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        case "$keep" in *" $pid "* | *" $(ppid_of "$pid") "*) continue ;; esac
        alive "$pid" || continue
        tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$SLURM_CONF" || continue
        victims+=("$pid")
    done
    [ "${#victims[@]}" -gt 0 ] || return 0
    log "ending ${#victims[@]} leftover process(es) of this cluster: ${victims[*]}"
    kill -TERM "${victims[@]}" 2>/dev/null || true
    for pid in "${victims[@]}"; do
        wait_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null || true
    done
}

do_stop() {
    # Cancel what is still queued/running on *this* cluster so that slurmd's
    # slurmstepd children end too (they are not in our pid files).
    if pid_of slurmctld >/dev/null; then
        local jobs
        jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED -o %i 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$jobs" ] || scancel --quiet $jobs 2>/dev/null || true
        local i
        for ((i = 0; i < 50; i++)); do
            [ -z "$(squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    stop_one slurmd
    stop_one slurmctld
    stop_one munged
    sweep
    rm -f "$PIDS"/*.pid
    unlink_system_conf
    log "stopped ($STATE)"
}

case "$ACTION" in
start) do_start ;;
stop) do_stop ;;
status) do_status ;;
*) usage ;;
esac
