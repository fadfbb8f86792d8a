-- ws_push: an HTTP endpoint that sends a message to a WebSocket connection by its id
-- (docs/websocket.md, "Pushing to a connection"). Put it on a route of an internal listener,
-- after an authentication policy (key_auth, jwt, acl), to get an authenticated push API:
--
--   POST <route path>/<id>       the body is the message; text unless the request's
--                                Content-Type is application/octet-stream (binary)
--   202 {"sent":true}            queued for that connection's client (through its outbound
--                                ws_message policies), whichever worker holds it
--   404 {"error":"unknown connection"}, 409 {"error":"closed"}, 503 {"error":"queue full"} or
--   {"error":"timeout"}, 400 (no id, or text that is not UTF-8), 405 (not POST), 413 (body over
--   max_message)
--
-- Config:
--   max_message   the largest body accepted (a size), default 64k (at most 1m)
--
-- Example (route config):
--   - name: ws_admin
--     listeners: [internal]
--     match: { path: /admin/ws/ }
--     upstream: unused        # never contacted: ws_push answers every request
--     policies:
--       - key_auth: {}
--       - acl: { allow: [admins] }
--       - ws_push: {}

local pgw = require "pgw"

local req, exit, ws = pgw.req, pgw.exit, pgw.ws

local JSON = { ["Content-Type"] = "application/json" }
local STATUS = { ["unknown connection"] = 404, closed = 409, ["queue full"] = 503,
                 timeout = 503 }

local function answer(status, body)
    return exit(status, body .. "\n", JSON)
end

return {
    name = "ws_push",

    schema = {
        max_message = { type = "size", min = 1, max = 1048576, default = "64k" },
    },

    access = function(conf)
        if req.get_method() ~= "POST" then
            return exit(405, '{"error":"POST the message"}\n',
                        { ["Content-Type"] = "application/json", Allow = "POST" })
        end
        local id = req.get_path():match("/(%x+)$")
        if not id or #id ~= 32 then
            return answer(400, '{"error":"no connection id at the end of the path"}')
        end
        local body, err = req.read_body(conf.max_message)
        if not body then
            if err == "too large" then
                return answer(413, '{"error":"message too large"}')
            end
            return answer(400, '{"error":"no message"}')
        end
        local ctype = (req.get_header("Content-Type") or ""):lower()
        local opcode = ctype:find("^application/octet%-stream") and "binary" or "text"
        local ok, sent, why = pcall(ws.send, id, body, opcode)
        if not ok then -- text that is not UTF-8
            return answer(400, '{"error":"a text message must be UTF-8"}')
        end
        if sent then
            return answer(202, '{"sent":true}')
        end
        return answer(STATUS[why] or 503, '{"error":"' .. why .. '"}')
    end,
}
