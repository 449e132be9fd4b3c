#!/usr/bin/env bash
# Load benchmark for "Never lose mail": how fast graph-relay accepts mail that it has fsynced to its
# spool, measured against Postfix (one fsync per message before its 250) on the same machine, in the
# same sitting, back to back. Absolute rates drift with machine load; quote the ratios.
#
#   benches/load.sh                     # as root, Debian; installs postfix if smtp-source is missing
#
# Per round (REPEATS rounds, alternating):
#   (a) graph-relay `serve --dry-run`: accept → fsync → convert → outbox/<id>.json, a fresh spool;
#   (b) a private Postfix instance (own config/queue/data directories, own port) relaying into a
#       smtp-sink on loopback — Postfix accepting while it delivers;
#   (c) smtp-sink itself: the null-server ceiling of the load generator on this machine.
# The load is `smtp-source -s SESSIONS -m N -l SIZE ...` (a new connection per message); the rate
# is N / wall-clock time around smtp-source. Reported: median of the rounds, the relay/Postfix
# ratio, CPU per message, peak RSS (relay VmHWM; Postfix: sum of VmRSS over its processes,
# sampled every 100 ms), and the time until everything accepted was also delivered.
# Correctness: after every relay run the outbox must hold exactly N requests and the spool must
# be empty; Postfix must have delivered N to the sink. Any miss prints FAIL and exits 1.
#
# Read the per-round lines, not only the median: on an ext4 without a journal (this dev box) file
# creation gets several times dearer for a few minutes after many files were deleted nearby, and
# the relay creates 3 files per message to Postfix's 1, so its rate is bimodal (README, Benchmarks).
# Its sys CPU per message tells the modes apart. Leave a few idle minutes between invocations: the
# final cleanup deletes every outbox file written.
#
# Environment: N (5000), REPEATS (3), SESSIONS (20), SIZE (5120 bytes), WARMUP (3000 messages per
# server, not counted), NULL_SINK (1: run (c)), SERIAL (1000: then one session sending that many
# messages in a row to each, for the per-message latency; 0 skips it), PROFILE (0; 1: after the
# timed rounds, one extra relay run under `strace -c -w -f` and one under `perf record`, printed,
# never timed), RELAY_BIN (skip the build, use this binary), BENCH_DIR (parent of the temp dir,
# default /var/tmp: it must be a real disk, not tmpfs, or fsync costs nothing), KEEP (1: keep it).
set -Eeuo pipefail

N=${N:-5000}
REPEATS=${REPEATS:-3}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-5120}
WARMUP=${WARMUP:-3000}
NULL_SINK=${NULL_SINK:-1}
PROFILE=${PROFILE:-0}
SERIAL=${SERIAL:-1000}
KEEP=${KEEP:-0}
BENCH_DIR=${BENCH_DIR:-/var/tmp}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLK_TCK=$(getconf CLK_TCK)
FAILED=0

say() { printf '%s\n' "$*" >&2; }
die() { say "load.sh: $*"; exit 2; }
fail() { say "FAIL: $*"; FAILED=1; }

[[ $(id -u) == 0 ]] || die "run as root (it installs and starts a private Postfix instance)"

# ---------------------------------------------------------------- tools
install_postfix() {
    say "== installing postfix (for smtp-source, smtp-sink and the baseline)"
    # Keep the package from starting the system instance; we only run a private one.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >&2; }
    ((made_policy)) && rm -f "$policy"
    if command -v systemctl >/dev/null; then
        systemctl disable --now postfix >/dev/null 2>&1 || true
    fi
    if postfix status >/dev/null 2>&1; then postfix stop >&2 || true; fi
}
if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null ||
    ! command -v postfix >/dev/null; then
    install_postfix
fi
for tool in smtp-source smtp-sink postfix postconf ss; do
    command -v "$tool" >/dev/null || die "missing $tool"
done

# ---------------------------------------------------------------- build
if [[ -z ${RELAY_BIN:-} ]]; then
    say "== cargo build --release"
    (cd "$REPO" && cargo build --release >&2) || die "build failed"
    RELAY_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/graph-relay"
fi
[[ -x $RELAY_BIN ]] || die "no relay binary at $RELAY_BIN"

# ---------------------------------------------------------------- temp dir and cleanup
WORK=$(mktemp -d "$BENCH_DIR/graph-relay-load.XXXXXX")
chmod 755 "$WORK" # Postfix's daemons (user postfix) must reach their queue below it
FSTYPE=$(stat -f -c %T "$WORK")

RELAY_PID=
SAMPLER_PID=
PF_ETC=
PF_MASTER=
SINK_PIDS=()

stop_pid() { # pid [signal]: signal it and wait up to 10 s for it to go
    local pid=$1 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "-${2:-TERM}" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

stop_postfix() {
    [[ -n $PF_ETC && -n $PF_MASTER ]] || return 0
    local kids i
    kids=$(cat "/proc/$PF_MASTER/task/$PF_MASTER/children" 2>/dev/null || true)
    postfix -c "$PF_ETC" stop >/dev/null 2>&1 || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$PF_MASTER" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$PF_MASTER" 2>/dev/null; then
        kill -KILL "$PF_MASTER" 2>/dev/null || true
        # shellcheck disable=SC2086
        [[ -n $kids ]] && kill -KILL $kids 2>/dev/null || true
    fi
    PF_MASTER=
}

cleanup() {
    local rc=$?
    set +e
    stop_pid "$SAMPLER_PID"
    stop_pid "$RELAY_PID"
    stop_postfix
    for pid in "${SINK_PIDS[@]}"; do stop_pid "$pid"; done
    if [[ $KEEP == 1 ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers
PICKED=" "
pick_port() { # var: set it to a free loopback TCP port, different from those already picked
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        [[ $PICKED == *" $p "* ]] && continue
        ss -Hltn "sport = :$p" | grep -q . && continue
        PICKED+="$p "
        printf -v "$1" '%s' "$p"
        return
    done
}

wait_listen() { # port: wait up to 20 s for a listener
    local i
    for ((i = 0; i < 200; i++)); do
        ss -Hltn "sport = :$1" | grep -q . && return 0
        sleep 0.1
    done
    return 1
}

cpu_ticks() { # pid...: "user sys" clock ticks of the processes (all threads), plus the reaped
    # children of the first (Postfix's master reaps its daemons, so their time is not lost)
    local pid first=1 usr=0 sys=0 f a
    for pid in "$@"; do
        f=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        f=${f##*) } # fields from 3 on; comm may hold spaces
        read -r -a a <<<"$f"
        usr=$((usr + a[11])) sys=$((sys + a[12]))
        if ((first)); then usr=$((usr + a[13])) sys=$((sys + a[14])); fi
        first=0
    done
    echo "$usr $sys"
}

cpu_per_msg() { # "u0 s0" "u1 s1" n → "total (user+sys)" in ms per message
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN {
        split(a, x, " "); split(b, y, " "); u = (y[1] - x[1]) / hz * 1000 / n; s = (y[2] - x[2]) / hz * 1000 / n
        printf "%.2f (%.2f+%.2f)", u + s, u, s }'
}

sys_cpu() { # "busy_ticks total_ticks iowait_ticks" for the whole machine
    local _ u n s i w q sq st rest
    read -r _ u n s i w q sq st rest </proc/stat
    echo "$((u + n + s + q + sq + st)) $((u + n + s + i + w + q + sq + st)) $w"
}

postfix_pids() { echo "$PF_MASTER" $(cat "/proc/$PF_MASTER/task/$PF_MASTER/children" 2>/dev/null); }

rss_sampler() { # outfile pid-command...: every 100 ms sum VmRSS (KiB) over the pids; keep the peak
    local out=$1 peak=0 peakn=0 sum n pid k v
    shift
    while :; do
        sum=0 n=0
        for pid in $("$@"); do
            while read -r k v _; do
                if [[ $k == VmRSS: ]]; then sum=$((sum + v)) n=$((n + 1)); break; fi
            done 2>/dev/null <"/proc/$pid/status" || true
        done
        if ((sum > peak)); then peak=$sum peakn=$n; echo "$peak $peakn" >"$out"; fi
        sleep 0.1
    done
}

pss_sum() { # pid...: summed proportional set size (KiB): shared pages split between sharers
    local pid total=0 k v
    for pid in "$@"; do
        while read -r k v _; do
            if [[ $k == Pss: ]]; then total=$((total + v)); break; fi
        done 2>/dev/null <"/proc/$pid/smaps_rollup" || true
    done
    echo "$total"
}

now() { echo "$EPOCHREALTIME"; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.0f", n / (b - a) }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
median_by_first() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $0 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

load_gen() { # port count outfile [sessions]: the load, timed by the caller
    smtp-source -s "${4:-$SESSIONS}" -m "$2" -l "$SIZE" -M localhost \
        -f a@example.com -t b@example.com "127.0.0.1:$1" >"$3" 2>&1
}

# ---------------------------------------------------------------- the relay, dry run
# Starts a fresh relay on a fresh spool; sets RELAY_PID, RELAY_PORT, RELAY_DIR.
start_relay() {
    RELAY_DIR="$WORK/relay.$1"
    mkdir -p "$RELAY_DIR/spool"
    cat >"$RELAY_DIR/relay.toml" <<EOF
[smtp]
listen = "127.0.0.1:0"
max_connections = 200

[microsoft]
# dry run never calls Graph; convert needs a mailbox to send from
sender = "relay@example.com"

[queue]
dir = "$RELAY_DIR/spool"

[status]
listen = ""
EOF
    "$RELAY_BIN" --config "$RELAY_DIR/relay.toml" serve --dry-run \
        >"$RELAY_DIR/stdout" 2>"$RELAY_DIR/stderr" &
    RELAY_PID=$!
    local i line=
    for ((i = 0; i < 300; i++)); do
        line=$(grep -m1 '^graph-relay ready ' "$RELAY_DIR/stdout" || true)
        [[ -n $line ]] && break
        kill -0 "$RELAY_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $line ]]; then
        tail -20 "$RELAY_DIR/stderr" >&2
        die "relay did not start"
    fi
    RELAY_PORT=$(sed -n 's/.* smtp=[^ ]*:\([0-9][0-9]*\).*/\1/p' <<<"$line")
}

outbox_count() { find "$RELAY_DIR/spool/outbox" -name '*.json' 2>/dev/null | wc -l; }

# run_relay label count [sessions]: one timed run; sets R_RATE R_E2E R_CPU R_HWM R_PSS R_BUSY
run_relay() {
    local label=$1 n=$2 t0 t1 t2 c0 c1 cm s0 s1 g0 g1 got i left
    start_relay "$label"
    c0=$(cpu_ticks "$RELAY_PID")
    g0=$(gen_ticks)
    s0=$(sys_cpu)
    t0=$(now)
    load_gen "$RELAY_PORT" "$n" "$RELAY_DIR/smtp-source.out" "${3:-}" ||
        fail "relay $label: smtp-source exited non-zero: $(tail -3 "$RELAY_DIR/smtp-source.out")"
    t1=$(now)
    s1=$(sys_cpu)
    g1=$(gen_ticks)
    cm=$(cpu_ticks "$RELAY_PID")
    for ((i = 0; i < 1200; i++)); do # delivery lags acceptance a little; wait up to 60 s
        got=$(outbox_count)
        ((got >= n)) && break
        sleep 0.05
    done
    t2=$(now)
    c1=$(cpu_ticks "$RELAY_PID")
    R_HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$RELAY_PID/status")
    R_PSS=$(pss_sum "$RELAY_PID")
    stop_pid "$RELAY_PID"
    RELAY_PID=
    got=$(outbox_count)
    # A dry run keeps its own spool in spool/dry-run/.
    left=$(find "$RELAY_DIR/spool/dry-run/queue" "$RELAY_DIR/spool/dry-run/failed" \
        "$RELAY_DIR/spool/dry-run/corrupt" -type f 2>/dev/null | wc -l)
    if ((got != n)); then
        fail "relay $label: $got outbox requests for $n messages sent (every 250 must become a Graph request)"
    fi
    ((left == 0)) || fail "relay $label: $left files left in queue/, failed/ or corrupt/"
    R_RATE=$(rate "$n" "$t0" "$t1")
    R_E2E=$(rate "$n" "$t0" "$t2")
    R_CPU=$(cpu_per_msg "$c0" "$c1" "$n")
    R_BUSY=$(busy "$s0" "$s1" "$c0 $g0" "$cm $g1")
    # The outbox stays until the final cleanup: deleting thousands of files here would make the
    # next runs pay for it (see "recently deleted inodes" in the README's Benchmarks section).
}

busy() { # s0 s1 [ours0 ours1]: "cpu% iowait%", and with our processes' ticks (cpu_ticks output,
    # or a tick count) also the share of the machine used by everything else (other engineers'
    # builds, kernel threads): high values there mean the round was disturbed.
    awk -v a="$1" -v b="$2" -v o0="${3:-}" -v o1="${4:-}" 'BEGIN {
        split(a, x, " "); split(b, y, " "); t = y[2] - x[2]
        if (t <= 0) { print "n/a"; exit }
        printf "%.0f%%cpu %.0f%%iowait", 100 * (y[1] - x[1]) / t, 100 * (y[3] - x[3]) / t
        if (o1 != "") {
            n0 = split(o0, p, " "); n1 = split(o1, q, " "); ours = 0
            for (i = 1; i <= n1; i++) ours += q[i] - p[i]
            printf ", others %.0f%%", 100 * ((y[1] - x[1]) - ours) / t
        } }'
}

gen_ticks() { # clock ticks used so far by the shell's reaped children (smtp-source among them)
    times >"$WORK/times"
    local _l a b
    { read -r _l; read -r a b; } <"$WORK/times"
    awk -v a="$a" -v b="$b" -v hz="$CLK_TCK" 'function s(v, m) { m = v; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", v); sub(/s$/, "", v); return m * 60 + v }
        BEGIN { printf "%d", (s(a) + s(b)) * hz + 0.5 }'
}

# ---------------------------------------------------------------- Postfix, private instance
start_postfix() {
    pick_port PF_PORT
    pick_port PF_SINK_PORT
    local d="$WORK/postfix"
    PF_ETC="$d/etc"
    PF_QUEUE="$d/queue"
    mkdir -p "$PF_ETC" "$PF_QUEUE" "$d/data"
    chown postfix "$d/data"
    smtp-sink -u nobody "127.0.0.1:$PF_SINK_PORT" 1024 >"$d/smtp-sink.log" 2>&1 &
    PF_SINK_PID=$!
    SINK_PIDS+=("$PF_SINK_PID")
    # Everything instance-specific lives under $d; daemon/command/meta directories are the package's.
    cat >"$PF_ETC/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF_QUEUE
data_directory = $d/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench-postfix.localdomain
syslog_name = postfix-bench
maillog_file = $d/maillog
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$PF_SINK_PORT
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
EOF
    # No port-25 listener, no chroot (nothing is copied into a jail), postlogd for maillog_file.
    cat >"$PF_ETC/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
local      unix  - n n -     - local
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
EOF
    postfix -c "$PF_ETC" check >&2 || die "postfix check failed"
    postfix -c "$PF_ETC" start >&2 || { tail -20 "$d/maillog" >&2; die "postfix start failed"; }
    PF_MASTER=$(tr -dc 0-9 <"$d/data/master.lock")
    wait_listen "$PF_PORT" || die "postfix is not listening on $PF_PORT"
    wait_listen "$PF_SINK_PORT" || die "smtp-sink is not listening on $PF_SINK_PORT"
    PF_LOG="$d/maillog"
}

pf_queued() { find "$PF_QUEUE"/{maildrop,incoming,active,deferred,hold} -type f 2>/dev/null | wc -l; }
pf_sent() { grep -c ' status=sent ' "$PF_LOG" 2>/dev/null || true; }

# run_postfix label count [sessions]: sets P_RATE P_E2E P_CPU P_RSS P_PROCS P_PSS P_BUSY
run_postfix() {
    local label=$1 n=$2 t0 t1 t2 c0 c1 cm k0 k1 s0 s1 g0 g1 sent0 sent1 i q out="$WORK/postfix/source.$1.out"
    local rssf="$WORK/postfix/rss.$label"
    sent0=$(pf_sent)
    rss_sampler "$rssf" postfix_pids &
    SAMPLER_PID=$!
    # shellcheck disable=SC2046
    c0=$(cpu_ticks $(postfix_pids))
    k0=$(cpu_ticks "$PF_SINK_PID")" $(cpu_ticks "$SAMPLER_PID")"
    g0=$(gen_ticks)
    s0=$(sys_cpu)
    t0=$(now)
    load_gen "$PF_PORT" "$n" "$out" "${3:-}" ||
        fail "postfix $label: smtp-source exited non-zero: $(tail -3 "$out")"
    t1=$(now)
    s1=$(sys_cpu)
    g1=$(gen_ticks)
    # shellcheck disable=SC2046
    cm=$(cpu_ticks $(postfix_pids))
    k1=$(cpu_ticks "$PF_SINK_PID")" $(cpu_ticks "$SAMPLER_PID")"
    for ((i = 0; i < 1200; i++)); do
        q=$(pf_queued)
        ((q == 0)) && break
        sleep 0.05
    done
    t2=$(now)
    # shellcheck disable=SC2046
    c1=$(cpu_ticks $(postfix_pids))
    # shellcheck disable=SC2046
    P_PSS=$(pss_sum $(postfix_pids))
    stop_pid "$SAMPLER_PID"
    SAMPLER_PID=
    sleep 0.2 # let postlogd write the last lines
    sent1=$(pf_sent)
    ((sent1 - sent0 == n)) || fail "postfix $label: delivered $((sent1 - sent0)) of $n to smtp-sink"
    read -r P_RSS P_PROCS <"$rssf"
    P_RATE=$(rate "$n" "$t0" "$t1")
    P_E2E=$(rate "$n" "$t0" "$t2")
    P_CPU=$(cpu_per_msg "$c0" "$c1" "$n")
    P_BUSY=$(busy "$s0" "$s1" "$c0 $k0 $g0" "$cm $k1 $g1")
}

# ---------------------------------------------------------------- smtp-sink, the null ceiling
start_null() {
    pick_port NULL_PORT
    smtp-sink -u nobody "127.0.0.1:$NULL_PORT" 1024 >"$WORK/null-sink.log" 2>&1 &
    SINK_PIDS+=("$!")
    wait_listen "$NULL_PORT" || die "smtp-sink is not listening on $NULL_PORT"
}
run_null() { # label count: sets S_RATE
    local t0 t1
    t0=$(now)
    load_gen "$NULL_PORT" "$2" "$WORK/null.$1.out" || fail "smtp-sink $1: smtp-source exited non-zero"
    t1=$(now)
    S_RATE=$(rate "$2" "$t0" "$t1")
}

# ---------------------------------------------------------------- profile (optional, untimed)
wait_outbox() { # n: wait (up to 5 min) until the relay has written n outbox requests
    local i
    for ((i = 0; i < 3000; i++)); do
        (($(outbox_count) >= $1)) && return 0
        sleep 0.1
    done
    return 1
}

profile_relay() {
    say
    say "== profile: one relay run of $N messages under strace -c -w -f (latency under strace; not a rate)"
    start_relay strace
    local sf="$WORK/strace.txt" spid
    strace -c -w -f -o "$sf" -p "$RELAY_PID" 2>/dev/null &
    spid=$!
    sleep 1
    load_gen "$RELAY_PORT" "$N" "$WORK/strace.source.out" || true
    wait_outbox "$N" || say "   (not every message was delivered in time under strace)"
    sleep 0.5
    kill -INT "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true
    stop_pid "$RELAY_PID"; RELAY_PID=
    awk -v n="$N" 'NR <= 2 || /^-/ { print; next }
        $1 ~ /^[0-9.]+$/ && NF >= 5 { printf "%s   (%.2f per message)\n", $0, $4 / n; next } { print }' "$sf" |
        sed -n 1,40p >&2 || true
    command -v perf >/dev/null || return 0
    say
    say "== profile: perf record -g on the relay during one run of $N messages (share of its CPU samples)"
    start_relay perf
    perf record -q -F 1999 -g -o "$WORK/perf.data" -p "$RELAY_PID" >/dev/null 2>&1 &
    spid=$!
    sleep 1
    load_gen "$RELAY_PORT" "$N" "$WORK/perf.source.out" || true
    wait_outbox "$N" || true
    kill -INT "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true
    stop_pid "$RELAY_PID"; RELAY_PID=
    say "-- by object:"
    { perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep -v -e '^#' -e '^$' | sed -n 1,6p >&2; } || true
    say "-- by thread:"
    { perf report -i "$WORK/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
        grep -v -e '^#' -e '^$' | sed -n 1,6p >&2; } || true
    say "-- top symbols:"
    { perf report -i "$WORK/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
        grep -v -e '^#' -e '^$' | sed -n 1,30p >&2; } || true
}

# ---------------------------------------------------------------- main
say "== graph-relay load benchmark: $(date -u '+%F %T UTC'), $(nproc) cores, $(uname -r)"
say "   relay: $RELAY_BIN ($(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?'))"
say "   postfix $(postconf -d -h mail_version); spool/queue on $FSTYPE under $BENCH_DIR"
[[ $FSTYPE == tmpfs || $FSTYPE == ramfs ]] && say "   WARNING: $BENCH_DIR is $FSTYPE: fsync is free there, the comparison is meaningless"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
s0=$(sys_cpu); sleep 2; s1=$(sys_cpu)
say "   load average before: $LOAD_BEFORE; machine busy in the 2 s before: $(busy "$s0" "$s1" | cut -d' ' -f1)"
say "   smtp-source -s $SESSIONS -m $N -l $SIZE, $REPEATS rounds, median"

start_postfix
((NULL_SINK)) && start_null

if ((WARMUP > 0)); then
    say "== warm-up ($WARMUP messages each, not counted)"
    run_relay warmup "$WARMUP"
    run_postfix warmup "$WARMUP"
    ((NULL_SINK)) && run_null warmup "$WARMUP"
fi

RR=() RE=() RC=() RH=() RP=() PR=() PE=() PC=() PS=() PP=() SR=()
say "   CPU ms/msg = the server's own CPU time (user+sys) / N; machine = whole-box CPU during the load,"
say "   and the share of it used by anything but the server, its sink and smtp-source (others: mostly"
say "   the kernel's block-I/O workers flushing for the fsyncs, plus anyone else's work)"
printf '%-6s %-16s %9s %11s %18s %12s  %s\n' round server "accept/s" "delivered/s" "CPU ms/msg" "peak RSS" "machine" >&2
for ((r = 1; r <= REPEATS; r++)); do
    run_relay "r$r" "$N"
    RR+=("$R_RATE") RE+=("$R_E2E") RC+=("$R_CPU") RH+=("$R_HWM") RP+=("$R_PSS")
    printf '%-6s %-16s %9s %11s %18s %12s  %s\n' "$r" "relay (dry-run)" "$R_RATE" "$R_E2E" "$R_CPU" "$(mib "$R_HWM")" "$R_BUSY; PSS after $(mib "$R_PSS")" >&2
    run_postfix "r$r" "$N"
    PR+=("$P_RATE") PE+=("$P_E2E") PC+=("$P_CPU") PS+=("$P_RSS") PP+=("$P_PSS")
    printf '%-6s %-16s %9s %11s %18s %12s  %s\n' "$r" "postfix" "$P_RATE" "$P_E2E" "$P_CPU" "$(mib "$P_RSS")" "$P_BUSY; $P_PROCS procs, PSS after $(mib "$P_PSS")" >&2
    if ((NULL_SINK)); then
        run_null "r$r" "$N"
        SR+=("$S_RATE")
        printf '%-6s %-16s %9s\n' "$r" "smtp-sink (null)" "$S_RATE" >&2
    fi
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
mr=$(median "${RR[@]}") me=$(median "${RE[@]}") mc=$(median_by_first "${RC[@]}") mh=$(median "${RH[@]}")
pr=$(median "${PR[@]}") pe=$(median "${PE[@]}") pc=$(median_by_first "${PC[@]}") ps_=$(median "${PS[@]}")
rp=$(median "${RP[@]}") pp=$(median "${PP[@]}")
range() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'; }
summary="relay(dry-run) $mr msg/s ($(range "${RR[@]}")) | postfix $pr msg/s ($(range "${PR[@]}"))"
summary+=" | ratio $(ratio "$mr" "$pr")"
summary+=" | end-to-end ratio $(ratio "$me" "$pe")"
summary+=" | CPU/msg (user+sys) relay ${mc} ms, postfix ${pc} ms"
summary+=" | relay peak RSS $(mib "$mh") | postfix RSS $(mib "$ps_") (peak sum over its processes)"
summary+=" | PSS after the load: relay $(mib "$rp"), postfix $(mib "$pp")"
if ((NULL_SINK)); then
    sr=$(median "${SR[@]}")
    summary+=" | smtp-sink $sr msg/s (relay at $(awk -v a="$mr" -v b="$sr" 'BEGIN { printf "%.0f%%", 100 * a / b }') of it)"
fi
say
say "== median of $REPEATS, N=$N, ${SIZE}-byte messages, $SESSIONS sessions; load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
echo "$summary"

if ((SERIAL > 0)); then
    run_relay serial "$SERIAL" 1
    run_postfix serial "$SERIAL" 1
    serial="one session, $SERIAL messages in a row: relay $(awk -v r="$R_RATE" 'BEGIN { printf "%.2f", 1000 / r }') ms/msg"
    serial+=", postfix $(awk -v r="$P_RATE" 'BEGIN { printf "%.2f", 1000 / r }') ms/msg"
    echo "$serial"
fi

((PROFILE)) && profile_relay

if ((FAILED)); then
    say "FAIL: correctness checks failed (see above)"
    exit 1
fi
