-- bench/policies/bench_keyauth.lua: the benchmark rig's policy chain (../shared/bench/README.md,
-- "The policy chain on PGW_PORT_POLICY"), the stand-in for conf/lua/policy.lua on nginx-lua:
--   1. `apikey` header missing -> 401; not a known key -> 403;
--   2. fixed-window rate limit per key (window aligned to multiples of `window`), 429 beyond;
--   3. X-Consumer to the upstream; X-RateLimit-Limit/Remaining to the client.
-- Keys come from the config (bench/start-gw.sh writes the rig's 1000 keys, each mapped to itself:
-- the rig expects X-Consumer to carry the key); the counters live in
-- pgw.cache, per worker (the rig runs one worker). The built-in key_auth and rate_limit policies
-- with the shared store replace this when the store lands.
local pgw = require "pgw"

-- SDK functions as locals, as the nginx-lua policy does with ngx.*: each field read through
-- the SDK's read-only views costs a metamethod lookup in interpreted code.
local floor = math.floor
local get_header, set_header = pgw.req.get_header, pgw.req.set_header
local exit, ctx, now = pgw.exit, pgw.ctx, pgw.time.now
local cache_get, cache_set = pgw.cache.get, pgw.cache.set
local resp_set_header = pgw.resp.set_header

return {
    name = "bench_keyauth",
    schema = {
        keys = { type = "map", values = { type = "string" }, required = true },
        limit = { type = "integer", min = 1, default = 1000 },
        window = { type = "integer", min = 1, default = 60 },
    },

    access = function(conf, req)
        local key = get_header("apikey")
        if not key then
            return exit(401, '{"message":"no API key"}')
        end
        local consumer = conf.keys[key]
        if not consumer then
            return exit(403, '{"message":"invalid API key"}')
        end
        local t, window, limit = now(), conf.window, conf.limit
        local bucket = t - t % window
        local ck = key .. ":" .. floor(bucket)
        local count = (cache_get(ck) or 0) + 1
        cache_set(ck, count, window)
        local remaining = limit - count
        if remaining < 0 then
            return exit(429, '{"message":"rate limited"}',
                        { ["Retry-After"] = floor(bucket + window - t) })
        end
        set_header("X-Consumer", consumer)
        ctx().remaining = remaining
    end,

    header_filter = function(conf, req)
        local remaining = ctx().remaining
        if remaining then
            resp_set_header("X-RateLimit-Limit", conf.limit)
            resp_set_header("X-RateLimit-Remaining", remaining)
        end
    end,
}
