-- ip_restriction: allows or refuses requests by client address, in `access`.
--
-- The client is pgw.req.get_client_addr(): the TCP peer, or, when `real_ip` is configured and
-- the peer is a trusted proxy, the address that proxy names (X-Forwarded-For or PROXY protocol;
-- docs/config.md). Without `real_ip`, a client behind a load balancer is the load balancer.
--
-- Decision, for each request:
--   1. an address in `deny` is refused (deny wins over allow);
--   2. when `allow` is not empty, an address not in it is refused;
--   3. everything else goes on.
-- A refused request is answered `status` with the JSON body {"message": <message>} and
-- Content-Type: application/json, the upstream is not contacted, and the refusal is logged at
-- info level with the address ("refused client 192.0.2.7: not in the allow list").
--
-- Lists hold IPv4 and IPv6 addresses and CIDR ranges: "10.0.0.0/8", "2001:db8::/32",
-- "192.0.2.7" (= /32), "::1" (= /128); no spaces, no leading zeros ("010.0.0.1" is refused).
-- IPv4 ranges also hold IPv4-mapped IPv6 clients (::ffff:10.1.2.3), and IPv6 ranges that
-- contain ::ffff:0:0/96 (::/0) hold every IPv4 client. Each list is compiled once per
-- configuration into a pgw.ip.matcher (sorted ranges, binary search): thousands of entries cost
-- a few comparisons per request.
--
-- Config:
--   allow    array of addresses or CIDR ranges; default {} (no allow list)
--   deny     array of addresses or CIDR ranges; default {}
--            at least one of allow and deny must be non-empty
--   status   the status of a refusal, 200..599; default 403
--   message  the "message" of the refusal's JSON body; default "Your IP address is not allowed"
--
-- The schema cannot check the entries: an invalid entry or two empty lists are reported as
-- `ip_restriction.deny: invalid CIDR "10.0.0.0/33" (item 3)` / `ip_restriction: allow or deny
-- must list at least one address or range` by check_conf(conf) below, logged as an error by
-- init_worker when a worker starts the generation, and raised again by every request the entry
-- sees (answered 500: a broken list never lets traffic through).
--
-- Example (listener or route config; the load balancer 10.0.0.5 sets X-Forwarded-For):
--   real_ip: { from: x-forwarded-for, trusted: [10.0.0.5] }
--   policies:
--     - ip_restriction: { allow: [ 10.0.0.0/8, "2001:db8::/32" ], deny: [ 10.9.0.0/16 ] }

local pgw = require "pgw"

local ipairs, pcall, setmetatable, tostring, error, type =
    ipairs, pcall, setmetatable, tostring, error, type

local JSON_HEADERS = { ["Content-Type"] = "application/json" }

-- conf (a read-only view, one per listener or route entry and generation) -> compiled form
local compiled = setmetatable({}, { __mode = "k" })

local function matcher(conf, field)
    local list = {}
    for i, v in ipairs(conf[field]) do
        list[i] = v
    end
    if list[1] == nil then
        return nil
    end
    local ok, m = pcall(pgw.ip.matcher, list)
    if not ok then
        local msg = tostring(m):gsub("^.-pgw%.ip%.matcher: ", "")
        error("ip_restriction." .. field .. ": " .. msg, 0)
    end
    return m
end

-- { allow = matcher or nil, deny = matcher or nil, body = JSON text }; raises on a bad conf.
local function compile(conf)
    local c = compiled[conf]
    if c ~= nil then
        return c
    end
    c = { allow = matcher(conf, "allow"), deny = matcher(conf, "deny") }
    if c.allow == nil and c.deny == nil then
        error("ip_restriction: allow or deny must list at least one address or range", 0)
    end
    c.body = pgw.json.encode({ message = conf.message })
    compiled[conf] = c
    return c
end

-- Why <addr> is refused, or nil when it may go on.
local function refusal(c, addr)
    if c.deny ~= nil then
        local hit = c.deny:match(addr)
        if hit then
            return "in the deny list"
        elseif hit == nil then
            return "not an IP address"
        end
    end
    if c.allow ~= nil then
        local hit = c.allow:match(addr)
        if hit == nil then
            return "not an IP address"
        elseif not hit then
            return "not in the allow list"
        end
    end
    return nil
end

return {
    name = "ip_restriction",

    schema = {
        allow = { type = "array", items = { type = "string", min = 1 }, default = {} },
        deny = { type = "array", items = { type = "string", min = 1 }, default = {} },
        status = { type = "integer", min = 200, max = 599, default = 403 },
        message = { type = "string", default = "Your IP address is not allowed" },
    },

    -- check_conf(conf) -> true | nil, message: the checks the schema cannot express (valid
    -- entries, a non-empty list), for a config check to call after pgw.schema.check.
    check_conf = function(conf)
        local ok, err = pcall(compile, conf)
        if ok then
            return true
        end
        return nil, type(err) == "string" and err or tostring(err)
    end,

    -- Compiles each entry's conf before traffic: a bad conf is logged at start and reload
    -- ("policy ip_restriction: stage init_worker: ...") rather than first seen at a request.
    init_worker = function(conf)
        compile(conf)
    end,

    access = function(conf)
        local c = compile(conf)
        local addr = pgw.req.get_client_addr()
        local why = refusal(c, addr)
        if why == nil then
            return
        end
        pgw.log.info("refused client ", addr, ": ", why)
        return pgw.exit(conf.status, c.body, JSON_HEADERS)
    end,
}
