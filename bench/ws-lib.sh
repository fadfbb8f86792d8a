# bench/ws-lib.sh: process helpers bench/ws-bench.sh and bench/ws-icount.sh share (sourced from
# the repository root, not run).

alive() { # PID exists and is not a zombie
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
tree_pids() { # PID and all its descendants
    ps -e -o pid= -o ppid= | awk -v root="$1" '
        { kids[$2] = kids[$2] " " $1 }
        END { q[1] = root; n = 1
              for (i = 1; i <= n; i++) { printf "%s ", q[i]; m = split(kids[q[i]], k, " "); for (j = 1; j <= m; j++) q[++n] = k[j] }
              print "" }'
}
# pincmd CPU: PINCMD=(taskset -c CPU), or no pinning when PIN is not 1
pincmd() { if [ "$PIN" = 1 ]; then PINCMD=(taskset -c "$1"); else PINCMD=(env); fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
