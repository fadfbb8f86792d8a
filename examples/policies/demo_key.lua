-- examples/policies/demo_key.lua: the quick start's API-key check, a user policy in a dozen
-- lines. The `X-Api-Key` header must be one of the keys in the route's settings (a map key ->
-- consumer name); the key is removed before the request goes upstream and replaced by
-- `X-Consumer`. The built-in key_auth policy (keys in the gateway's store, hashed at rest)
-- replaces this in production setups.
local pgw = require "pgw"

return {
    schema = {
        header = { type = "string", default = "X-Api-Key" },
        keys = { type = "map", values = { type = "string" }, required = true },
    },

    access = function(conf, req)
        local key = pgw.req.get_header(conf.header)
        if key == nil then
            return pgw.exit(401, '{"message":"API key missing"}\n',
                            { ["Content-Type"] = "application/json",
                              ["WWW-Authenticate"] = 'ApiKey header="' .. conf.header .. '"' })
        end
        local consumer = conf.keys[key]
        if consumer == nil then
            return pgw.exit(403, '{"message":"API key not valid"}\n',
                            { ["Content-Type"] = "application/json" })
        end
        pgw.req.clear_header(conf.header)
        pgw.req.set_header("X-Consumer", consumer)
        pgw.ctx().consumer = consumer
    end,

    -- header_filter also runs on the 401/403 answers above: no consumer there.
    header_filter = function(conf, req)
        local consumer = pgw.ctx().consumer
        if consumer then
            pgw.resp.set_header("X-Consumer", consumer)
        end
    end,
}
