-- bench/policies/ws_pass.lua: the `gw-policy` case of bench/ws-bench.sh. A ws_message policy that
-- passes every message unchanged: it only reads the payload's length, so the figure is the cost of
-- having a message-level policy at all (each message assembled and handed to Lua, both
-- directions), not of any work done in it.
return {
    name = "ws_pass",

    ws_message = function(conf, msg)
        if #msg.data < 0 then -- never true: the length is read, nothing is changed
            return
        end
    end,
}
