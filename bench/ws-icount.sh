#!/usr/bin/env bash
# bench/ws-icount.sh: user-space instructions per WebSocket message round trip, counted with
# valgrind (cachegrind, no cache simulation), for the gateway and for nginx's plain WebSocket relay:
# the deterministic companion of bench/ws-bench.sh (same cases, same tools, same configs), as
# ../shared/bench/icount.sh is the companion of the rig's req/s figures. Kernel work (TCP on
# loopback, epoll, syscalls) is NOT counted.
#
#   bench/ws-icount.sh            (`make bench-ws-icount`)
#
# Method: for each of SIZES and each of CASES
#     nginx      nginx, plain relay (the ws-bench.sh config), master_process off, daemon off,
#                worker_processes 1: the one process under valgrind                      (anchor)
#     gw         ./passerelle (workers: 1, access_log off), route `websocket: true`, no policy
#     gw-policy  the same with bench/policies/ws_pass.lua, a ws_message policy passing every message
#     gw-select  the same with route selection per message and no route policy, `websocket:
#                { selection: action, actions: { echo: { policies: [ws_pass] } } }`, the client
#                sending JSON ({"action":"echo","d":"<filler>"} padded to SIZE: ws-bench -j
#                action=echo): each inbound message parsed in C and ws_pass run on it (one Lua call
#                per round trip, inbound only; outbound messages stream, as no function runs
#                on them; gw-policy makes two calls, both ways: see ws-bench.sh's
#                note on comparing them). ws-bench.sh's probe (the gateway selects by the field)
#                is not repeated here.
#     gw-select-miss  (not in the default CASES) the same route, the messages naming an action it
#                does not have ({"action":"none",...}): parsed and assembled, no Lua call. The lines
#                under the table give gw-select - gw, gw-select - gw-policy and, with gw-select-miss,
#                gw-select - gw-select-miss (the action chain's Lua call, L) and the JSON parse
#                ~ gw-select-miss - gw-policy + 2 L (if a route chain's call costs what an action
#                chain's does).
# the server runs alone under `valgrind --tool=cachegrind --cache-sim=no` (the gateway with
# --trace-children=yes and one output file per process: master and worker; pinned to VG_CPU),
# bench/ws-echo.c echoes every frame (upstream, NOT under valgrind) and bench/ws-bench.c in check
# mode (`ws-bench -n COUNT -c CONNS -w INFLIGHT -s SIZE`, CLIENT_CPU, with the echo) sends COUNT
# messages on each of CONNS WebSockets, every echo checked byte for byte, then closes them with a
# close handshake. Two runs, each on a fresh server: COUNT = D1 then D2 (M1 and M2 round trips
# completed, CONNS x COUNT each), the server is stopped with SIGTERM (valgrind writes its counts at
# exit), the `summary:` Ir totals are read (the gateway: summed over every process of its tree), and
#   instructions per message round trip = (Ir(run 2) - Ir(run 1)) / (M2 - M1)
# so start-up, the handshakes, the closes and the shutdown cancel out. A round trip is one message
# relayed client -> upstream and its echo relayed upstream -> client.
# Nearly deterministic: what is left to timing is how many events each epoll_wait returns (a
# server under valgrind is slow, so its wake-ups see several connections ready at once; INFLIGHT=1,
# the default, keeps one message per connection in flight, so messages never coalesce in a read).
#
# Knobs (environment, defaults in brackets): CONNS [10] D1 [200] D2 [1000] (messages per connection
#   in runs 1 and 2) INFLIGHT [1] SIZES ["64 16384"] CASES ["nginx gw gw-policy gw-select"; also
#   gw-select-miss] BINARY [0] (1: binary messages) CLIENT_CPU [0] (client and echo) VG_CPU [1] (the server under
#   valgrind) PIN [1] (0: no taskset) BASE_PORT [18380] (ports BASE..BASE+4 on 127.0.0.1: echo,
#   nginx, gw, gw-policy, gw-select*; ws-bench.sh uses 18280-18286, the shared rig 18080-18085 and
#   18180-18190)
#   NGINX_BUFFER [nginx's default] (proxy_buffer_size, as in ws-bench.sh) GW_BIN [./passerelle]
#   GW_START_TIMEOUT [120] (s for a server's port under valgrind) RUN_TIMEOUT [900] (s for one
#   client run) TOP [25] (functions listed per case and size, 0: none) OUT_DIR [a new
#   /tmp/ws-icount.<stamp>.XXXXXX] KEEP_RUNDIR [0] (1: keep the run dir, with the cachegrind files).
# Output: progress on stderr; the table on stdout and in OUT_DIR/table.md; results.tsv (Ir and
# messages of every run, Ir per process), top-CASE-SIZE.txt (the TOP functions of the difference
# of the two runs, cg_diff, with instructions per round trip), client outputs, server and valgrind
# logs in OUT_DIR.
# Every process started here is recorded by PID (the gateway: its whole tree) and stopped on exit,
# error or Ctrl-C; every client run is bounded by `timeout`. The gateway is not rebuilt: it runs
# $GW_BIN as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-10}
D1=${D1:-200}
D2=${D2:-1000}
INFLIGHT=${INFLIGHT:-1}
SIZES=${SIZES:-"64 16384"}
CASES=${CASES:-"nginx gw gw-policy gw-select"}
BINARY=${BINARY:-0}
CLIENT_CPU=${CLIENT_CPU:-0}
VG_CPU=${VG_CPU:-1}
PIN=${PIN:-1}
BASE_PORT=${BASE_PORT:-18380}
NGINX_BUFFER=${NGINX_BUFFER:-}
GW_BIN=${GW_BIN:-./passerelle}
GW_START_TIMEOUT=${GW_START_TIMEOUT:-120}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
TOP=${TOP:-25}

ECHO_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
GW_PORT=$((BASE_PORT + 2))
GWP_PORT=$((BASE_PORT + 3))
GWS_PORT=$((BASE_PORT + 4))

log() { printf '[ws-icount] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for c in $CASES; do
    case $c in nginx|gw|gw-policy|gw-select|gw-select-miss) ;;
        *) die "unknown case $c (nginx gw gw-policy gw-select gw-select-miss)" ;; esac
done
[ "$D2" -gt "$D1" ] || die "D2 ($D2) must be larger than D1 ($D1)"
# the two runs' start-up and shutdown agree to ~0.1-0.3 M instructions (the gateway: timers, Lua GC),
# which is noise over the difference: it needs thousands of messages to vanish (well under 1 % at the
# defaults)
[ $(((D2 - D1) * CONNS)) -ge 4000 ] \
    || log "WARNING: only $(((D2 - D1) * CONNS)) round trips between the runs: start-up noise (~0.1-0.3 M instructions) is not negligible"
for t in valgrind nginx gcc ps timeout; do
    command -v "$t" >/dev/null || die "needs $t (apt-get install valgrind nginx gcc libssl-dev procps coreutils)"
done
command -v taskset >/dev/null || PIN=0
case " $CASES " in *" gw"*)
    [ -x "$GW_BIN" ] || die "$GW_BIN not found: build it (make), or leave the gw cases out: CASES=nginx" ;;
esac

# ---------------------------------------------------------------- run dir, processes
# (helpers as in bench/ws-bench.sh)
RUN=$(mktemp -d /tmp/ws-icount-run.XXXXXX)
chmod 755 "$RUN"
mkdir -p "$RUN"/{bin,conf,logs,run,tmp,cg}
# a process that drops privileges must still be able to write its cachegrind file
chmod 1777 "$RUN/cg"
OUT_DIR=${OUT_DIR:-$(mktemp -d "/tmp/ws-icount.$(date +%Y%m%d-%H%M%S).XXXXXX")}
mkdir -p "$OUT_DIR"
RESULTS=$OUT_DIR/results.tsv

PIDS=()        # echo, nginx under valgrind: stopped by PID
GW_ROOT=""     # the gateway (valgrind on its master) now running: stopped with its whole tree
CLIENT_PID=""  # the client run in progress

# alive, tree_pids, pincmd, port_open: bench/ws-lib.sh
. bench/ws-lib.sh
# stop_pids SECONDS PID...: TERM them all at once (listed before any exits), KILL what is left
# after SECONDS; returns 1 if a KILL was needed (valgrind then writes no counts)
stop_pids() {
    local secs=$1 p left="" rc=0
    shift
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq $((secs * 10))); do
        left=""
        for p in "$@"; do alive "$p" && left="$left $p"; done
        [ -z "$left" ] && break
        sleep 0.1
    done
    if [ -n "$left" ]; then
        log "pids$left did not stop on TERM within $secs s, sending KILL"
        for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
        rc=1
    fi
    for p in "$@"; do wait "$p" 2>/dev/null || true; done
    return $rc
}
# stop_gw MASTER: SIGTERM to the master alone, which stops its worker and exits when it is gone:
# always the same exit path (a TERM sent to every process at once races with the master's, and the
# worker's exit work, e.g. OpenSSL's and Lua's clean-up, then differs from run to run by millions of
# instructions); what is left after 60 s gets TERM, then KILL (returns 1: counts lost)
stop_gw() {
    local pids p left=""
    pids=$(tree_pids "$1")
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 600); do
        left=""
        for p in $pids; do alive "$p" && left="$left $p"; done
        [ -z "$left" ] && break
        sleep 0.1
    done
    wait "$1" 2>/dev/null || true
    [ -z "$left" ] && return 0
    log "gateway pids$left still there 60 s after the master's SIGTERM"
    # shellcheck disable=SC2086
    stop_pids 30 $left
    return 1
}
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    [ -n "$CLIENT_PID" ] && stop_pids 5 "$CLIENT_PID"
    # shellcheck disable=SC2046
    [ -n "$GW_ROOT" ] && stop_pids 30 $(tree_pids "$GW_ROOT")
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && stop_pids 30 "$p"; done
    if [ "${KEEP_RUNDIR:-0}" = 1 ]; then log "run dir kept: $RUN"; else rm -rf "$RUN"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_port() { # port pid seconds
    local _
    for _ in $(seq $(($3 * 10))); do
        port_open "$1" && return 0
        alive "$2" || return 1
        sleep 0.1
    done
    return 1
}
for p in $ECHO_PORT $NGINX_PORT $GW_PORT $GWP_PORT $GWS_PORT; do
    port_open "$p" && die "port $p already in use on 127.0.0.1 (set BASE_PORT)"
done

# ---------------------------------------------------------------- tools, upstream
BIN=$RUN/bin
for t in ws-echo ws-bench; do
    gcc -O2 -Wall -Wextra -Werror -o "$BIN/$t" "bench/$t.c" -lcrypto || die "cannot build bench/$t.c"
done
BINOPT=()
[ "$BINARY" = 1 ] && BINOPT=(-b)

pincmd "$CLIENT_CPU"
"${PINCMD[@]}" "$BIN/ws-echo" "127.0.0.1:$ECHO_PORT" > "$OUT_DIR/ws-echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
wait_port "$ECHO_PORT" "$ECHO_PID" 10 || die "ws-echo did not start (see $OUT_DIR/ws-echo.log)"
for s in $SIZES; do
    timeout -k 5 40 "$BIN/ws-bench" -c 2 -w 1 -n 5 -s "$s" "${BINOPT[@]}" "127.0.0.1:$ECHO_PORT/echo" > /dev/null 2>&1 \
        || die "ws-echo does not echo $s-byte messages"
    case " $CASES " in *" gw-select"*)
        timeout -k 5 40 "$BIN/ws-bench" -c 2 -w 1 -n 5 -s "$s" "${BINOPT[@]}" -j action=echo "127.0.0.1:$ECHO_PORT/echo" > /dev/null 2>&1 \
            || die "ws-echo does not echo $s-byte JSON messages (ws-bench -j action=echo)" ;;
    esac
done

# ---------------------------------------------------------------- configs
# nginx: ws-bench.sh's relay, single process (master_process off) for valgrind
nginx_conf() { # file
    local buf=""
    [ -n "$NGINX_BUFFER" ] && buf="
            proxy_buffer_size $NGINX_BUFFER;
            proxy_buffers 4 $NGINX_BUFFER;
            proxy_busy_buffers_size $NGINX_BUFFER;"
    cat > "$1" <<EOF
# bench/ws-icount.sh: nginx as a plain WebSocket relay (bench/ws-bench.sh's), one process for valgrind
worker_processes 1;
daemon off;
master_process off;
pid run/nginx.pid;
error_log logs/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    tcp_nodelay on;
    server_tokens off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    upstream echo { server 127.0.0.1:$ECHO_PORT; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;$buf
            proxy_send_timeout 1h;
        }
    }
}
EOF
}
# the gateway: ws-bench.sh's load config, one route per case; the policy budget and the watchdog
# are raised for valgrind (its first runs of Lua code, and a worker's start, are slow there)
gw_conf() { # file case port
    local ws=" websocket: true" pol=""
    [ "$2" = gw-policy ] && pol=", policies: [ws_pass]"
    [ "${2%-miss}" = gw-select ] && ws="
      websocket: { selection: action, actions: { echo: { policies: [ws_pass] } } }"
    cat > "$1" <<EOF
# bench/ws-icount.sh: $2
listeners:
  - { name: ws, address: "127.0.0.1:$3" }
workers: 1
control: { socket: "$RUN/run/gw-$2.sock" }
timeouts: { watchdog: 120s }
upstreams:
  echo: { targets: ["127.0.0.1:$ECHO_PORT"], retries: 0 }
policies: { dir: bench/policies, budget: 10s }
routes:
  - { name: ws, listeners: [ws], match: { path: / }, upstream: echo,$ws$pol }
access_log: off
error_log: { path: "$OUT_DIR/gateway-$2.error.log", level: warn }
EOF
}
nginx_conf "$RUN/conf/nginx.conf"
nginx -t -q -p "$RUN/" -c conf/nginx.conf -e logs/nginx-error.log || die "nginx config invalid"
cp "$RUN/conf/nginx.conf" "$OUT_DIR/"
for c in gw gw-policy gw-select gw-select-miss; do
    case " $CASES " in *" $c "*) ;; *) continue ;; esac
    port=$GW_PORT
    [ "$c" = gw-policy ] && port=$GWP_PORT
    [ "${c%-miss}" = gw-select ] && port=$GWS_PORT
    gw_conf "$RUN/conf/$c.yaml" "$c" "$port"
    cp "$RUN/conf/$c.yaml" "$OUT_DIR/"
    "$GW_BIN" check -c "$RUN/conf/$c.yaml" > "$OUT_DIR/gateway-$c.check.log" 2>&1 \
        || { sed 's/^/    /' "$OUT_DIR/gateway-$c.check.log" >&2; die "$GW_BIN refused $OUT_DIR/$c.yaml"; }
done

# ---------------------------------------------------------------- one run
# measure CASE SIZE COUNT -> IR (summed over the server's processes), MSGS (round trips), IRS
# (per-process Ir, "pid:Ir ..."); runs in this shell so the EXIT trap covers everything it starts
measure() {
    local name=$1 size=$2 n=$3 tag="$1-$2-$3" port pid rc=0 out f files=0
    local vg=(valgrind --tool=cachegrind --cache-sim=no --branch-sim=no --vgdb=no)
    pincmd "$VG_CPU"
    case $name in
        nginx)
            port=$NGINX_PORT
            "${PINCMD[@]}" "${vg[@]}" --log-file="$OUT_DIR/vg-$tag.log" \
                --cachegrind-out-file="$RUN/cg/$tag.%p.out" \
                nginx -p "$RUN/" -c conf/nginx.conf -e logs/nginx-error.log \
                < /dev/null > "$OUT_DIR/nginx-$tag.out" 2>&1 &
            pid=$!
            PIDS+=("$pid") ;;
        gw|gw-policy|gw-select|gw-select-miss)
            port=$GW_PORT
            [ "$name" = gw-policy ] && port=$GWP_PORT
            [ "${name%-miss}" = gw-select ] && port=$GWS_PORT
            # --trace-children: also any exec (forked workers are always followed); one file per
            # process (%p). --smc-check=all-non-file: LuaJIT writes machine code at run time.
            "${PINCMD[@]}" "${vg[@]}" --trace-children=yes --smc-check=all-non-file \
                --log-file="$OUT_DIR/vg-$tag.%p.log" --cachegrind-out-file="$RUN/cg/$tag.%p.out" \
                "$GW_BIN" -c "$RUN/conf/$name.yaml" < /dev/null > "$OUT_DIR/gateway-$tag.out" 2>&1 &
            pid=$!
            GW_ROOT=$pid ;;
    esac
    local t0=$SECONDS
    wait_port "$port" "$pid" "$GW_START_TIMEOUT" \
        || die "$name did not open port $port within ${GW_START_TIMEOUT}s under valgrind (or exited); see $OUT_DIR/*$tag*"
    if [ "$name" != nginx ]; then # wait for the worker (the master may listen first)
        for _ in $(seq 300); do
            [ "$(tree_pids "$pid" | wc -w)" -ge 2 ] && break
            sleep 0.1
        done
    fi
    log "$tag: server up after $((SECONDS - t0)) s (pids $(tree_pids "$pid")), sending $n x $CONNS messages of $size B"
    out="$OUT_DIR/client-$tag.txt"
    local copt=("${BINOPT[@]}")
    [ -n "${SELECT_JSON[$name]:-}" ] && copt+=(-j "${SELECT_JSON[$name]}")
    pincmd "$CLIENT_CPU"
    timeout -k 5 "$RUN_TIMEOUT" "${PINCMD[@]}" "$BIN/ws-bench" -n "$n" -c "$CONNS" -w "$INFLIGHT" -s "$size" \
        -T "$RUN_TIMEOUT" "${copt[@]}" "127.0.0.1:$port/echo" > "$out" 2>&1 &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    [ "$rc" = 0 ] || { sed 's/^/    /' "$out" >&2; die "$tag: the client failed (exit $rc)"; }
    MSGS=$(sed -n 's/^RESULT .* messages=\([0-9]*\) .*/\1/p' "$out")
    [ "$MSGS" = $((n * CONNS)) ] || die "$tag: $MSGS round trips completed, expected $((n * CONNS)) (see $out)"
    log "$tag: $MSGS round trips in $(sed -n 's/^RESULT .* duration_s=\([0-9.]*\) .*/\1/p' "$out") s"
    sleep 1 # let the server finish closing the connections (the same work in both runs)
    if [ "$name" = nginx ]; then
        stop_pids 60 "$pid" || die "$tag: nginx had to be killed: no counts"
    else
        alive "$pid" || die "$tag: the gateway exited during the run (see $OUT_DIR/gateway-$tag.out)"
        stop_gw "$pid" || die "$tag: the gateway had to be killed: counts lost"
        GW_ROOT=""
    fi
    IR=0 IRS=""
    for f in "$RUN/cg/$tag".*.out; do
        [ -e "$f" ] || continue
        local ir p
        ir=$(awk '/^summary:/ { print $2 }' "$f")
        [ -n "$ir" ] || die "$tag: no summary in $f"
        p=${f%.out}; p=${p##*.}
        IR=$(awk -v a="$IR" -v b="$ir" 'BEGIN { printf "%.0f", a + b }')
        IRS="$IRS${IRS:+ }$p:$ir"
        files=$((files + 1))
    done
    [ "$files" -ge 1 ] || die "$tag: no cachegrind output (see $OUT_DIR/vg-$tag*.log)"
    [ "$name" = nginx ] || [ "$files" -ge 2 ] || die "$tag: $files cachegrind file(s), expected master + worker"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$size" "$n" "$MSGS" "$IR" "$files" "$IRS" >> "$RESULTS"
    # one profile of the whole tree, for the per-function difference of the two runs (top_functions)
    if [ "$TOP" -gt 0 ]; then
        cg_merge -o "$RUN/cg/$tag.merged" "$RUN/cg/$tag".*.out 2>/dev/null \
            || { log "WARNING: cg_merge failed for $tag (no per-function listing)"; rm -f "$RUN/cg/$tag.merged"; }
    fi
}
# top_functions CASE SIZE: OUT_DIR/top-CASE-SIZE.txt, the TOP functions with the most instructions
# in run 2 minus run 1 (cg_diff), i.e. spent on the extra messages, and per round trip
top_functions() {
    local a="$RUN/cg/$1-$2-$D1.merged" b="$RUN/cg/$1-$2-$D2.merged" f="$OUT_DIR/top-$1-$2.txt"
    [ "$TOP" -gt 0 ] && [ -s "$a" ] && [ -s "$b" ] || return 0
    cg_diff "$a" "$b" > "$RUN/cg/$1-$2.diff" 2>/dev/null || { log "WARNING: cg_diff failed for $1 $2"; return 0; }
    {
        echo "# $1, $2-byte messages: instructions of run 2 ($D2 per connection) minus run 1 ($D1), over $3 extra round trips"
        printf '%14s %10s  %s\n' "Ir" "per trip" "file:function"
        cg_annotate --auto=no "$RUN/cg/$1-$2.diff" 2>/dev/null | awk -v n="$3" -v top="$TOP" '
            /file:function/ { on = 1; getline; next }
            on && NF >= 2 && $1 ~ /^-?[0-9,]+$/ {
                v = $1; gsub(",", "", v); fn = $NF
                printf "%14s %10.1f  %s\n", $1, v / n, fn
                if (++k >= top) exit
            }'
    } > "$f"
}

# ---------------------------------------------------------------- runs
{
    echo "# bench/ws-icount.sh $(date -u +%Y-%m-%dT%H:%M:%SZ); $(uname -sr); $(valgrind --version); $(nginx -v 2>&1)"
    echo "# gateway $GW_BIN git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$([ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ' (modified)'), built $(date -u -r "$GW_BIN" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo '?')"
    echo "# conns=$CONNS inflight=$INFLIGHT d1=$D1 d2=$D2 binary=$BINARY pin=$PIN client_cpu=$CLIENT_CPU vg_cpu=$VG_CPU"
    printf 'case\tsize\tcount_per_conn\tround_trips\tIr_total\tprocesses\tIr_per_process(pid:Ir)\n'
} > "$RESULTS"
log "tools in $BIN, echo up (pid $ECHO_PID), output in $OUT_DIR"
declare -A IPM M1 M2
T_START=$SECONDS
for s in $SIZES; do
    for c in $CASES; do
        measure "$c" "$s" "$D1"; i1=$IR; m1=$MSGS
        measure "$c" "$s" "$D2"; i2=$IR; m2=$MSGS
        IPM[$c:$s]=$(awk -v i1="$i1" -v i2="$i2" -v m1="$m1" -v m2="$m2" 'BEGIN { printf "%.0f", (i2 - i1) / (m2 - m1) }')
        M1[$c:$s]=$m1 M2[$c:$s]=$m2
        log "$c $s B: ${IPM[$c:$s]} instructions per round trip (Ir $i1 -> $i2)"
        top_functions "$c" "$s" $((m2 - m1))
    done
done

sz() { if [ $(($1 % 1024)) = 0 ] && [ "$1" -ge 1024 ]; then echo "$(($1 / 1024)) KiB"; else echo "$1 B"; fi; }
{
    echo "## User-space instructions per WebSocket message round trip (cachegrind; $CONNS connections x $INFLIGHT in flight, $D1 then $D2 messages per connection; kernel not counted)"
    echo
    echo "| case | size | instructions / round trip | vs nginx | round trips run 1 / run 2 |"
    echo "|---|---:|---:|---:|---:|"
    for s in $SIZES; do
        for c in $CASES; do
            vs="–"
            if [ "$c" != nginx ] && [ -n "${IPM[nginx:$s]:-}" ]; then
                vs=$(awk -v g="${IPM[$c:$s]}" -v a="${IPM[nginx:$s]}" 'BEGIN { printf "%.2fx", g / a }')
            fi
            printf '| %s | %s | %s | %s | %s / %s |\n' "$c" "$(sz "$s")" "${IPM[$c:$s]}" "$vs" "${M1[$c:$s]}" "${M2[$c:$s]}"
        done
    done
    echo
    echo "A round trip: one message relayed client -> upstream and its echo relayed back. vs nginx = case / nginx (lower is better)."
    sep=1
    for s in $SIZES; do
        if [ -z "${IPM[gw-select:$s]:-}" ] || [ -z "${IPM[gw:$s]:-}" ]; then continue; fi
        [ "$sep" = 1 ] && echo
        sep=0
        awk -v size="$(sz "$s")" -v x="${IPM[gw-select:$s]}" -v g="${IPM[gw:$s]}" \
            -v p="${IPM[gw-policy:$s]:-}" -v m="${IPM[gw-select-miss:$s]:-}" 'BEGIN {
            line = sprintf("- gw-select %s: %+d vs gw (%.2fx)", size, x - g, x / g)
            if (p != "") line = line sprintf(" | %+d vs gw-policy (%.2fx)", x - p, x / p)
            if (m != "") line = line sprintf(" | %+d vs gw-select-miss (the action chain'"'"'s Lua call)", x - m)
            if (m != "" && p != "") line = line sprintf(" | JSON parse ~ %d", m - p + 2 * (x - m))
            print line
            if (m != "") printf "- gw-select-miss %s: %+d vs gw (%.2fx)\n", size, m - g, m / g }'
    done
    select_note ""
} | tee "$OUT_DIR/table.md"
log "done in $((SECONDS - T_START)) s; raw results: $OUT_DIR"
