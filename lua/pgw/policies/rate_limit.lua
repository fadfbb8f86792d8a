-- rate_limit: exact rate limits and quotas, counted in the gateway's store (docs/store.md): one
-- LMDB write transaction per admission, so no window ever admits more than its limit across all
-- the workers of the host, and counts survive a restart.
--
-- In `access`, for the caller identified by `by`:
--   - a rate: `limit` requests per `window`, either in fixed windows aligned to multiples of the
--     window (algorithm: fixed) or smoothly with up to `burst` at once (algorithm: gcra);
--   - a quota, optionally: `quota: { limit, per: day | month }` (UTC calendar periods);
--   - with `plan: true`, the rate and quota of the consumer's plan (config `plans:`) replace
--     these when the consumer has a plan.
-- Over a limit: 429 with Retry-After and a JSON body naming the reset time. Every answer carries
-- RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset (seconds) and X-RateLimit-Limit /
-- X-RateLimit-Remaining (headers: false turns them off). Time is the wall clock, but per counter
-- it never goes backwards (a clock step neither resets nor doubles a window).
--
-- Config:
--   by              consumer | key | ip | header | route; default consumer (an unidentified
--                   caller is counted by client address, as `ip`)
--   header_name     the header counted with by: header
--   limit, window   the rate: requests per window; default 60 per 1m
--   algorithm       fixed | gcra; default fixed
--   burst           gcra: admissions allowed at once beyond the rate; default 0
--   quota           { limit, per = "day" | "month" }; default none
--   plan            use the consumer's plan when it has one; default false
--   scope           global (counters shared by every route with this policy and these numbers)
--                   or route (per route); default global
--   on_store_error  allow | deny (503) when the store fails (full map, ...); default allow
--   headers         send the rate-limit headers; default true
--
-- Example (route config):
--   policies:
--     - key_auth: {}
--     - rate_limit: { by: consumer, limit: 100, window: 1m, quota: { limit: 10000, per: day } }

local pgw = require "pgw"

local floor, ceil, max = math.floor, math.ceil, math.max
local ctx, exit, now = pgw.ctx, pgw.exit, pgw.time.now
local req, store = pgw.req, pgw.store
local fixed, gcra, set_resp_header = store.fixed, store.gcra, pgw.resp.set_header

-- Days since 1970-01-01 of a (proleptic Gregorian) date: H. Hinnant's days_from_civil.
local function days_from_civil(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = floor(y / 400)
    local yoe = y - era * 400
    local mp = (m + 9) % 12
    local doy = floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end

-- The calendar period (UTC) that contains <t>: start and end in seconds.
local function period(t, per)
    if per == "day" then
        local start = t - t % 86400
        return start, start + 86400
    end
    local d = os.date("!*t", floor(t))
    local y, m = d.year, d.month + 1
    if m == 13 then y, m = y + 1, 1 end
    return days_from_civil(d.year, d.month, 1) * 86400, days_from_civil(y, m, 1) * 86400
end

local function identity(conf, c)
    local by = conf.by
    if by == "consumer" then
        local consumer = c.consumer
        if consumer then return "c:" .. consumer end
        return "ip:" .. req.get_client_addr()
    elseif by == "key" then
        local k = c["consumer.key_id"]
        if k then return "k:" .. k end
        return "ip:" .. req.get_client_addr()
    elseif by == "ip" then
        return "ip:" .. req.get_client_addr()
    elseif by == "header" then
        return "h:" .. (req.get_header(conf.header_name) or "")
    end
    return "r:" .. (req.get_route() or "")
end

local function remember(c, limit, remaining, reset)
    local old = c["rate_limit.remaining"]
    if old == nil or remaining < old then -- report the tightest limit
        c["rate_limit.limit"], c["rate_limit.remaining"], c["rate_limit.reset"] =
            limit, remaining, reset
    end
end

local function refuse(c, what, limit, reset, retry)
    c["rate_limit.remaining"] = nil
    remember(c, limit, 0, reset)
    local wait = max(1, ceil(retry))
    return exit(429, '{"message":"' .. what .. ' exceeded","reset":' .. floor(reset) .. '}\n',
                { ["Content-Type"] = "application/json", ["Retry-After"] = wait })
end

local function store_failed(conf, err)
    if conf.on_store_error == "deny" then
        return exit(503, '{"message":"rate limiting unavailable"}\n',
                    { ["Content-Type"] = "application/json" })
    end
    return nil -- allow: the store error was logged by pgw.store
end

return {
    name = "rate_limit",

    schema = {
        by = { type = "string", enum = { "consumer", "key", "ip", "header", "route" },
               default = "consumer" },
        header_name = { type = "string", min = 1 },
        limit = { type = "integer", min = 1, default = 60 },
        window = { type = "duration", min = 0.001, default = "1m" },
        algorithm = { type = "string", enum = { "fixed", "gcra" }, default = "fixed" },
        burst = { type = "integer", min = 0, default = 0 },
        quota = { type = "map", fields = {
            limit = { type = "integer", min = 1, required = true },
            per = { type = "string", enum = { "day", "month" }, required = true },
        } },
        plan = { type = "boolean", default = false },
        scope = { type = "string", enum = { "global", "route" }, default = "global" },
        on_store_error = { type = "string", enum = { "allow", "deny" }, default = "allow" },
        headers = { type = "boolean", default = true },
    },

    -- Checked when the configuration loads (a config error with file:line).
    check_conf = function(conf)
        if conf.by == "header" and not conf.header_name then
            return nil, "rate_limit.header_name: required with by: header"
        end
        return true
    end,

    access = function(conf)
        local c = ctx()
        local who = identity(conf, c)
        if conf.scope == "route" then
            who = (req.get_route() or "") .. "|" .. who
        end
        local limit, window, algorithm, burst, quota =
            conf.limit, conf.window, conf.algorithm, conf.burst, conf.quota
        local plan_name = conf.plan and c["consumer.plan"]
        local plan = plan_name and pgw.plan(plan_name)
        if plan then
            if plan.rate then
                limit, window, burst = plan.rate.limit, plan.rate.per, plan.rate.burst
                algorithm = burst > 0 and "gcra" or "fixed"
            end
            quota = plan.quota or quota
        end
        local t = now()
        local ok, remaining, reset, retry
        local key = who .. "|" .. limit .. "/" .. window
        if algorithm == "gcra" then
            ok, remaining, reset, retry = gcra("g|" .. key, limit, window, burst)
        else
            local start = t - t % window
            ok, remaining, reset, retry = fixed("f|" .. key, limit, start, start + window)
        end
        if ok == nil then
            return store_failed(conf, remaining)
        end
        if not ok then
            return refuse(c, "rate limit", limit, reset, retry)
        end
        remember(c, limit, remaining, reset)
        if quota then
            local start, stop = period(t, quota.per)
            local qok, qrem, qreset, qretry =
                fixed("q|" .. who .. "|" .. quota.limit .. "/" .. quota.per, quota.limit,
                      start, stop)
            if qok == nil then
                return store_failed(conf, qrem)
            end
            if not qok then
                return refuse(c, "quota", quota.limit, qreset, qretry)
            end
            remember(c, quota.limit, qrem, qreset) -- the headers show the tightest limit
        end
    end,

    header_filter = function(conf)
        if not conf.headers then return end
        local c = ctx()
        local limit = c["rate_limit.limit"]
        if limit == nil then return end
        local remaining, reset = c["rate_limit.remaining"], c["rate_limit.reset"]
        local secs = max(0, ceil(reset - now()))
        set_resp_header("RateLimit-Limit", limit)
        set_resp_header("RateLimit-Remaining", remaining)
        set_resp_header("RateLimit-Reset", secs)
        set_resp_header("X-RateLimit-Limit", limit)
        set_resp_header("X-RateLimit-Remaining", remaining)
    end,
}
