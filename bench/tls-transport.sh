#!/usr/bin/env bash
# bench/tls-transport.sh: our TLS transport (gateway/io.c + gateway/tls.c) against libevent's
# OpenSSL bufferevents on the same SSL_CTX, server side only (see bench/tls-transport.c).
#
# Builds build/tls-transport, then for each BODY runs REPS alternating repetitions (ours,
# bufferevent, ours, ...) of WARM + N keep-alive exchanges over CONNS loopback connections, and
# prints the medians: server CPU µs per exchange (user + system, getrusage; each column's own
# median), exchanges/s, server page faults per exchange, TLS records per response (counted by
# the client) and the size of the first, and ours/bufferevent ratios. Syscalls per
# exchange come from one extra run per implementation and body with -s (perf_event_open on the
# syscall tracepoints, which cost CPU themselves, hence not in the timed runs; n/a where the
# kernel refuses); the counts are the same from run to run.
# Knobs (environment): N (20000) WARM (1000) CONNS (1) REPS (5) BODIES ("2 16384") SC_N (5000,
# exchanges of the -s runs) KEEP=1 (raw results kept). Nothing is pinned; on a shared machine
# read the min–max column too.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-20000} WARM=${WARM:-1000} CONNS=${CONNS:-1} REPS=${REPS:-5} BODIES=${BODIES:-"2 16384"}
SC_N=${SC_N:-5000}
bin=build/tls-transport

mkdir -p build
# shellcheck disable=SC2046 # pkg-config's output is a list of words
cc -O2 -g -D_GNU_SOURCE -std=gnu11 -Wall -Wextra -o "$bin" bench/tls-transport.c \
    gateway/io.c gateway/tls.c gateway/util.c gateway/log.c gateway/config.c \
    gateway/config_tls.c gateway/addr.c gateway/route.c gateway/yamltree.c \
    $(pkg-config --cflags --libs libevent libevent_openssl openssl yaml-0.1)

raw=$(mktemp /tmp/tls-transport.XXXXXX)
rawsc=$(mktemp /tmp/tls-transport-sc.XXXXXX)
err=$(mktemp /tmp/tls-transport-err.XXXXXX)
cleanup() {
    rm -f "$err"
    if [ "${KEEP:-0}" = 1 ]; then
        echo "raw results kept in $raw and $rawsc" >&2
    else
        rm -f "$raw" "$rawsc"
    fi
}
trap cleanup EXIT

echo "# tls-transport: N=$N exchanges after $WARM warm-up, CONNS=$CONNS, REPS=$REPS," \
     "nproc=$(nproc), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
run() { # run OUTPUT ARGS...: one run of the program, its RESULT line appended to OUTPUT
    local out=$1
    shift
    if ! "$bin" "$@" >>"$out" 2>"$err"; then
        echo "run failed: $*" >&2
        cat "$err" >&2
        exit 1
    fi
    if [ -s "$err" ]; then sed "s/^/[$*] /" "$err" >&2; fi
}
start=$(date +%s)
for body in $BODIES; do
    for ((rep = 1; rep <= REPS; rep++)); do
        for impl in ours bufferevent; do
            run "$raw" "$impl" "$body" "$N" "$CONNS" "$WARM"
        done
    done
    for impl in ours bufferevent; do
        run "$rawsc" -s "$impl" "$body" "$SC_N" "$CONNS" "$WARM"
    done
done
echo "# $(( $(date +%s) - start )) s, load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# RESULT lines -> one row per (implementation, body): medians over the repetitions
awk '
function median(s,    a, n, i, j, t) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++)
        for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function lo(s,    a, n, i, m) { n = split(s, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 < m + 0) m = a[i]; return m }
function hi(s,    a, n, i, m) { n = split(s, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 > m + 0) m = a[i]; return m }
/^RESULT / {
    delete f
    for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    k = f["impl"] SUBSEP f["body"]
    if (FILENAME == scfile) {
        nsc[k] = f["syscalls"]
        d = ""
        nn = split("read readv write writev epoll_wait epoll_pwait epoll_ctl ioctl other", names, " ")
        for (j = 1; j <= nn; j++)
            if (("sc_" names[j]) in f && f["sc_" names[j]] + 0 > 0.01)
                d = d (d ? " " : "") names[j] "=" f["sc_" names[j]]
        detail[k] = d
        next
    }
    if (!(k in cpu)) { order[++nk] = k }
    cpu[k] = cpu[k] " " f["cpu_us"]; usr[k] = usr[k] " " f["usr_us"]; sys[k] = sys[k] " " f["sys_us"]
    xps[k] = xps[k] " " f["xps"]; flt[k] = flt[k] " " f["minflt"]; rec[k] = rec[k] " " f["records"]; first[k] = first[k] " " f["first_record"]
}
END {
    printf "| implementation | body | server CPU µs/exchange (median) | usr | sys | CPU min–max | exchanges/s (median) | page faults/exchange | records/response | 1st record bytes | syscalls/exchange (-s run) | syscalls by type |\n"
    printf "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, ib, SUBSEP)
        mc[k] = median(cpu[k]); mx[k] = median(xps[k])
        s = (k in nsc) && nsc[k] != "n/a" ? sprintf("%.2f", nsc[k]) : "n/a"
        printf "| %s | %s | %.2f | %.2f | %.2f | %.2f–%.2f | %.0f | %.2f | %.2f | %.0f | %s | %s |\n",
            ib[1], ib[2], mc[k], median(usr[k]), median(sys[k]), lo(cpu[k]), hi(cpu[k]), mx[k],
            median(flt[k]), median(rec[k]), median(first[k]), s, detail[k]
        bodies[ib[2]] = 1
        if (s != "n/a") msc[k] = s
    }
    printf "\n| body | CPU/exchange ours/bufferevent | exchanges/s ours/bufferevent | syscalls/exchange ours/bufferevent |\n|---:|---:|---:|---:|\n"
    for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, ib, SUBSEP); b = ib[2]
        if (b in done) continue
        done[b] = 1
        o = "ours" SUBSEP b; v = "bufferevent" SUBSEP b
        if (!(o in mc) || !(v in mc)) continue
        r = (o in msc && v in msc && msc[v] > 0) ? sprintf("%.2f", msc[o] / msc[v]) : "n/a"
        printf "| %s | %.2f | %.2f | %s |\n", b, mc[o] / mc[v], mx[o] / mx[v], r
    }
}' scfile="$rawsc" "$raw" "$rawsc"
