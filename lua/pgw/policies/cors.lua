-- cors: Cross-Origin Resource Sharing (https://fetch.spec.whatwg.org/#http-cors-protocol).
--
-- Preflights (OPTIONS with Origin and Access-Control-Request-Method) are answered by the gateway
-- in `access` and never reach the upstream: 204 with the Access-Control-* headers when the origin,
-- the method and the requested headers are allowed, else 403 with no Access-Control-* header (the
-- browser then refuses the real request). Other requests with an Origin header are proxied and
-- `header_filter` adds Access-Control-Allow-Origin (and -Credentials, -Expose-Headers) to the
-- response when the origin is allowed, including to responses produced by other policies (a 401
-- from an auth policy stays readable by the page). List cors first on a route so that preflights,
-- which carry no credentials, are answered before an auth policy rejects them.
--
-- Config:
--   origins          array of "*" or exact origins ("https://app.example.com"), compared without
--                    regard to case; default { "*" }
--   methods          methods allowed in preflights; default GET HEAD PUT PATCH POST DELETE
--   headers          request headers allowed in preflights; default {} = allow whatever the
--                    preflight asks for (Access-Control-Request-Headers is echoed)
--   exposed_headers  response headers the page may read (Access-Control-Expose-Headers)
--   credentials      true: send Access-Control-Allow-Credentials: true. With "*" in origins the
--                    request's own Origin is echoed instead of "*" (the CORS protocol forbids "*"
--                    with credentials), which lets any site make credentialed requests: list exact
--                    origins when credentials is true.
--   max_age          how long a browser may cache a preflight answer (duration; whole seconds
--                    are sent); absent: no Access-Control-Max-Age
-- Whenever the answer depends on the Origin (not a bare "*"), responses get `Vary: Origin`.
--
-- Example (route config):
--   policies:
--     - cors: { origins: [ "https://app.example.com" ], credentials: true, max_age: 10m }

local pgw = require "pgw"

local ipairs, tostring, floor, concat, lower, gmatch =
    ipairs, tostring, math.floor, table.concat, string.lower, string.gmatch

local PREFLIGHT = "pgw.cors.preflight" -- pgw.ctx() key: this request was a preflight we answered

-- Returns allowed, any: whether <origin> is allowed, and whether it is allowed through "*".
local function origin_allowed(conf, origin)
    local lo = lower(origin)
    local any = false
    for _, o in ipairs(conf.origins) do
        if o == "*" then
            any = true
        elseif lower(o) == lo then
            return true, false
        end
    end
    return any, any
end

-- The Access-Control-Allow-Origin value, and whether the response varies with Origin.
local function allow_origin(conf, origin, any)
    if any and not conf.credentials then
        return "*", false
    end
    return origin, true
end

local function has_wildcard_only(conf)
    for _, o in ipairs(conf.origins) do
        if o ~= "*" then
            return false
        end
    end
    return not conf.credentials
end

local function list_contains(list, value, ci)
    for _, v in ipairs(list) do
        if v == value or (ci and lower(v) == value) then
            return true
        end
    end
    return false
end

-- Adds "Origin" to the response's Vary unless it is already listed (or Vary is "*").
local function add_vary_origin()
    local vary = pgw.resp.get_header("Vary")
    if vary then
        for token in gmatch(vary, "[^,%s]+") do
            local t = lower(token)
            if t == "origin" or t == "*" then
                return
            end
        end
    end
    pgw.resp.add_header("Vary", "Origin")
end

local function preflight(conf)
    local origin = pgw.req.get_header("Origin")
    local ok, any = origin_allowed(conf, origin)
    local vary = not has_wildcard_only(conf)
    local method = pgw.req.get_header("Access-Control-Request-Method")
    local asked = pgw.req.get_header("Access-Control-Request-Headers")
    if ok and not list_contains(conf.methods, method) then
        ok = false
    end
    local allow_headers
    if ok and asked then
        local names = {}
        for name in gmatch(asked, "[^,%s]+") do
            names[#names + 1] = lower(name)
        end
        local configured = false
        for _ in ipairs(conf.headers) do
            configured = true
            break
        end
        if configured then
            for _, n in ipairs(names) do
                if not list_contains(conf.headers, n, true) then
                    ok = false
                    break
                end
            end
            local all = {}
            for i, h in ipairs(conf.headers) do
                all[i] = h
            end
            allow_headers = concat(all, ", ")
        elseif names[1] then
            allow_headers = concat(names, ", ")
        end
    end
    pgw.ctx()[PREFLIGHT] = true
    if not ok then
        return pgw.exit(403, nil, vary and { Vary = "Origin" } or nil)
    end
    local value, varies = allow_origin(conf, origin, any)
    local methods = {}
    for i, m in ipairs(conf.methods) do
        methods[i] = m
    end
    local h = {
        ["Access-Control-Allow-Origin"] = value,
        ["Access-Control-Allow-Methods"] = concat(methods, ", "),
        ["Access-Control-Allow-Headers"] = allow_headers,
        ["Access-Control-Allow-Credentials"] = conf.credentials and "true" or nil,
        ["Access-Control-Max-Age"] = conf.max_age and tostring(floor(conf.max_age)) or nil,
        Vary = (vary or varies) and "Origin" or nil,
    }
    return pgw.exit(204, nil, h)
end

return {
    name = "cors",

    schema = {
        origins = { type = "array", items = { type = "string", min = 1 }, min = 1,
                    default = { "*" } },
        methods = { type = "array", items = { type = "string", min = 1 },
                    default = { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE" } },
        headers = { type = "array", items = { type = "string", min = 1 }, default = {} },
        exposed_headers = { type = "array", items = { type = "string", min = 1 }, default = {} },
        credentials = { type = "boolean", default = false },
        max_age = { type = "duration" },
    },

    access = function(conf)
        if pgw.req.get_header("Origin") == nil then
            return
        end
        if pgw.req.get_method() == "OPTIONS" and
           pgw.req.get_header("Access-Control-Request-Method") ~= nil then
            return preflight(conf)
        end
    end,

    header_filter = function(conf)
        if pgw.ctx()[PREFLIGHT] then
            return -- answered in access, with its own headers
        end
        local origin = pgw.req.get_header("Origin")
        if origin == nil then
            return
        end
        local ok, any = origin_allowed(conf, origin)
        if not ok then
            if not has_wildcard_only(conf) then
                add_vary_origin()
            end
            return
        end
        local value, varies = allow_origin(conf, origin, any)
        pgw.resp.set_header("Access-Control-Allow-Origin", value)
        if conf.credentials then
            pgw.resp.set_header("Access-Control-Allow-Credentials", "true")
        end
        local exposed = {}
        for i, h in ipairs(conf.exposed_headers) do
            exposed[i] = h
        end
        if exposed[1] then
            pgw.resp.set_header("Access-Control-Expose-Headers", concat(exposed, ", "))
        end
        if varies or not has_wildcard_only(conf) then
            add_vary_origin()
        end
    end,
}
