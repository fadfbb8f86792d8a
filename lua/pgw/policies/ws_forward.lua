-- ws_forward: an HTTP integration for WebSocket messages (docs/websocket.md, "Route selection"):
-- each inbound message is POSTed to an upstream group of the config, the response body goes back
-- to the client as a message, and the message is NOT relayed to the connection's own upstream.
-- Placed in a route's websocket.actions chain, it sends one action (say "join") to an HTTP
-- service while the other messages stay on the WebSocket upstream, like an AWS API Gateway
-- route integration. Outbound messages pass untouched.
--
-- The request: POST <path>, body = the message, with
--   Content-Type          application/json for a text message, application/octet-stream for a
--                         binary one (or `content_type` for text)
--   X-WebSocket-Id        the connection's id (pgw.ws.id(): push answers later with pgw.ws.send)
--   X-WebSocket-Action    the action the message selected, when it selected one
--   X-Consumer            pgw.ctx().consumer when an authentication policy set one
-- The answer, with `reply: true`: a 2xx response with a body is sent to the client, binary when
-- its Content-Type is application/octet-stream, else text (a body that is not UTF-8 is an error).
-- A 2xx without a body sends nothing.
-- Errors (a status outside 2xx, or no response: timeout, connect failed...) per `on_error`:
--   reply   the client gets {"error":"<reason>","status":<status>} (status 502 without a response)
--   drop    nothing is sent; the connection stays open
--   close   both sides get close 1011 "upstream error"
-- Each error is logged at warn with the connection id.
--
-- Config:
--   upstream      an upstream group of the config (required)
--   path          the request path, default "/"
--   timeout       for the whole exchange (a duration: 500ms, 2s, or seconds), default 5s
--   max_response  the largest response body (a size), default 64k
--   reply         send a 2xx response's body to the client, default true
--   on_error      reply | drop | close; default reply
--   content_type  the Content-Type of text messages, default application/json
--
-- Example (route config):
--   websocket:
--     selection: action
--     actions:
--       join: { policies: [ ws_forward: { upstream: rooms, path: /join } ] }

local pgw = require "pgw"

local ws, http, ctx, log = pgw.ws, pgw.http, pgw.ctx, pgw.log

local MAX_RESPONSE = 1048576

-- Replies <s> as text; false (nothing sent) when it is not UTF-8: pgw.ws.reply checks it, and
-- pcall turns its refusal into false (LuaJIT has no utf8 library).
local function reply_text(s)
    return (pcall(ws.reply, s))
end

local function fail(conf, reason, status)
    log.warn("ws_forward: websocket ", ws.id(), ": ", conf.upstream, conf.path, ": ", reason,
             status and (" " .. status) or "")
    if conf.on_error == "reply" then
        ws.reply('{"error":"' .. reason .. '","status":' .. (status or 502) .. '}')
    elseif conf.on_error == "close" then
        return ws.close(1011, "upstream error")
    end
    return ws.drop()
end

return {
    name = "ws_forward",

    schema = {
        upstream = { type = "string", required = true },
        path = { type = "string", default = "/" },
        timeout = { type = "duration", min = 0.001, max = 600, default = "5s" },
        max_response = { type = "size", min = 1, max = MAX_RESPONSE, default = "64k" },
        reply = { type = "boolean", default = true },
        on_error = { type = "string", enum = { "reply", "drop", "close" }, default = "reply" },
        content_type = { type = "string", default = "application/json" },
    },

    check_conf = function(conf)
        if not http.has_upstream(conf.upstream) then
            return nil, "ws_forward.upstream: no upstream group named \"" .. conf.upstream
                        .. "\" in the config"
        end
        if conf.path:sub(1, 1) ~= "/" or conf.path:find("[%c%s#]") then
            return nil, "ws_forward.path: must start with / and have no space, control or #"
        end
        return true
    end,

    ws_message = function(conf, msg)
        if msg.direction ~= "inbound" then
            return
        end
        local binary = msg.opcode == "binary"
        local headers = {
            ["Content-Type"] = binary and "application/octet-stream" or conf.content_type,
            ["X-WebSocket-Id"] = ws.id(),
            ["X-WebSocket-Action"] = msg.action,
            ["X-Consumer"] = type(ctx().consumer) == "string" and ctx().consumer or nil,
        }
        local res, err = http.request{ upstream = conf.upstream, path = conf.path,
                                       method = "POST", headers = headers, body = msg.data,
                                       timeout = conf.timeout, max_body = conf.max_response }
        if not res then
            return fail(conf, err)
        end
        if res.status < 200 or res.status > 299 then
            return fail(conf, "upstream status", res.status)
        end
        if conf.reply and res.body ~= "" then
            local ctype = res.headers["content-type"]
            if type(ctype) == "string" and ctype:lower():find("^application/octet%-stream") then
                ws.reply(res.body, "binary")
            elseif not reply_text(res.body) then
                return fail(conf, "response not UTF-8")
            end
        end
        return ws.drop()
    end,
}
