-- examples/policies/chat_filter.lua: the quick start's WebSocket policy (docs/websocket.md), for
-- the `chat` route. ws_message runs for every complete message of the connection, in both
-- directions; this one looks only at text messages from the client:
--   - "ping" is answered "pong" by the gateway and never reaches the upstream;
--   - the words of `words` (whole words, as written) are masked with '*' before the message goes on.
local pgw = require "pgw"

return {
    schema = {
        words = { type = "array", items = { type = "string", min = 1 }, default = { "darn" } },
    },

    ws_message = function(conf, msg)
        if msg.direction ~= "inbound" or msg.opcode ~= "text" then
            return
        end
        if msg.data == "ping" then
            pgw.ws.reply("pong")         -- to the sender: the client
            return pgw.ws.drop()         -- not forwarded
        end
        local text = msg.data
        for _, word in ipairs(conf.words) do
            local pattern = "%f[%w_]" .. word:gsub("%W", "%%%0") .. "%f[^%w_]"
            text = text:gsub(pattern, string.rep("*", #word))
        end
        msg.data = text                  -- what the upstream receives
    end,
}
