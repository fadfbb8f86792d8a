#!/usr/bin/env bash
# bench/ws-bench.sh: WebSocket proxying (issue 9, docs/websocket.md), the gateway against nginx's
# plain WebSocket relay, measured in the same run, on loopback, with the shared rig's conventions
# (../shared/bench/README.md: pinning, proxy CPU from /proc, alternating rounds, median of rounds,
# ratios against an anchor of the same run; runs with other CPU load are repeated).
#
#   bench/ws-bench.sh [all|load|idle]           (default all; `make bench-ws` runs `all`)
#
# load: message relay, closed loop. bench/ws-bench.c (client, CPU 0) keeps INFLIGHT messages of
#   SIZE bytes in flight on each of CONNS WebSockets, every echo sending the next message, WARMUP s
#   then DURATION s measured; bench/ws-echo.c echoes every frame (upstream, CPU 1). Cases:
#     direct     client -> ws-echo                                   (ceiling: client-bound)
#     nginx      client -> nginx, 1 worker, plain relay (proxy_http_version 1.1; Upgrade and
#                Connection "upgrade" set; default buffers) -> ws-echo                   (anchor)
#     gw         client -> ./passerelle (workers: 1, access_log off), route `websocket: true`,
#                no policy (messages stream through the frame parser) -> ws-echo
#     gw-policy  the same with bench/policies/ws_pass.lua, a ws_message policy that passes every
#                message (each message assembled and handed to Lua, both directions)
#     gw-select  the same with route selection per message (docs/websocket.md) and no route policy:
#                `websocket: { selection: action, actions: { echo: { policies: [ws_pass] } } }`;
#                the client sends JSON, {"action":"echo","d":"<filler>"} padded to SIZE bytes
#                (ws-bench -j action=echo; the other cases send SIZE bytes of printable ASCII), so
#                each inbound message is assembled, its JSON parsed in C for `action`, and the
#                `echo` chain (ws_pass) runs on it: one Lua call per round trip, inbound only
#                (outbound messages stream, as without policies: only action chains have a
#                ws_message function). NOT like-for-like with gw-policy, which calls ws_pass both
#                ways (two Lua calls per round trip): gw-select - gw is what selection costs.
#     gw-select-miss  (not in the default CASES) the same route, the messages naming an action it
#                does not have ({"action":"none",...}; no default): assembled both ways and parsed,
#                no Lua function runs. With gw, gw-policy and gw-select in the same run, the ratio
#                lines split the cost: gw-select - gw-select-miss = the action chain's Lua call (L),
#                and the JSON parse ~ gw-select-miss - gw-policy + 2 L (if a route chain's call
#                costs what an action chain's does). Before the run, a probe route
#                (/probe, action `probe`: bench/policies/ws_probe.lua, close 4000) checks that the
#                gateway selects by the field: {"action":"probe"} must be closed, {"action":"echo"}
#                (no such action there, no default) echoed.
#   for each of SIZES (text messages, 64 B and 16 KiB). The proxy (nginx's worker, or the
#   gateway's whole process tree: master + worker) and the upstream share CPU 1, as in the rig
#   (its placement A: a single bottleneck core, the client with headroom on the other, so a proxy
#   cheaper than nginx shows up as more messages/s). The client samples the proxy's CPU
#   (utime + stime + cutime + cstime of each process, /proc/PID/stat) at the exact start and end
#   of the measured window: "proxy CPU µs/msg" is that CPU divided by the round trips completed,
#   i.e. per message relayed in both directions (client -> upstream and its echo back). It is the
#   figure to compare (README: "the wall-clock metric to use for cost per request"); messages/s
#   measure proxy + upstream sharing one core.
#   Why CONNS=50, INFLIGHT=1: one message in flight per connection is how most WebSocket traffic
#   looks to a proxy (many connections, each with an occasional message), so each message costs
#   its own reads, writes and epoll wake-ups; several in flight per connection let them coalesce
#   in one read and flatter whoever batches (INFLIGHT=4 shows that case). 50 connections keep
#   CPU 1 saturated through a proxy while the client uses well under its core (it is the
#   bottleneck only in `direct`), as wrk's 50 connections do in the rig. 16 KiB messages show
#   the copying and buffer sizes (nginx relays through proxy_buffer_size, 4 KiB or 8 KiB here).
#
# idle: memory of IDLE_N (10,000) idle WebSockets. For each of IDLE_TARGETS (gw, nginx): a fresh
#   instance with IDLE_WORKERS (2) workers (the hard descriptor limit is 20,000 per process and
#   each WebSocket takes two in the proxy, so one worker cannot hold 10,000), RSS of its whole tree
#   (sum of VmRSS of master + workers, /proc/PID/status; also PSS from smaps_rollup, which does not
#   count shared pages once per process) after one WebSocket round trip (before), with IDLE_N idle
#   WebSockets open (after; the client holds them, one process is enough: one descriptor each),
#   and after they are all closed; IDLE_CYCLES times on the same instance. The issue's target: 10,000 idle WebSockets in under 64 MiB of
#   gateway RSS (total, not the increase).
#
# Knobs (environment, defaults in brackets): ROUNDS [3] DURATION [8] WARMUP [1] CONNS [50]
#   INFLIGHT [1] SIZES ["64 16384"] CASES ["direct nginx gw gw-policy gw-select"; also
#   gw-select-miss] BINARY [0] (1: binary messages; gw-select's JSON then goes in binary frames) CLIENT_CPU [0] PROXY_CPU [1]
#   UPSTREAM_CPU [1] PIN [1] (0: no taskset)
#   BASE_PORT [18280] (ports BASE..BASE+6 on 127.0.0.1: echo, nginx, gw, gw-policy, idle gw, idle
#   nginx, gw-select; the shared rig uses 18080-18085 and 18180-18190) MAX_OTHER_CPU [5] (% of the machine
#   used by other processes beyond which a run is repeated) ATTEMPTS [3] RETRY_WAIT [5]
#   IDLE_N [10000] IDLE_TARGETS ["gw nginx"] IDLE_WORKERS [2] IDLE_SETTLE [2] (s before reading
#   RSS) IDLE_CYCLES [2] (open, hold, close IDLE_N WebSockets this many times on the same instance:
#   an RSS that grows from one cycle to the next is memory not reused) NGINX_BUFFER [nginx's default] (proxy_buffer_size: the buffer nginx relays each direction
#   through, 4k or 8k by default, e.g. 64k) GW_BIN [./passerelle] GW_START_TIMEOUT [30] OUT_DIR [a new /tmp/ws-bench.<stamp>.XXXXXX]
#   KEEP_RUNDIR [0].
# Output: progress on stderr; the tables on stdout and in OUT_DIR/table.md; raw client output per
# run, results.tsv, idle.tsv, gateway and nginx logs in OUT_DIR. Every process started here is
# recorded by PID (the gateway: its whole tree) and stopped on exit, error or Ctrl-C. Every run
# stops by itself (client runs are bounded by `timeout`). The gateway is not rebuilt: it runs
# $GW_BIN as it is. Until the gateway proxies WebSockets, the gw cases stop the run with the reason
# (run the anchors alone with CASES="direct nginx" IDLE_TARGETS=nginx).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-all}
case $MODE in all|load|idle) ;; *) echo "usage: bench/ws-bench.sh [all|load|idle]" >&2; exit 2 ;; esac
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-50}
INFLIGHT=${INFLIGHT:-1}
SIZES=${SIZES:-"64 16384"}
CASES=${CASES:-"direct nginx gw gw-policy gw-select"}
BINARY=${BINARY:-0}
CLIENT_CPU=${CLIENT_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
UPSTREAM_CPU=${UPSTREAM_CPU:-1}
PIN=${PIN:-1}
BASE_PORT=${BASE_PORT:-18280}
MAX_OTHER_CPU=${MAX_OTHER_CPU:-5}
ATTEMPTS=${ATTEMPTS:-3}
RETRY_WAIT=${RETRY_WAIT:-5}
IDLE_N=${IDLE_N:-10000}
IDLE_TARGETS=${IDLE_TARGETS:-"gw nginx"}
IDLE_WORKERS=${IDLE_WORKERS:-2}
IDLE_SETTLE=${IDLE_SETTLE:-2}
IDLE_CYCLES=${IDLE_CYCLES:-2}
GW_BIN=${GW_BIN:-./passerelle}
NGINX_BUFFER=${NGINX_BUFFER:-}
GW_START_TIMEOUT=${GW_START_TIMEOUT:-30}

ECHO_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
GW_PORT=$((BASE_PORT + 2))
GWP_PORT=$((BASE_PORT + 3))
IDLE_GW_PORT=$((BASE_PORT + 4))
IDLE_NGINX_PORT=$((BASE_PORT + 5))
GWS_PORT=$((BASE_PORT + 6))

log() { printf '[ws-bench] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for c in $CASES; do
    case $c in direct|nginx|gw|gw-policy|gw-select|gw-select-miss) ;;
        *) die "unknown case $c (direct nginx gw gw-policy gw-select gw-select-miss)" ;; esac
done
for t in $IDLE_TARGETS; do
    case $t in gw|nginx) ;; *) die "unknown idle target $t (gw nginx)" ;; esac
done
command -v nginx >/dev/null || die "needs nginx"
command -v gcc >/dev/null || die "needs gcc (and libssl-dev for -lcrypto)"
command -v taskset >/dev/null || PIN=0
need_gw=0
if [ "$MODE" != idle ]; then case " $CASES " in *" gw"*) need_gw=1 ;; esac; fi
if [ "$MODE" != load ]; then case " $IDLE_TARGETS " in *" gw "*) need_gw=1 ;; esac; fi
[ "$need_gw" = 0 ] || [ -x "$GW_BIN" ] || die "$GW_BIN not found: build it (make), or leave the gw cases out: CASES=\"direct nginx\" IDLE_TARGETS=nginx"

# ---------------------------------------------------------------- run dir, processes
RUN=$(mktemp -d /tmp/ws-bench-run.XXXXXX)
chmod 755 "$RUN" # nginx workers run as an unprivileged user
mkdir -p "$RUN"/{bin,conf,logs,run,tmp}
OUT_DIR=${OUT_DIR:-$(mktemp -d "/tmp/ws-bench.$(date +%Y%m%d-%H%M%S).XXXXXX")}
mkdir -p "$OUT_DIR"
RESULTS=$OUT_DIR/results.tsv
IDLE_RESULTS=$OUT_DIR/idle.tsv

PIDS=()       # long-running processes started here (echo, nginx masters), stopped by PID
GW_ROOTS=()   # gateway masters: each stopped with its whole tree
CLIENT_PID="" # the client run in progress

# alive, tree_pids, pincmd, port_open: bench/ws-lib.sh
. bench/ws-lib.sh
stop_pid() { # TERM, KILL after 5 s
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
        log "pid $pid did not stop on TERM, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
stop_tree() { # TERM every process of the tree at once, KILL what is left after 10 s
    local root=$1 pids p i left=""
    pids=$(tree_pids "$root")
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    for i in $(seq 100); do
        left=""
        for p in $pids; do alive "$p" && left="$left $p"; done
        [ -z "$left" ] && break
        sleep 0.1
    done
    if [ -n "$left" ]; then
        log "pids$left did not stop on TERM within 10 s, sending KILL"
        for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
    fi
    wait "$root" 2>/dev/null || true
}
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    [ -n "$CLIENT_PID" ] && stop_pid "$CLIENT_PID"
    for p in "${GW_ROOTS[@]:-}"; do [ -n "$p" ] && stop_tree "$p"; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && stop_pid "$p"; done
    if [ "${KEEP_RUNDIR:-0}" = 1 ]; then log "run dir kept: $RUN"; else rm -rf "$RUN"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_port() { # port pid what
    local i
    for i in $(seq $((GW_START_TIMEOUT * 10))); do
        port_open "$1" && return 0
        alive "$2" || return 1
        sleep 0.1
    done
    return 1
}
for p in $ECHO_PORT $NGINX_PORT $GW_PORT $GWP_PORT $IDLE_GW_PORT $IDLE_NGINX_PORT $GWS_PORT; do
    port_open "$p" && die "port $p already in use on 127.0.0.1 (set BASE_PORT)"
done

# ---------------------------------------------------------------- tools
BIN=$RUN/bin
for t in ws-echo ws-bench; do
    gcc -O2 -Wall -Wextra -Werror -o "$BIN/$t" "bench/$t.c" -lcrypto || die "cannot build bench/$t.c"
done

# ---------------------------------------------------------------- servers
start_echo() {
    pincmd "$UPSTREAM_CPU"
    "${PINCMD[@]}" "$BIN/ws-echo" "127.0.0.1:$ECHO_PORT" > "$OUT_DIR/ws-echo.log" 2>&1 &
    ECHO_PID=$!
    PIDS+=("$ECHO_PID")
    wait_port "$ECHO_PORT" "$ECHO_PID" || die "ws-echo did not start (see $OUT_DIR/ws-echo.log)"
}

nginx_conf() { # name port workers
    local reuse="" NGINX_BUFFER_LINE=""
    [ -n "$NGINX_BUFFER" ] && NGINX_BUFFER_LINE="
            proxy_buffer_size $NGINX_BUFFER;   # NGINX_BUFFER: the relay's buffer, each direction
            proxy_buffers 4 $NGINX_BUFFER;     # (only so that nginx accepts the size above)
            proxy_busy_buffers_size $NGINX_BUFFER;"
    [ "$3" -gt 1 ] && reuse=" reuseport" # spreads connections evenly over the workers
    cat > "$RUN/conf/$1.conf" <<EOF
# bench/ws-bench.sh: nginx as a plain WebSocket relay
worker_processes $3;
daemon off;
master_process on;
pid run/$1.pid;
error_log logs/$1-error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http {
    access_log off;
    tcp_nodelay on;
    server_tokens off;
    client_body_temp_path tmp/$1-body;
    proxy_temp_path tmp/$1-proxy;
    fastcgi_temp_path tmp/$1-fastcgi;
    uwsgi_temp_path tmp/$1-uwsgi;
    scgi_temp_path tmp/$1-scgi;
    upstream echo { server 127.0.0.1:$ECHO_PORT; }
    server {
        listen 127.0.0.1:$2 backlog=4096$reuse;
        location / {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;   # idle tunnels stay open (the idle test)$NGINX_BUFFER_LINE
            proxy_send_timeout 1h;
        }
    }
}
EOF
}
start_nginx() { # name port workers -> STARTED_PID (master)
    nginx_conf "$1" "$2" "$3"
    nginx -t -q -p "$RUN/" -c "conf/$1.conf" -e "logs/$1-error.log" || die "nginx config $1 invalid"
    pincmd "$PROXY_CPU"
    "${PINCMD[@]}" nginx -p "$RUN/" -c "conf/$1.conf" -e "logs/$1-error.log" > "$OUT_DIR/$1.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_port "$2" "$STARTED_PID" || die "nginx $1 did not start (see $RUN/logs/$1-error.log)"
}
worker_of() { # nginx master -> its first worker
    local w i
    for i in $(seq 50); do
        w=$(pgrep -P "$1" | head -n1 || true)
        [ -n "$w" ] && { echo "$w"; return; }
        sleep 0.1
    done
    die "no worker under nginx master $1"
}

gw_fail() { # log message...: die with the end of the gateway's log
    local f=$1
    shift
    log "ERROR: gateway: $*"
    if [ -s "$f" ]; then
        log "last lines of $f:"
        tail -n 15 "$f" | sed 's/^/    /' >&2
    fi
    exit 1
}
gw_conf() { # file name workers: the gateway's config; listeners by port
    local file=$1 name=$2 workers=$3 sel=0
    # gw-select's listener and routes only when the case runs (a build without selection refuses them)
    if [ "$name" = load ]; then case " $CASES " in *" gw-select"*) sel=1 ;; esac; fi
    {
        echo "# bench/ws-bench.sh: $name"
        echo "listeners:"
        if [ "$name" = load ]; then
            echo "  - { name: ws, address: \"127.0.0.1:$GW_PORT\" }"
            echo "  - { name: wsp, address: \"127.0.0.1:$GWP_PORT\" }"
            [ "$sel" = 0 ] || echo "  - { name: wssel, address: \"127.0.0.1:$GWS_PORT\" }"
        else
            echo "  - { name: ws, address: \"127.0.0.1:$IDLE_GW_PORT\", backlog: 4096 }"
        fi
        cat <<EOF
workers: $workers
control: { socket: "$RUN/run/gw-$name.sock" }
limits: { max_connections: 30000 }
upstreams:
  echo: { targets: ["127.0.0.1:$ECHO_PORT"], retries: 0 }
policies: { dir: bench/policies }
routes:
  - { name: ws, listeners: [ws], match: { path: / }, upstream: echo, websocket: true }
EOF
        if [ "$name" = load ]; then
            echo "  - { name: wsp, listeners: [wsp], match: { path: / }, upstream: echo, websocket: true, policies: [ws_pass] }"
        fi
        if [ "$sel" = 1 ]; then
            # the measured route; /probe (exact: it wins over the prefix /) is the sanity check's
            echo "  - { name: wssel, listeners: [wssel], match: { path: / }, upstream: echo,"
            echo "      websocket: { selection: action, actions: { echo: { policies: [ws_pass] } } } }"
            echo "  - { name: wsprobe, listeners: [wssel], match: { path: /probe }, upstream: echo,"
            echo "      websocket: { selection: action, actions: { probe: { policies: [ws_probe] } } } }"
        fi
        cat <<EOF
access_log: off
error_log: { path: "$OUT_DIR/gateway-$name.error.log", level: warn }
EOF
    } > "$file"
}
start_gw() { # name workers port -> STARTED_PID (master)
    local name=$1 workers=$2 port=$3 conf="$RUN/conf/gw-$1.yaml" glog="$OUT_DIR/gateway-$1.log"
    gw_conf "$conf" "$name" "$workers"
    cp "$conf" "$OUT_DIR/"
    if ! "$GW_BIN" check -c "$conf" > "$glog" 2>&1; then
        gw_fail "$glog" "$GW_BIN refused the configuration $OUT_DIR/gw-$name.yaml (no \`websocket\` route" \
            "setting in this build? issue 9 not there yet; gw-select needs \`websocket: { selection, actions }\`)." \
            "Without the gateway: CASES=\"direct nginx\" IDLE_TARGETS=nginx; without selection: leave gw-select* out"
    fi
    pincmd "$PROXY_CPU"
    # foreground; the affinity is inherited by the workers (the whole tree on PROXY_CPU)
    "${PINCMD[@]}" "$GW_BIN" -c "$conf" < /dev/null >> "$glog" 2>&1 &
    STARTED_PID=$!
    GW_ROOTS+=("$STARTED_PID")
    wait_port "$port" "$STARTED_PID" || gw_fail "$glog" "did not open port $port within ${GW_START_TIMEOUT}s (or exited)"
    local i
    for i in $(seq 50); do # wait for the workers
        [ "$(tree_pids "$STARTED_PID" | wc -w)" -gt "$workers" ] && break
        sleep 0.1
    done
    if [ "$PIN" = 1 ]; then
        for p in $(tree_pids "$STARTED_PID"); do taskset -a -p -c "$PROXY_CPU" "$p" > /dev/null 2>&1 || true; done
    fi
}

# check LABEL URL [LOGFILE [CLIENT-OPTION...]]: a few messages of every size through URL, or stop
# with the reason
ws_check() {
    local label=$1 url=$2 glog=${3:-} s out rc
    shift $(($# < 3 ? $# : 3))
    local opts=("$@")
    [ -n "$BINOPT" ] && opts+=("$BINOPT")
    for s in $SIZES 200000; do
        rc=0
        out=$(timeout -k 5 40 "$BIN/ws-bench" -c 2 -w 2 -n 20 -s "$s" "${opts[@]}" "$url" 2>&1) || rc=$?
        [ "$rc" = 0 ] && continue
        log "ERROR: sanity check failed: $label ($url), $s-byte messages (exit $rc):"
        printf '%s\n' "$out" | grep -v '^RESULT' | sed 's/^/    /' >&2
        case $label in
            gw*)
                if [ "$rc" = 3 ]; then
                    log "the WebSocket handshake through the gateway failed: $GW_BIN does not proxy WebSockets yet (issue 9)?"
                fi
                [ -n "$glog" ] && [ -s "$glog" ] && { log "last lines of $glog:"; tail -n 15 "$glog" | sed 's/^/    /' >&2; }
                log "without the gateway: CASES=\"direct nginx\" IDLE_TARGETS=nginx bench/ws-bench.sh" ;;
        esac
        exit 1
    done
}
# select_probe: gw-select's route selects by the message's field (the /probe route, whose only action
# `probe` runs bench/policies/ws_probe.lua, close 4000): a message naming `probe` is closed, one
# naming `echo` (no such action there, no default) is echoed; or stop with the reason
select_probe() {
    local url="127.0.0.1:$GWS_PORT/probe" out rc=0 opts=()
    [ -n "$BINOPT" ] && opts+=("$BINOPT")
    out=$(timeout -k 5 40 "$BIN/ws-bench" -c 1 -n 1 -s 64 -j action=probe "${opts[@]}" "$url" 2>&1) || rc=$?
    if [ "$rc" != 1 ] || ! grep -q 'server sent close 4000' <<< "$out"; then
        log "ERROR: sanity check failed: gw-select probe ($url): {\"action\":\"probe\"} was not closed with 4000 (exit $rc):"
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        gw_fail "$OUT_DIR/gateway-load.log" "the gateway does not select a chain by the message's \`action\` (websocket.selection)"
    fi
    ws_check "gw-select probe, action echo" "$url" "$OUT_DIR/gateway-load.log" -j action=echo
    log "gw-select probe: {\"action\":\"probe\"} closed with 4000, {\"action\":\"echo\"} echoed"
}
BINOPT=""
[ "$BINARY" = 1 ] && BINOPT="-b"

start_echo
ws_check "direct (ws-echo)" "127.0.0.1:$ECHO_PORT/echo"
log "ws-echo up (pid $ECHO_PID), tools built in $BIN; output in $OUT_DIR"

# ---------------------------------------------------------------- load
csv() { tr -s ' ' '\n' <<< "$*" | awk 'NF' | paste -sd, -; }
run_load() { # case size out
    local name=$1 size=$2 out=$3 url proxy="" rc=0 before after
    case $name in
        direct) url="127.0.0.1:$ECHO_PORT/echo" ;;
        nginx) url="127.0.0.1:$NGINX_PORT/echo"; proxy=$NGINX_WORKER ;;
        gw) url="127.0.0.1:$GW_PORT/echo"; proxy=$(csv "$(tree_pids "$GW_LOAD")") ;;
        gw-policy) url="127.0.0.1:$GWP_PORT/echo"; proxy=$(csv "$(tree_pids "$GW_LOAD")") ;;
        gw-select*) url="127.0.0.1:$GWS_PORT/echo"; proxy=$(csv "$(tree_pids "$GW_LOAD")") ;;
    esac
    local args=(-c "$CONNS" -w "$INFLIGHT" -s "$size" -W "$WARMUP" -d "$DURATION" --ticks "up=$ECHO_PID")
    [ -n "$proxy" ] && args+=(--ticks "proxy=$proxy")
    [ -n "$BINOPT" ] && args+=("$BINOPT")
    [ -n "${SELECT_JSON[$name]:-}" ] && args+=(-j "${SELECT_JSON[$name]}")
    before=$proxy
    pincmd "$CLIENT_CPU"
    timeout -k 5 "$(awk -v w="$WARMUP" -v d="$DURATION" 'BEGIN { printf "%d", w + d + 60 }')" \
        "${PINCMD[@]}" "$BIN/ws-bench" "${args[@]}" "$url" > "$out" 2>&1 &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    case $rc in
        0|1) ;; # 1: errors, counted in the table
        3) log "ERROR: handshakes failed in the $name $size run:"; grep -v '^RESULT' "$out" | sed 's/^/    /' >&2; exit 1 ;;
        *) log "ERROR: the client failed (exit $rc) in the $name $size run:"; sed 's/^/    /' "$out" >&2; exit 1 ;;
    esac
    case $name in
        gw*)
            alive "$GW_LOAD" || gw_fail "$OUT_DIR/gateway-load.log" "the gateway exited during the $name $size run"
            after=$(csv "$(tree_pids "$GW_LOAD")")
            [ "$after" = "$before" ] || log "WARNING: the gateway's process tree changed during the $name $size run (worker restart?): [$before] -> [$after]"
            ;;
    esac
}
parse_run() { # round case size out -> a results.tsv line (without attempts)
    awk -v round="$1" -v name="$2" -v size="$3" -v ncpu="$(nproc)" '
        /^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
        END {
            hz = v["clk_tck"]; d = v["duration_s"]; m = v["messages"]
            if (m == 0 || d == 0) { printf "%d\t%s\t%s\t0\t0\t0\t-\t-\t-\t-\t-\t-\t%d", round, name, size, v["errors"] + 1; exit }
            pt = ("ticks_proxy" in v) ? v["ticks_proxy"] : -1
            pus = pt >= 0 ? sprintf("%.2f", pt * 1e6 / hz / m) : "-"
            putil = pt >= 0 ? sprintf("%.2f", pt / hz / d) : "-"
            other = v["sys_busy_ticks"] / hz - (pt > 0 ? pt : 0) / hz - v["ticks_up"] / hz - v["client_cpu_s"]
            printf "%d\t%s\t%s\t%.0f\t%d\t%d\t%s\t%s\t%.2f\t%.2f\t%.1f\t%.1f\t%d", round, name, size,
                m / d, v["p50_us"], v["p99_us"], pus, putil, v["ticks_up"] * 1e6 / hz / m,
                v["client_cpu_s"] / d, 100 * other / d / ncpu, 100 * v["sys_steal_ticks"] / hz / d / ncpu,
                v["errors"]
        }' "$4"
}

table() { # results.tsv -> markdown table + ratio lines
    awk -F'\t' '
    function med(s,    a, n, i, j, t) {
        n = split(s, a, " ")
        for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n % 2 ? a[(n + 1) / 2] + 0 : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function lo(s,    a, n, i, m) { n = split(s, a, " "); m = a[1] + 0; for (i = 2; i <= n; i++) if (a[i] + 0 < m) m = a[i] + 0; return m }
    function hi(s,    a, n, i, m) { n = split(s, a, " "); m = a[1] + 0; for (i = 2; i <= n; i++) if (a[i] + 0 > m) m = a[i] + 0; return m }
    function sz(b) { return b >= 1024 && b % 1024 == 0 ? (b / 1024) " KiB" : b " B" }
    /^#/ || $1 == "round" { next }
    {
        k = $2 SUBSEP $3
        if (!(k in rps)) order[++n] = k
        rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6
        if ($7 != "-") { pus[k] = pus[k] " " $7; put[k] = put[k] " " $8 }
        uus[k] = uus[k] " " $9; cu[k] = cu[k] " " $10; oth[k] = oth[k] " " $11
        err[k] += $13; rep[k] += $14 - 1
    }
    END {
        print "| case | size | msgs/s | min..max | spread | p50 µs | p99 µs | msgs/s vs direct | proxy CPU µs/msg | proxy util | upstream CPU µs/msg | client util | other CPU % | errors | repeats |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= n; i++) {
            k = order[i]; split(k, cb, SUBSEP)
            r = med(rps[k]); mr[k] = r
            d = "direct" SUBSEP cb[2]
            vs = (d in rps) ? sprintf("%.2f", r / med(rps[d])) : "–"
            if (k in pus) { mp[k] = med(pus[k]); pu = sprintf("%.2f", mp[k]); pt = sprintf("%.0f %%", 100 * med(put[k])) } else { pu = "–"; pt = "–" }
            printf "| %s | %s | %d | %d..%d | %.1f %% | %d | %d | %s | %s | %s | %.2f | %.0f %% | %.1f | %d | %d |\n",
                cb[1], sz(cb[2]), r, lo(rps[k]), hi(rps[k]), r ? 100 * (hi(rps[k]) - lo(rps[k])) / r : 0,
                med(p50[k]), med(p99[k]), vs, pu, pt, med(uus[k]), 100 * med(cu[k]), med(oth[k]), err[k], rep[k]
            sizes[cb[2]] = 1
            if (med(oth[k]) > maxo) maxo = med(oth[k])
        }
        printf "\nrepeats: runs done again because other processes used more than %s %% of the machine (after %s attempts the last is kept).\n", maxother, attempts
        if (maxo > maxother)
            printf "WARNING: other processes used up to %.0f %% of the machine (median of a cell): the machine was busy, these figures are not decision-grade.\n", maxo
        printf "\nproxy CPU µs per message = CPU of the proxy over the measured window / round trips (one message relayed each way); ratios are medians of this run, lower is better for CPU, higher for msgs/s:\n\n"
        for (i = 1; i <= n; i++) {
            k = order[i]; split(k, cb, SUBSEP)
            if (cb[1] !~ /^gw/) continue
            a = "nginx" SUBSEP cb[2]; g = "gw" SUBSEP cb[2]
            line = sprintf("- %s %s:", cb[1], sz(cb[2]))
            if (!(k in mp)) { print line " no CPU figure"; continue }
            if (a in mp) line = line sprintf(" proxy CPU %.2f µs/msg = %.2fx nginx (%.2f) | msgs/s %.0f = %.2fx nginx (%.0f)", mp[k], mp[k] / mp[a], mp[a], mr[k], mr[k] / mr[a], mr[a])
            else line = line sprintf(" proxy CPU %.2f µs/msg, msgs/s %.0f (nginx not measured)", mp[k], mr[k])
            if (cb[1] != "gw" && (g in mp)) line = line sprintf(" | vs gw: %+.2f µs/msg (%.2fx)", mp[k] - mp[g], mp[k] / mp[g])
            p = "gw-policy" SUBSEP cb[2]; m = "gw-select-miss" SUBSEP cb[2]
            if (cb[1] == "gw-select" && (p in mp)) line = line sprintf(" | vs gw-policy: %+.2f µs/msg (%.2fx)", mp[k] - mp[p], mp[k] / mp[p])
            if (cb[1] == "gw-select" && (m in mp)) {
                line = line sprintf(" | vs gw-select-miss: %+.2f µs/msg (the action chain'"'"'s Lua call)", mp[k] - mp[m])
                if (p in mp) line = line sprintf(" | JSON parse ~ %.2f µs/msg", mp[m] - mp[p] + 2 * (mp[k] - mp[m]))
            }
            if (err[k]) line = line sprintf("  WARNING: %d errors", err[k])
            print line
        }
    }' maxother="$MAX_OTHER_CPU" attempts="$ATTEMPTS" "$1"
    select_note " (a difference of medians: noisy)"
}

if [ "$MODE" != idle ]; then
    NGINX_WORKER="" GW_LOAD=""
    case " $CASES " in *" nginx "*)
        start_nginx nginx-ws "$NGINX_PORT" 1
        NGINX_WORKER=$(worker_of "$STARTED_PID")
        ws_check nginx "127.0.0.1:$NGINX_PORT/echo"
        log "nginx up (master $STARTED_PID, worker $NGINX_WORKER)" ;;
    esac
    case " $CASES " in *" gw"*)
        start_gw load 1 "$GWP_PORT"
        GW_LOAD=$STARTED_PID
        case " $CASES " in *" gw "*) ws_check gw "127.0.0.1:$GW_PORT/echo" "$OUT_DIR/gateway-load.log" ;; esac
        case " $CASES " in *" gw-policy "*) ws_check gw-policy "127.0.0.1:$GWP_PORT/echo" "$OUT_DIR/gateway-load.log" ;; esac
        case " $CASES " in *" gw-select"*)
            wait_port "$GWS_PORT" "$GW_LOAD" || gw_fail "$OUT_DIR/gateway-load.log" "gw-select's port $GWS_PORT is not open"
            for c in gw-select gw-select-miss; do
                case " $CASES " in *" $c "*) ws_check "$c" "127.0.0.1:$GWS_PORT/echo" "$OUT_DIR/gateway-load.log" -j "${SELECT_JSON[$c]}" ;; esac
            done
            select_probe ;;
        esac
        log "gateway up: process tree $(tree_pids "$GW_LOAD")" ;;
    esac
    log "sanity checks passed"

    CELLS=()
    for s in $SIZES; do for c in $CASES; do CELLS+=("$c:$s"); done; done
    {
        echo "# bench/ws-bench.sh $(date -u +%Y-%m-%dT%H:%M:%SZ); $(uname -sr); $(nproc) CPUs; $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
        echo "# $(nginx -v 2>&1); gateway $GW_BIN git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$([ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ' (modified)'), built $(date -u -r "$GW_BIN" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo '?')"
        echo "# pin=$PIN client_cpu=$CLIENT_CPU proxy_cpu=$PROXY_CPU upstream_cpu=$UPSTREAM_CPU conns=$CONNS inflight=$INFLIGHT binary=$BINARY warmup=${WARMUP}s duration=${DURATION}s rounds=$ROUNDS max_other_cpu=$MAX_OTHER_CPU% attempts=$ATTEMPTS"
        printf 'round\tcase\tsize\tmsgs_per_s\tp50_us\tp99_us\tproxy_cpu_us_per_msg\tproxy_util\tup_cpu_us_per_msg\tclient_util\tother_cpu_pct\tsteal_pct\terrors\tattempts\n'
    } > "$RESULTS"
    n=${#CELLS[@]}
    log "load: ${#CELLS[@]} cells x $ROUNDS rounds x (${WARMUP}+${DURATION}) s"
    for r in $(seq 1 "$ROUNDS"); do
        for i in $(seq 0 $((n - 1))); do
            cell=${CELLS[$(( (i + r - 1) % n ))]}
            name=${cell%%:*} size=${cell##*:}
            out="$OUT_DIR/r$r-$name-$size.txt"
            attempt=1
            while :; do
                run_load "$name" "$size" "$out"
                line=$(parse_run "$r" "$name" "$size" "$out")
                other=$(printf '%s\n' "$line" | cut -f11)
                if [ "$attempt" -lt "$ATTEMPTS" ] && awk -v o="$other" -v m="$MAX_OTHER_CPU" 'BEGIN { exit !(o + 0 > m) }'; then
                    log "round $r $name $size: other processes used $other% of the machine (> $MAX_OTHER_CPU%), repeating in ${RETRY_WAIT}s"
                    mv "$out" "${out%.txt}.attempt$attempt.txt"
                    attempt=$((attempt + 1))
                    sleep "$RETRY_WAIT"
                    continue
                fi
                break
            done
            printf '%s\t%d\n' "$line" "$attempt" | tee -a "$RESULTS" | awk -F'\t' '{
                printf "[ws-bench] round %s %-9s %5s B %8s msgs/s  p50 %5s us  p99 %6s us  proxy %5s us/msg  errors %s  other-cpu %s%%\n", $1, $2, $3, $4, $5, $6, $7, $13, $11 }' >&2
        done
    done
    {
        echo "## WebSocket relay: $CONNS connections x $INFLIGHT in flight, ${DURATION} s x $ROUNDS rounds (medians)"
        echo
        table "$RESULTS"
    } | tee "$OUT_DIR/table.md"
    # the load instances are not needed any more: free CPU 1 and their descriptors
    [ -n "$GW_LOAD" ] && stop_tree "$GW_LOAD"
    GW_LOAD=""
fi

# ---------------------------------------------------------------- idle
tree_mem() { # root -> "rss_kb pss_kb nprocs fds-per-process"
    local p rss pss tr=0 tp=0 np=0 fds=""
    for p in $(tree_pids "$1"); do
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true)
        pss=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || true)
        [ -n "$rss" ] || continue
        tr=$((tr + rss)); tp=$((tp + ${pss:-0})); np=$((np + 1))
        fds="$fds${fds:+/}$(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
    done
    echo "$tr $tp $np $fds"
}
idle_one() { # target
    local t=$1 port root glog="" out m0 m1 m2 i rc est cycle
    case $t in
        gw)
            start_gw idle "$IDLE_WORKERS" "$IDLE_GW_PORT"
            root=$STARTED_PID port=$IDLE_GW_PORT glog="$OUT_DIR/gateway-idle.log" ;;
        nginx)
            start_nginx nginx-idle "$IDLE_NGINX_PORT" "$IDLE_WORKERS"
            root=$STARTED_PID port=$IDLE_NGINX_PORT ;;
    esac
    ws_check "$t (idle, $IDLE_WORKERS workers)" "127.0.0.1:$port/idle" "$glog"
    sleep 1
    m0=$(tree_mem "$root")
    for cycle in $(seq 1 "$IDLE_CYCLES"); do
        out="$OUT_DIR/idle-$t-$cycle.txt" rc=0
        pincmd "$CLIENT_CPU"
        timeout -k 5 600 "${PINCMD[@]}" "$BIN/ws-bench" --idle "$IDLE_N" -d 300 -T 120 "127.0.0.1:$port/idle" > "$out" 2>&1 &
        CLIENT_PID=$!
        for i in $(seq 1300); do
            grep -q '^ESTABLISHED' "$out" && break
            alive "$CLIENT_PID" || break
            sleep 0.1
        done
        est=$(grep '^ESTABLISHED' "$out" || true)
        [ -n "$est" ] || { sed 's/^/    /' "$out" >&2; die "$t idle: the client did not establish its connections"; }
        sleep "$IDLE_SETTLE"
        m1=$(tree_mem "$root")
        kill -TERM "$CLIENT_PID" # timeout forwards it; ws-bench then closes every WebSocket cleanly
        wait "$CLIENT_PID" || rc=$?
        CLIENT_PID=""
        sleep "$IDLE_SETTLE"
        m2=$(tree_mem "$root")
        log "$t idle, cycle $cycle: $est; $(grep '^CLOSED' "$out" || echo 'no CLOSED line'); client exit $rc"
        [ "$rc" = 0 ] || grep -v '^RESULT\|^ESTABLISHED\|^CLOSED' "$out" | head -n 8 | sed 's/^/    /' >&2
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$cycle" "$IDLE_WORKERS" \
            "$(sed 's/.*n=\([0-9]*\).*/\1/' <<< "$est")" "$(sed 's/.*failed=\([0-9]*\).*/\1/' <<< "$est")" \
            "$m0" "$m1" "$m2" >> "$IDLE_RESULTS"
        alive "$root" || die "$t exited during the idle test"
    done
    case $t in
        gw) stop_tree "$root" ;;
        nginx) stop_pid "$root" ;;
    esac
}
if [ "$MODE" != load ]; then
    printf 'target\tcycle\tworkers\testablished\tfailed\tbefore(rss_kb pss_kb procs fds)\tidle\tafter_close\n' > "$IDLE_RESULTS"
    for t in $IDLE_TARGETS; do idle_one "$t"; done
    {
        echo
        echo "## $IDLE_N idle WebSockets, $IDLE_WORKERS workers (RSS and PSS summed over the process tree; increases from before the first cycle)"
        echo
        awk -F'\t' -v want="$IDLE_N" '
        NR == 1 { next }
        {
            split($6, a, " "); split($7, b, " "); split($8, c, " ")
            n = $4 > 0 ? $4 : 1
            row[NR] = sprintf("| %s | %d | %d | %d | %.1f | %.1f | %.1f | %.2f | %.1f | %.2f | %.1f | %s |", $1, $2, $4, $5,
                a[1] / 1024, b[1] / 1024, (b[1] - a[1]) / 1024, (b[1] - a[1]) / n, b[2] / 1024, (b[2] - a[2]) / n, c[1] / 1024, b[4])
            if ($1 == "gw") {   # the verdict: the worst cycle
                bad = (b[1] >= 64 * 1024 || $4 < 10000 || $5 > 0)
                if (!seen || b[1] > worst) { worst = b[1]; gw = sprintf("\ngateway: %.1f MiB RSS with %d idle WebSockets%s (target: 10,000 under 64 MiB): %s%s\n",
                    b[1] / 1024, $4, $2 > 1 ? sprintf(" (worst of the cycles: cycle %d)", $2) : "", bad ? "NOT MET" : "MET",
                    ($4 < want || $5) ? sprintf(" (only %d of %d established)", $4, want) : "") }
                seen = 1
            }
            last = NR
        }
        END {
            print "| proxy | cycle | established | failed | RSS before MiB | RSS idle MiB | RSS increase MiB | KiB per WebSocket (RSS) | PSS idle MiB | KiB per WebSocket (PSS) | RSS after close MiB | descriptors per process (idle) |"
            print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
            for (i = 2; i <= last; i++) if (i in row) print row[i]
            printf "%s", gw
        }' "$IDLE_RESULTS"
    } | tee -a "$OUT_DIR/table.md"
fi
log "raw results: $OUT_DIR"
