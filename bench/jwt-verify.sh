#!/usr/bin/env bash
# bench/jwt-verify.sh: what verifying a JWT costs per request.
#
#   bench/jwt-verify.sh          the micro-benchmark: CPU per verification, our verifier
#                                (gateway/jwt.c, keys parsed once) against Debian's libjwt 1.10 (PEM
#                                key parsed on every jwt_decode), and the verified-token cache of
#                                gateway/jwt_provider.c, for HS256, RS256 (RSA 2048), PS256, ES256
#                                (P-256) and EdDSA (Ed25519); bench/jwt-verify.c says what each
#                                column does
#   bench/jwt-verify.sh rig      the shared rig (../shared/bench/anchors.sh) with the JWT cases
#   bench/jwt-verify.sh icount   the same cases under ../shared/bench/icount.sh (instructions/request)
#
# Micro-benchmark: builds build/jwt-verify (cc -O2, against the gateway's sources), runs it and
# prints two markdown tables on stdout: median µs of CPU per verification (min–max of the runs),
# then the ratios. Progress (each figure with its N) goes to stderr. Knobs (environment): RUNS (5)
# runs per figure, MS (300) ms of CPU per run, OUT (a file that also receives the tables). Nothing
# is pinned; on a shared machine read the min–max too.
#
# rig / icount: the cases, all on one gateway started by bench/start-gw.sh with PGW_BENCH_JWT=1
# (ports PGW_PORT_POLICY + 10 ... + 13, i.e. BASE_PORT + 15 ... + 18), wrk sending
# `Authorization: Bearer <token>` with the token start-gw.sh minted (the same token on every
# request: with the cache, every request after the first is a cache hit):
#   gw-jwt-rs          jwt (RS256 key, provider cache on) + rate_limit, as gw-lua's chain
#   gw-jwt-es          the same with an ES256 key
#   gw-jwt-rs-nocache  RS256, provider `cache: 0`: every request verified
#   gw-jwt-es-nocache  ES256, `cache: 0`
# compared with gw-lua (key_auth + rate_limit, the same headers) measured in the same rounds. The
# shared rig knows a fixed list of cases and sends only its apikey header, so these modes run a
# temporary copy of it (../shared/bench, or $RIG) with the four cases and their sanity checks
# added (the copy is removed at the end; the shared files are not touched). CASES defaults to
# "gw-lua gw-jwt-rs gw-jwt-es gw-jwt-rs-nocache gw-jwt-es-nocache"; every knob of the rig (ROUNDS,
# DURATION, ...) passes through. OUT_DIR defaults to a new /tmp/jwt-rig.<stamp>.XXXXXX directory;
# after the rig's own table, one line per JWT case gives its ratio to gw-lua (also in
# OUT_DIR/jwt-ratios.md for `rig`).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-micro}

if [ "$mode" = rig ] || [ "$mode" = icount ]; then
    rig_src=$(cd "${RIG:-../shared/bench}" && pwd)
    tmp=$(mktemp -d /tmp/jwt-rig-copy.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    cp -r "$rig_src/anchors.sh" "$rig_src/icount.sh" "$rig_src/table.sh" "$rig_src/wrk-report.lua" \
        "$rig_src/conf" "$tmp/"
    chmod -R u+w "$tmp"
    /usr/bin/python3 - "$tmp" <<'PY'
import sys
d = sys.argv[1]
def patch(name, edits):
    p = f"{d}/{name}"
    s = open(p).read()
    for old, new in edits:
        if s.count(old) != 1:
            sys.exit(f"jwt-verify.sh: cannot add the JWT cases to {name}: {old.strip()[:60]!r} "
                     f"found {s.count(old)} times (the shared rig changed?)")
        s = s.replace(old, new)
    open(p, "w").write(s)

JWT_OFF = '''
# ---- added by bench/jwt-verify.sh: the JWT cases (bench/start-gw.sh, PGW_BENCH_JWT=1) ----
jwt_port() {   # case -> its port
    case $1 in
        gw-jwt-rs) echo $((GW_POLICY_PORT + 10)) ;;
        gw-jwt-es) echo $((GW_POLICY_PORT + 11)) ;;
        gw-jwt-rs-nocache) echo $((GW_POLICY_PORT + 12)) ;;
        gw-jwt-es-nocache) echo $((GW_POLICY_PORT + 13)) ;;
        *) die "unknown case $1" ;;
    esac
}
jwt_token() {   # case -> the token start-gw.sh minted for it
    case $1 in gw-jwt-rs*) cat "$RUN/gw/jwt-rs.token" ;; *) cat "$RUN/gw/jwt-es.token" ;; esac
}
'''

patch("anchors.sh", [
    ('\nlog "sanity checks passed"\n', JWT_OFF + '''check_jwt() {   # case: the JWT chain's behaviour on its port
    local base="$U:$(jwt_port "$1")" hdr hdrs rem
    hdr="Authorization: Bearer $(jwt_token "$1")"
    FAIL_HINT=" (gateway output: $GW_LOG)"
    expect "$1: no token -> 401" 401 "$(http -o /dev/null -w '%{http_code}' "$base/ok")"
    expect "$1: tampered token -> 401" 401 \\
        "$(http -o /dev/null -w '%{http_code}' -H "$(printf '%s' "$hdr" | sed 's/\\.\\(.\\)/.X\\1/')" "$base/ok")"
    expect "$1: token -> /ok body" ok "$(http -H "$hdr" "$base/ok")"
    expect "$1: X-Consumer (the token's sub) reaching the upstream" "$API_KEY" "$(http -H "$hdr" "$base/consumer")"
    expect "$1: 16k body with the token" 16384 "$(http -o /dev/null -w '%{size_download}' -H "$hdr" "$base/static/16k.bin")"
    hdrs=$(http -D - -o /dev/null -H "$hdr" "$base/ok")
    expect "$1: X-RateLimit-Limit response header" "$RATE_LIMIT" "$(printf '%s\\n' "$hdrs" | header_of x-ratelimit-limit)"
    rem=$(printf '%s\\n' "$hdrs" | header_of x-ratelimit-remaining)
    [[ $rem =~ ^[0-9]+$ ]] && [ "$rem" -lt "$RATE_LIMIT" ] \\
        || die "sanity check failed: $1: X-RateLimit-Remaining: expected a count below $RATE_LIMIT, got '$rem'$FAIL_HINT"
    expect "$1: keep-alive with the token (new connections for 2 requests)" "1 0" \\
        "$(http -o /dev/null -o /dev/null -w '%{num_connects}\\n' -H "$hdr" "$base/ok" "$base/ok" | paste -sd' ')"
    FAIL_HINT=""
}
for c in $CASES; do
    case $c in gw-jwt-*) check_jwt "$c" ;; esac
done
log "sanity checks passed"
'''),
    ('''        gw-lua)                  echo "$U:$GW_POLICY_PORT$path|tree:$GW_ROOT|apikey: $API_KEY" ;;\n''',
     '''        gw-lua)                  echo "$U:$GW_POLICY_PORT$path|tree:$GW_ROOT|apikey: $API_KEY" ;;
        gw-jwt-*)                echo "$U:$(jwt_port "$name")$path|tree:$GW_ROOT|Authorization: Bearer $(jwt_token "$name")" ;;\n'''),
])

patch("icount.sh", [
    ('\nmeasure() {', JWT_OFF + '\nmeasure() {'),
    ('        gw|gw-lua) port=$GW_PROXY_PORT\n', '        gw|gw-lua|gw-jwt-*) port=$GW_PROXY_PORT\n'),
    ('''                   [ "$name" = gw-lua ] && { port=$GW_POLICY_PORT; hdr=(-H "apikey: $API_KEY"); }\n''',
     '''                   [ "$name" = gw-lua ] && { port=$GW_POLICY_PORT; hdr=(-H "apikey: $API_KEY"); }
                   case $name in gw-jwt-*) port=$(jwt_port "$name") ;; esac\n'''),
    ('''    st=$(curl -s -o /dev/null''',
     '''    case $name in gw-jwt-*) hdr=(-H "Authorization: Bearer $(jwt_token "$name")") ;; esac
    st=$(curl -s -o /dev/null'''),
])
PY
    base=${BASE_PORT:-$([ "$mode" = rig ] && echo 18080 || echo 18180)}
    for p in $((base + 15)) $((base + 16)) $((base + 17)) $((base + 18)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "jwt-verify.sh: port $p (a JWT case) already in use on 127.0.0.1 (set BASE_PORT)" >&2
            exit 1
        fi
    done
    mkdir "$tmp/jwt-keys"
    bench/start-gw.sh --mint-jwt "$tmp/jwt-keys"
    export PGW_BENCH_JWT=1 PGW_BENCH_JWT_KEYS="$tmp/jwt-keys"
    export GATEWAY_START=${GATEWAY_START:-bench/start-gw.sh}
    export CASES=${CASES:-"gw-lua gw-jwt-rs gw-jwt-es gw-jwt-rs-nocache gw-jwt-es-nocache"}
    if [ "$mode" = icount ]; then
        out=$(mktemp /tmp/jwt-icount.XXXXXX)
        "$tmp/icount.sh" | tee "$out"
        # ratio of every JWT case to gw-lua, from the table icount.sh printed
        awk -F'|' '$2 ~ /gw-/ { gsub(/ /, "", $2); gsub(/ /, "", $4); v[$2] = $4; o[++n] = $2 }
            END {
                if (!("gw-lua" in v)) exit
                printf "\nJWT cases vs gw-lua (key_auth + rate_limit), instructions/request:\n\n"
                for (i = 1; i <= n; i++) if (o[i] ~ /^gw-jwt/)
                    printf "- %s: %d = %.2fx gw-lua (%d), %+d\n", o[i], v[o[i]], v[o[i]] / v["gw-lua"], v["gw-lua"], v[o[i]] - v["gw-lua"]
            }' "$out"
        rm -f "$out"
        exit 0
    fi
    export OUT_DIR=${OUT_DIR:-$(mktemp -d "/tmp/jwt-rig.$(date +%Y%m%d-%H%M%S).XXXXXX")}
    "$tmp/anchors.sh"
    # ratio of every JWT case to gw-lua, medians over the rounds of this run
    awk -F'\t' '
    function med(s,    a, n, i, j, t) {
        n = split(s, a, " ")
        for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n % 2 ? a[(n + 1) / 2] + 0 : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    /^#/ || $1 == "round" { next }
    { k = $2 SUBSEP $3; if (!(k in cpu)) order[++n] = k; cpu[k] = cpu[k] " " $7; rps[k] = rps[k] " " $4; err[k] += $10 }
    END {
        printf "\nJWT cases vs gw-lua (key_auth + rate_limit), same run (medians; proxy CPU: lower is better):\n\n"
        for (i = 1; i <= n; i++) {
            split(order[i], cb, SUBSEP)
            if (cb[1] !~ /^gw-jwt/) continue
            b = "gw-lua" SUBSEP cb[2]
            if (!(b in cpu)) { printf "- %s %s: gw-lua not measured\n", cb[1], cb[2]; continue }
            c = med(cpu[order[i]]); cl = med(cpu[b]); r = med(rps[order[i]]); rl = med(rps[b])
            printf "- %s %s: proxy CPU %.1f us/req = %.2fx gw-lua (%.1f), %+.1f us | req/s %.0f = %.2fx gw-lua (%.0f)%s\n",
                cb[1], cb[2], c, c / cl, cl, c - cl, r, r / rl, rl, err[order[i]] ? sprintf("  WARNING: %d errors/non-2xx", err[order[i]]) : ""
        }
    }' "$OUT_DIR/results.tsv" | tee "$OUT_DIR/jwt-ratios.md"
    exit 0
fi
[ "$mode" = micro ] || { echo "usage: bench/jwt-verify.sh [micro|rig|icount]" >&2; exit 2; }

RUNS=${RUNS:-5} MS=${MS:-300}
bin=build/jwt-verify

mkdir -p build
# shellcheck disable=SC2046 # pkg-config's output is a list of words
cc -O2 -g -D_GNU_SOURCE -std=gnu11 -Wall -Wextra -o "$bin" bench/jwt-verify.c \
    gateway/jwt.c gateway/jwt_provider.c gateway/json.c gateway/genfiles.c gateway/util.c \
    gateway/tls.c gateway/io.c gateway/log.c gateway/config.c gateway/config_tls.c \
    gateway/config_jwt.c gateway/addr.c gateway/route.c gateway/yamltree.c \
    $(pkg-config --cflags --libs libevent libevent_openssl openssl yaml-0.1) -ljwt

{
    echo "# jwt-verify: nproc=$(nproc), $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)," \
         "libjwt $(dpkg-query -W -f '${Version}' libjwt-dev 2>/dev/null || echo '?')," \
         "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    "$bin" "$RUNS" "$MS"
    echo
    echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | if [ -n "${OUT:-}" ]; then tee "$OUT"; else cat; fi
