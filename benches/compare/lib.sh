# Shared by the side-by-side scripts (l4.sh, http.sh): process bookkeeping,
# CPU accounting from /proc, waiting for a quiet machine, and one measured
# run. The caller sets OUT, TAG, PROXY_CPU, LOAD_CPU, QUIET_WAIT, FOREIGN_MAX,
# TRIES and defines proxy_pid NAME (the process whose CPU time counts).

log() { printf '[%s] %s\n' "$TAG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { [[ -n "$(ss -Hltn "sport = :$1")" ]]; }

wait_port() { # PORT PID NAME
    local i
    for ((i = 0; i < 100; i++)); do
        port_in_use "$1" && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited at start; see $OUT/$3.log"
        sleep 0.1
    done
    die "$3 does not listen on 127.0.0.1:$1; see $OUT/$3.log"
}

stop_pid() { # PID
    local pid="$1" p keep=()
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [[ "$p" == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# CPU time (utime+stime, clock ticks) of a whole process, all its threads.
cpu_ticks() { # PID
    local stat
    stat="$(<"/proc/$1/stat")"
    stat="${stat##*) }" # drop "pid (comm) "; field 3 (state) is now $1
    awk '{ print $12 + $13 }' <<<"$stat"
}

now() { date +%s.%N; }

# Waits (up to QUIET_WAIT s) until neither CPU is busier than 10 % over 1 s:
# our own processes are idle between runs, so anything else is foreign load.
wait_quiet() {
    local start b0 a0 b1 a1 c0 d0 c1 d1 p0 p1 said=0
    start="$SECONDS"
    while :; do
        read -r b0 a0 < <(cpu_busy "$PROXY_CPU")
        read -r c0 d0 < <(cpu_busy "$LOAD_CPU")
        sleep 1
        read -r b1 a1 < <(cpu_busy "$PROXY_CPU")
        read -r c1 d1 < <(cpu_busy "$LOAD_CPU")
        p0=$(((b1 - b0) * 100 / (a1 - a0 > 0 ? a1 - a0 : 1)))
        p1=$(((c1 - c0) * 100 / (d1 - d0 > 0 ? d1 - d0 : 1)))
        ((p0 < 10 && p1 < 10)) && return 0
        if ((SECONDS - start >= QUIET_WAIT)); then
            log "  warning: machine still busy (CPU$PROXY_CPU $p0%, CPU$LOAD_CPU $p1%); measuring anyway"
            return 0
        fi
        if ((said == 0)); then
            log "  machine busy (CPU$PROXY_CPU $p0%, CPU$LOAD_CPU $p1%): waiting up to ${QUIET_WAIT}s"
            said=1
        fi
    done
}

# Busy and total jiffies of one CPU, from /proc/stat ("busy total").
cpu_busy() { # CPU
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# One measured run: the command's wall time and the proxy's CPU ticks around it.
# Returns the command's status (callers use `measure ... || die`, which
# switches off errexit in here, hence the explicit rc).
# M_LOAD is how busy CPU $LOAD_CPU (load generator + backend) was, in %;
# M_FOREIGN how much of CPU $PROXY_CPU went to anything but the proxy, in %.
measure() { # NAME CMD...   sets M_TICKS, M_WALL, M_LOAD and M_FOREIGN
    local name="$1" pid="" t0 t1 c0=0 c1=0 rc=0 b0 b1 a0 a1 p0 p1 q0 q1
    shift
    [[ "$name" == direct ]] || pid="$(proxy_pid "$name")"
    [[ -z "$pid" ]] || c0="$(cpu_ticks "$pid")"
    read -r b0 a0 < <(cpu_busy "$LOAD_CPU")
    read -r p0 q0 < <(cpu_busy "$PROXY_CPU")
    t0="$(now)"
    "$@" || rc=$?
    t1="$(now)"
    read -r p1 q1 < <(cpu_busy "$PROXY_CPU")
    read -r b1 a1 < <(cpu_busy "$LOAD_CPU")
    [[ -z "$pid" ]] || c1="$(cpu_ticks "$pid")"
    M_TICKS=$((c1 - c0))
    M_LOAD=$(((b1 - b0) * 100 / (a1 - a0 > 0 ? a1 - a0 : 1)))
    M_FOREIGN=$(((p1 - p0 - M_TICKS) * 100 / (q1 - q0 > 0 ? q1 - q0 : 1)))
    ((M_FOREIGN >= 0)) || M_FOREIGN=0
    M_WALL="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
    return "$rc"
}

# After a run: 0 to keep it, 1 to redo it (foreign load on the proxy's CPU).
# Sets M_QUIET: 1 if the run was undisturbed, 0 if kept in spite of it.
accept_run() { # NAME TRY
    M_QUIET=1
    ((M_FOREIGN <= FOREIGN_MAX)) && return 0
    if (($2 >= TRIES)); then
        log "  warning: $1: ${M_FOREIGN}% of CPU$PROXY_CPU was foreign load; keeping it after $2 tries"
        M_QUIET=0
        return 0
    fi
    log "  $1: ${M_FOREIGN}% of CPU$PROXY_CPU was foreign load during the run; redoing it"
    return 1
}

