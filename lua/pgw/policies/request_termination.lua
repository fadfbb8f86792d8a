-- request_termination: answers every request itself, without contacting the upstream (a route
-- under maintenance, a retired endpoint, a stub while the backend is built).
--
-- Runs in `access`, so policies listed before it (auth, rate limiting) still apply, and the
-- header_filter, body_filter and log stages of every policy on the route run on its response.
--
-- Config:
--   status        the response status, 200..599; default 503
--   body          the response body; default none (an empty body)
--   content_type  Content-Type sent with a body; default "text/plain; charset=utf-8"
--                 (not sent when there is no body)
--
-- Example (route config):
--   policies:
--     - request_termination:
--         status: 410
--         body: '{"message":"this API version is retired, use /v2"}'
--         content_type: application/json

local pgw = require "pgw"

return {
    name = "request_termination",

    schema = {
        status = { type = "integer", min = 200, max = 599, default = 503 },
        body = { type = "string" },
        content_type = { type = "string", min = 1, default = "text/plain; charset=utf-8" },
    },

    access = function(conf)
        local headers
        if conf.body ~= nil then
            headers = { ["Content-Type"] = conf.content_type }
        end
        return pgw.exit(conf.status, conf.body, headers)
    end,
}
