#!/usr/bin/env bash
# bench/io-path/run.sh: measures proxy-bev (bufferevents) against proxy-ev (plain events,
# immediate writes, EV_WRITE only on EAGAIN) behind the same upstream and load; prints markdown.
#
#   upstream: nginx (temp config, 1 worker, keep-alive, fixed body) or upstream.py if no nginx
#   proxies:  pinned to CPU $PROXY_CPU; wrk (and nginx) pinned to CPU $LOAD_CPU; loopback only
#   1. warm-up, then $ROUNDS rounds alternating the proxies (ABBA order), wrk -t1 -c$CONNS
#      -d${DUR}s each: req/s, latency, proxy CPU from /proc/<pid>/stat utime+stime per request
#   2. strace -c -f -p over a ${STRACE_DUR}s wrk run: syscalls per request by type
#   3. (if valgrind) callgrind, collection toggled on for a ${CG_DUR}s wrk run only:
#      user-space instructions per request (perf has no instructions counter on this VM)
# Knobs (environment): DUR ROUNDS CONNS WARM STRACE_DUR CG_DUR CG=0|1 PROXY_CPU LOAD_CPU KEEP=1 (logs)
#   NICE=-10: run upstream, proxies and wrk at that nice level (a shared, busy machine)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export PATH="$PATH:/usr/sbin:/sbin"

DUR=${DUR:-10} ROUNDS=${ROUNDS:-3} CONNS=${CONNS:-50} WARM=${WARM:-3}
STRACE_DUR=${STRACE_DUR:-3} CG_DUR=${CG_DUR:-5} CG=${CG:-1}
PROXY_CPU=${PROXY_CPU:-1} LOAD_CPU=${LOAD_CPU:-0} NICE=${NICE:-0}
VARIANTS=(bev ev)
BODY='{"ok":true,"service":"io-path-bench","payload":"0123456789abcdef0123456789abcdef"}'

log() { echo "[run.sh] $*" >&2; }

work=$(mktemp -d /tmp/io-path-bench.XXXXXX)
chmod 755 "$work"
pids=() # every background process started here, stopped by PID on exit

reap() { # reap PID: wait up to 10 s for it to exit after a signal, then SIGKILL it
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$1" 2>/dev/null && kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null || true
}
stop() { # stop PID [SIGNAL]: signal it, reap it, forget it
    local p=$1 sig=${2:-TERM} keep=() q
    kill -s "$sig" "$p" 2>/dev/null || true
    reap "$p"
    for q in "${pids[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
    pids=("${keep[@]}")
}
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do reap "$p"; done
    if [ "${KEEP:-0}" = 1 ]; then log "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_cmd() { # wait_cmd NAME SECONDS: another process may still be installing it
    local i
    for ((i = 0; i < $2; i++)); do
        command -v "$1" >/dev/null 2>&1 && return 0
        [ "$i" = 0 ] && log "waiting up to $2 s for '$1' to be installed"
        sleep 1
    done
    return 1
}
wait_port() { # wait_port PORT PID
    local i
    for ((i = 0; i < 600; i++)); do
        kill -0 "$2" 2>/dev/null || { log "process $2 died"; return 1; }
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    log "port $1 never opened"
    return 1
}
cpubusy() { # cpubusy N: "busy total" jiffies of CPU N from /proc/stat
    awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}
ticks() { cut -d')' -f2 "/proc/$1/stat" | awk '{print $12, $13}'; } # utime stime (clock ticks)
HZ=$(getconf CLK_TCK)

wait_cmd wrk 240 || { log "wrk is not installed"; exit 1; }
make -s all

read -r UP_PORT PORT_bev PORT_ev < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

# ---- upstream
if wait_cmd nginx 240; then
    UPSTREAM="nginx $(nginx -v 2>&1 | sed 's|.*/||')"
    mkdir -p "$work/nginx"
    cat > "$work/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { default_type application/json; return 200 '$BODY'; }
    }
}
EOF
    nice -n "$NICE" taskset -c "$LOAD_CPU" nginx -p "$work/nginx" -e "$work/nginx/error.log" \
        -c "$work/nginx/nginx.conf" &
else
    UPSTREAM="upstream.py (python3, no nginx)"
    log "no nginx: using upstream.py"
    nice -n "$NICE" taskset -c "$LOAD_CPU" python3 "$here/upstream.py" "$UP_PORT" "$BODY" &
fi
UP_PID=$!
pids+=("$UP_PID")
wait_port "$UP_PORT" "$UP_PID"
log "upstream: $UPSTREAM on 127.0.0.1:$UP_PORT"

# ---- proxies (kept running through the rounds; the idle one costs nothing)
declare -A PID
for v in "${VARIANTS[@]}"; do
    port_var=PORT_$v
    nice -n "$NICE" taskset -c "$PROXY_CPU" "./proxy-$v" "${!port_var}" "$UP_PORT" 2>"$work/proxy-$v.log" &
    PID[$v]=$!
    pids+=("${PID[$v]}")
    wait_port "${!port_var}" "${PID[$v]}"
done

want=$(curl -s "http://127.0.0.1:$UP_PORT/")
for v in "${VARIANTS[@]}"; do
    port_var=PORT_$v
    got=$(curl -s "http://127.0.0.1:${!port_var}/a" "http://127.0.0.1:${!port_var}/b")
    [ "$got" = "$want$want" ] || { log "proxy-$v relays wrong bytes: '$got'"; exit 1; }
done
log "smoke test ok (both proxies relay the upstream body, keep-alive)"

run_wrk() { # run_wrk PORT SECONDS OUTFILE
    nice -n "$NICE" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$2"s --latency "http://127.0.0.1:$1/" >"$3"
    if grep -Eq 'Socket errors|Non-2xx' "$3"; then log "errors in $3:"; grep -E 'Socket errors|Non-2xx' "$3" >&2; fi
}
wrk_reqs() { awk '/requests in/ {print $1}' "$1"; }
wrk_rps() { awk '/^Requests\/sec/ {print $2}' "$1"; }
wrk_lat() { awk -v p="$2" '$1 == p {print $2}' "$1"; } # 50% 99%
to_us() { # wrk latency (e.g. 612.00us, 1.20ms) to microseconds
    awk -v x="$1" 'BEGIN { v = x + 0; if (x ~ /us$/) m = 1; else if (x ~ /ms$/) m = 1000;
        else if (x ~ /s$/) m = 1000000; else m = 1; printf "%.0f", v * m }'
}

for v in "${VARIANTS[@]}"; do
    port_var=PORT_$v
    log "warm-up proxy-$v (${WARM}s)"
    run_wrk "${!port_var}" "$WARM" "$work/warm-$v.txt"
done

# ---- 1. throughput and CPU, alternating
declare -A R # R[v,round,key]
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order=(bev ev); else order=(ev bev); fi
    for v in "${order[@]}"; do
        port_var=PORT_$v
        out="$work/wrk-$v-$r.txt"
        log "round $r: proxy-$v, wrk -t1 -c$CONNS -d${DUR}s"
        read -r u0 s0 < <(ticks "${PID[$v]}")
        read -r lb0 lt0 < <(cpubusy "$LOAD_CPU")
        read -r pb0 pt0 < <(cpubusy "$PROXY_CPU")
        run_wrk "${!port_var}" "$DUR" "$out"
        read -r pb1 pt1 < <(cpubusy "$PROXY_CPU")
        read -r lb1 lt1 < <(cpubusy "$LOAD_CPU")
        read -r u1 s1 < <(ticks "${PID[$v]}")
        R[$v,$r,load]=$(awk -v b=$((lb1 - lb0)) -v t=$((lt1 - lt0)) 'BEGIN {printf "%.0f", b / t * 100}')
        n=$(wrk_reqs "$out")
        R[$v,$r,rps]=$(wrk_rps "$out")
        R[$v,$r,reqs]=$n
        R[$v,$r,usr]=$(awk -v d=$((u1 - u0)) -v n="$n" -v hz="$HZ" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
        R[$v,$r,sys]=$(awk -v d=$((s1 - s0)) -v n="$n" -v hz="$HZ" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
        R[$v,$r,cpu]=$(awk -v d=$((u1 - u0 + s1 - s0)) -v n="$n" -v hz="$HZ" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
        R[$v,$r,util]=$(awk -v d=$((u1 - u0 + s1 - s0)) -v t="$DUR" -v hz="$HZ" 'BEGIN {printf "%.0f", d / hz / t * 100}')
        R[$v,$r,other]=$(awk -v b=$((pb1 - pb0)) -v t=$((pt1 - pt0)) -v u="${R[$v,$r,util]}" \
            'BEGIN {x = b / t * 100 - u; printf "%.0f", x < 0 ? 0 : x}')
        R[$v,$r,p50]=$(to_us "$(wrk_lat "$out" 50%)")
        R[$v,$r,p99]=$(to_us "$(wrk_lat "$out" 99%)")
    done
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
med() { # med VARIANT KEY
    local vals=() r
    for ((r = 1; r <= ROUNDS; r++)); do vals+=("${R[$1,$r,$2]}"); done
    median "${vals[@]}"
}

# ---- 2. syscalls per request
declare -A SC # SC[v,syscall] per request
declare -A SCNAMES
for v in "${VARIANTS[@]}"; do
    port_var=PORT_$v
    log "strace -c -f -p ${PID[$v]} (proxy-$v) over wrk -d${STRACE_DUR}s"
    strace -c -f -p "${PID[$v]}" -o "$work/strace-$v.txt" 2>"$work/strace-$v.log" &
    spid=$!
    pids+=("$spid")
    sleep 1 # attached
    run_wrk "${!port_var}" "$STRACE_DUR" "$work/wrk-strace-$v.txt"
    stop "$spid" INT
    n=$(wrk_reqs "$work/wrk-strace-$v.txt")
    SC[$v,reqs]=$n
    while read -r name calls; do
        SC[$v,$name]=$(awk -v c="$calls" -v n="$n" 'BEGIN {printf "%.3f", c / n}')
        SCNAMES[$name]=1
    done < <(awk '$1 ~ /^[0-9.]+$/ && $NF != "total" {print $NF, $4}' "$work/strace-$v.txt")
done
sc() { echo "${SC[$1,$2]:-0}"; }
scsum() { local v=$1 t=0 x; shift; for x in "$@"; do t=$(awk -v a="$t" -v b="$(sc "$v" "$x")" 'BEGIN {print a + b}'); done; printf '%.3f' "$t"; }

# ---- 3. instructions per request (user space, callgrind)
declare -A IR
if [ "$CG" = 1 ] && command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; then
    for v in "${VARIANTS[@]}"; do
        port_var=PORT_$v
        stop "${PID[$v]}" TERM # the port is reused under valgrind
        log "callgrind proxy-$v over wrk -d${CG_DUR}s"
        nice -n "$NICE" taskset -c "$PROXY_CPU" valgrind --tool=callgrind --instr-atstart=no \
            --callgrind-out-file="$work/cg-$v.out" "./proxy-$v" "${!port_var}" "$UP_PORT" \
            2>"$work/cg-$v.log" &
        cpid=$!
        pids+=("$cpid")
        wait_port "${!port_var}" "$cpid"
        run_wrk "${!port_var}" 2 "$work/wrk-cgwarm-$v.txt"
        callgrind_control -i on "$cpid" >/dev/null 2>&1
        run_wrk "${!port_var}" "$CG_DUR" "$work/wrk-cg-$v.txt"
        callgrind_control -i off "$cpid" >/dev/null 2>&1
        stop "$cpid" TERM
        ir=$(awk '/^(summary|totals):/ {print $2}' "$work/cg-$v.out" | tail -1)
        n=$(wrk_reqs "$work/wrk-cg-$v.txt")
        IR[$v]=$(awk -v i="$ir" -v n="$n" 'BEGIN {printf "%.0f", i / n}')
        IR[$v,reqs]=$n
    done
fi

# ---- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a + 0 == 0) print "-"; else printf "%.2f", b / a}'; }
row() { # row LABEL BEV EV
    printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"
}
echo "## io-path: proxy-bev (bufferevents) vs proxy-ev (events + immediate writes)"
echo
echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), kernel $(uname -r)"
echo "- libevent $(pkg-config --modversion libevent 2>/dev/null || echo '?'), backend: $(sed -n 's/.*libevent [^ ]* (\(.*\))$/\1/p' "$work/proxy-bev.log"); upstream: $UPSTREAM; body ${#BODY} bytes"
echo "- load: wrk -t1 -c$CONNS -d${DUR}s on CPU $LOAD_CPU (with the upstream); each proxy on CPU $PROXY_CPU; $ROUNDS rounds, ABBA order; nice $NICE"
echo
echo "### Per round"
echo
echo "| round | proxy | req/s | CPU µs/req (usr+sys) | usr | sys | proxy CPU % | other load on CPU $PROXY_CPU % | CPU $LOAD_CPU busy % | p50 µs | p99 µs |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for ((r = 1; r <= ROUNDS; r++)); do
    for v in "${VARIANTS[@]}"; do
        printf '| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$r" "proxy-$v" "${R[$v,$r,rps]}" \
            "${R[$v,$r,cpu]}" "${R[$v,$r,usr]}" "${R[$v,$r,sys]}" "${R[$v,$r,util]}" "${R[$v,$r,other]}" "${R[$v,$r,load]}" \
            "${R[$v,$r,p50]}" "${R[$v,$r,p99]}"
    done
done
echo
echo "### Summary (medians of the rounds; syscalls from strace over ${STRACE_DUR}s: ${SC[bev,reqs]} / ${SC[ev,reqs]} requests)"
echo
echo "| metric | proxy-bev | proxy-ev | ev / bev |"
echo "|---|---:|---:|---:|"
for k in rps cpu usr sys util load p50 p99; do
    case $k in
    rps) l="req/s" ;; cpu) l="proxy CPU µs/request (utime+stime)" ;; usr) l="… of which user µs" ;;
    sys) l="… of which system µs" ;; util) l="proxy CPU utilisation %" ;; load) l="CPU $LOAD_CPU (wrk + upstream) busy %" ;;
    p50) l="latency p50 µs" ;; p99) l="latency p99 µs" ;;
    esac
    row "$l" "$(med bev $k)" "$(med ev $k)"
done
row "syscalls/request, total" "$(scsum bev "${!SCNAMES[@]}")" "$(scsum ev "${!SCNAMES[@]}")"
row "epoll_wait/request" "$(sc bev epoll_wait)" "$(sc ev epoll_wait)"
row "epoll_ctl/request" "$(sc bev epoll_ctl)" "$(sc ev epoll_ctl)"
row "read+readv/request" "$(scsum bev read readv)" "$(scsum ev read readv)"
row "write+writev/request" "$(scsum bev write writev)" "$(scsum ev write writev)"
others=()
for s in $(printf '%s\n' "${!SCNAMES[@]}" | sort); do
    case $s in epoll_wait | epoll_ctl | read | readv | write | writev) ;; *) others+=("$s") ;; esac
done
for s in "${others[@]}"; do row "$s/request" "$(sc bev "$s")" "$(sc ev "$s")"; done
if [ -n "${IR[bev]:-}" ]; then
    row "user-space instructions/request (callgrind)" "${IR[bev]}" "${IR[ev]}"
fi
echo
echo "### Syscall detail (strace -c, calls per request)"
for v in "${VARIANTS[@]}"; do
    echo
    echo "proxy-$v (${SC[$v,reqs]} requests):"
    echo '```'
    cat "$work/strace-$v.txt"
    echo '```'
done
