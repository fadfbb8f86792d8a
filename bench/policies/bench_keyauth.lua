-- bench/policies/bench_keyauth.lua: the benchmark rig's policy chain (../shared/bench/README.md,
-- "The policy chain on PGW_PORT_POLICY"), the stand-in for conf/lua/policy.lua on nginx-lua:
--   1. `apikey` header missing -> 401; not a known key -> 403;
--   2. fixed-window rate limit per key (window aligned to multiples of `window`), 429 beyond;
--   3. X-Consumer to the upstream; X-RateLimit-Limit/Remaining to the client.
-- Keys come from the config (bench/start-gw.sh writes the rig's 1000 keys); the counters live in
-- pgw.cache, per worker (the rig runs one worker). The built-in key_auth and rate_limit policies
-- with the shared store replace this when the store lands.
local pgw = require "pgw"

local floor = math.floor

return {
    name = "bench_keyauth",
    schema = {
        keys = { type = "map", values = { type = "string" }, required = true },
        limit = { type = "integer", min = 1, default = 1000 },
        window = { type = "integer", min = 1, default = 60 },
    },

    access = function(conf, req)
        local key = pgw.req.get_header("apikey")
        if not key then
            return pgw.exit(401, '{"message":"no API key"}')
        end
        local consumer = conf.keys[key]
        if not consumer then
            return pgw.exit(403, '{"message":"invalid API key"}')
        end
        local now = pgw.time.now()
        local bucket = now - now % conf.window
        local ck = key .. ":" .. floor(bucket)
        local count = (pgw.cache.get(ck) or 0) + 1
        pgw.cache.set(ck, count, conf.window)
        local remaining = conf.limit - count
        if remaining < 0 then
            return pgw.exit(429, '{"message":"rate limited"}',
                            { ["Retry-After"] = floor(bucket + conf.window - now) })
        end
        pgw.req.set_header("X-Consumer", consumer)
        local ctx = pgw.ctx()
        ctx.remaining = remaining
    end,

    header_filter = function(conf, req)
        local remaining = pgw.ctx().remaining
        if remaining then
            pgw.resp.set_header("X-RateLimit-Limit", conf.limit)
            pgw.resp.set_header("X-RateLimit-Remaining", remaining)
        end
    end,
}
