-- bench/policies/ws_probe.lua: the sanity check of bench/ws-bench.sh's `gw-select` case. Only in
-- the chain of the action `probe` (route /probe): it closes the connection with 4000, so a client
-- whose message names `probe` gets that close while one naming another action gets its echo,
-- which shows that the gateway selects the chain by the message's JSON field.
local pgw = require "pgw"

return {
    name = "ws_probe",

    ws_message = function(conf, msg)
        return pgw.ws.close(4000, "ws_probe")
    end,
}
