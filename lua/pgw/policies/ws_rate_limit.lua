-- ws_rate_limit: limits on WebSocket messages (docs/websocket.md), counted in the gateway's store
-- like rate_limit (docs/store.md): one LMDB write transaction per counted message, so no window
-- ever admits more than its limit across all the workers of the host.
--
-- In `ws_message`, for messages of the chosen direction, per fixed window aligned to multiples of
-- `window`: at most `messages` messages and at most `bytes` payload bytes (either or both), per
-- connection, consumer or client address. Over a limit, per `action`:
--   drop   the message is not forwarded (the later ws_message policies do not see it);
--   reply  the same, and the sender gets the text `reply`;
--   close  both sides get close `close_code` (default 1008, policy violation) and `close_reason`.
-- The byte limit is checked first: a message refused by it counts against neither limit, one
-- refused by the message limit has counted its bytes. A message larger than `bytes` never passes.
-- It has only `ws_message`, so it also works in a route's websocket.actions chains.
--
-- Config:
--   by              connection | consumer | ip; default connection (consumer: an unidentified
--                   caller is counted by client address, as `ip`)
--   direction       inbound (from the client) | outbound | both; default inbound
--   messages        messages per window
--   bytes           payload bytes per window (a size: 64k)
--   window          duration, default 1s
--   action          drop | reply | close; default close
--   reply           text sent with action: reply; default {"error":"rate limit exceeded"}
--   close_code      default 1008; close_reason default "rate limit exceeded" (at most 123 bytes)
--   scope           global (counters shared by every route with these numbers) or route;
--                   default global
--   on_store_error  allow | deny (close 1011) when the store fails; default allow
--
-- Example (route config):
--   websocket: true
--   policies:
--     - key_auth: {}
--     - ws_rate_limit: { by: consumer, messages: 20, bytes: 64k, window: 1s, action: reply }

local pgw = require "pgw"

local ctx, now, fixed, ws = pgw.ctx, pgw.time.now, pgw.store.fixed, pgw.ws

local function identity(conf, c)
    local by = conf.by
    if by == "connection" then
        return "w:" .. ws.id()
    elseif by == "consumer" and c.consumer then
        return "c:" .. c.consumer
    end
    return "ip:" .. ws.client_addr()
end

local function over(conf)
    local action = conf.action
    if action == "reply" then
        ws.reply(conf.reply)
        return ws.drop()
    elseif action == "drop" then
        return ws.drop()
    end
    return ws.close(conf.close_code, conf.close_reason)
end

-- One limiter: true when admitted, false when over, nil when the store failed (per
-- on_store_error: admitted, or the connection closed).
local function admit(conf, key, limit, start, cost)
    local ok, err = fixed(key .. "|" .. limit .. "/" .. conf.window, limit, start,
                          start + conf.window, cost)
    if ok == nil then
        if conf.on_store_error == "deny" then
            ws.close(1011, "rate limiting unavailable")
            return nil
        end
        return true -- allow: the store error was logged by pgw.store
    end
    return ok
end

return {
    name = "ws_rate_limit",

    schema = {
        by = { type = "string", enum = { "connection", "consumer", "ip" }, default = "connection" },
        direction = { type = "string", enum = { "inbound", "outbound", "both" },
                      default = "inbound" },
        messages = { type = "integer", min = 1 },
        bytes = { type = "size", min = 1 },
        window = { type = "duration", min = 0.001, default = "1s" },
        action = { type = "string", enum = { "drop", "reply", "close" }, default = "close" },
        reply = { type = "string", default = '{"error":"rate limit exceeded"}' },
        close_code = { type = "integer", min = 1000, max = 4999, default = 1008 },
        close_reason = { type = "string", max = 123, default = "rate limit exceeded" },
        scope = { type = "string", enum = { "global", "route" }, default = "global" },
        on_store_error = { type = "string", enum = { "allow", "deny" }, default = "allow" },
    },

    check_conf = function(conf)
        if not conf.messages and not conf.bytes then
            return nil, "ws_rate_limit: set messages, bytes or both"
        end
        local valid, why = ws.is_close_code(conf.close_code)
        if not valid then
            return nil, "ws_rate_limit.close_code: " .. why
        end
        return true
    end,

    ws_message = function(conf, msg)
        if conf.direction ~= "both" and msg.direction ~= conf.direction then
            return
        end
        local c = ctx()
        local key = conf.direction:sub(1, 1) .. "|" .. identity(conf, c) -- both: one count
        if conf.scope == "route" then
            key = ws.route() .. "|" .. key
        end
        local t = now()
        local start = t - t % conf.window
        if conf.bytes then
            local ok = admit(conf, "wsb|" .. key, conf.bytes, start, #msg.data)
            if ok == nil then return end
            if not ok then return over(conf) end
        end
        if conf.messages then
            local ok = admit(conf, "wsm|" .. key, conf.messages, start, 1)
            if ok == nil then return end
            if not ok then return over(conf) end
        end
    end,
}
