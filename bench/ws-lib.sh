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

# the client's JSON messages (ws-bench -j FIELD=VALUE): gw-select's name the action `echo`,
# gw-select-miss's one the route does not have
declare -A SELECT_JSON=([gw-select]=action=echo [gw-select-miss]=action=none)

# select_note EXTRA: the paragraph under a table whose CASES have gw-select (EXTRA qualifies the
# JSON-parse estimate)
select_note() {
    case " $CASES " in *" gw-select"*) ;; *) return 0 ;; esac
    local miss=" (CASES with gw-select-miss splits it into the Lua call and the JSON parse.)"
    case " $CASES " in *" gw-select-miss "*)
        miss=" gw-select-miss: the same route and messages naming no action (no Lua call). JSON parse ~ gw-select-miss - gw-policy + 2 x (gw-select - gw-select-miss), if a route chain's call costs what an action chain's does$1." ;;
    esac
    echo
    echo "gw-select: per inbound message a JSON parse in C and one Lua call (ws_pass in the \`echo\` action chain); outbound messages stream (no function runs on them, so they are not assembled). gw-policy calls ws_pass both ways (two calls per round trip): gw-select vs gw-policy is not like-for-like; gw-select - gw is what selection costs in all.$miss gw-select* messages are JSON ({\"action\":...,\"d\":\"...\"}), the other cases' printable ASCII of the same size."
}
