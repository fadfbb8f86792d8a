-- pgw.bearer: what the bearer-token policies (`jwt`, `oauth2_introspection`) share, and what a
-- user policy authenticating bearer tokens can reuse (docs/jwt.md): reading the token, the
-- RFC 6750 challenges, scopes, and the identity a verified token gives (pgw.ctx and the
-- upstream headers). Pure Lua over the SDK; no state.

local pgw = require "pgw"

local type, pairs, ipairs, next, tostring, pcall = type, pairs, ipairs, next, tostring, pcall
local floor, format = math.floor, string.format
local find, gmatch, lower, sub, byte, concat = string.find, string.gmatch, string.lower,
    string.sub, string.byte, table.concat

local M = {}

local copies = setmetatable({}, { __mode = "k" }) -- conf view -> its plain copy

-- pgw.bearer.options(conf, pairs)
-- Syntax: local opts = pgw.bearer.options(conf, pairs)
-- Returns: a plain copy of the policy's conf (a read-only view), made with the `pairs` of the
-- calling policy (the one that sees through views): the other functions here take it. The copy
-- is made once per conf and then returned again (the policy may add derived fields to it).
function M.options(conf, view_pairs)
    local o = copies[conf]
    if o == nil then
        local function copy(v)
            if type(v) ~= "table" then return v end
            local t = {}
            for k, x in view_pairs(v) do t[k] = copy(x) end
            return t
        end
        o = copy(conf)
        copies[conf] = o
    end
    return o
end

-- pgw.bearer.schema()
-- Syntax: local s = pgw.bearer.schema()
-- Returns: a new table of the schema fields every bearer policy has (header, query, cookie,
-- hide_credentials, required_scopes, claims_to_headers, consumer_header, anonymous, realm); a
-- policy adds its own fields to it.
function M.schema()
    return {
        header = { type = "string", default = "Authorization", min = 1 },
        query = { type = "string", min = 1 },
        cookie = { type = "string", min = 1 },
        hide_credentials = { type = "boolean", default = false },
        required_scopes = { type = "array", items = { type = "string", min = 1 }, default = {} },
        claims_to_headers = { type = "map", values = { type = "string", min = 1 }, default = {} },
        consumer_header = { type = "string", default = "X-Consumer" },
        anonymous = { type = "string", min = 1 },
        realm = { type = "string", default = "passerelle" },
    }
end

local function cookie_value(header, name)
    if not header then return nil end
    for pair in gmatch(header, "[^;]+") do
        local k, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
        if k == name then return v end
    end
    return nil
end

-- pgw.bearer.read(opts)
-- Syntax: local token = pgw.bearer.read(opts)
-- Stages: rewrite, access. Yields: no.
-- Returns: the token of the request, from the first present of conf.header ("Bearer <token>",
-- scheme matched without regard to case), the query argument conf.query, the cookie
-- conf.cookie; nil when none carries one. With conf.hide_credentials the header or query
-- argument is removed from the request.
-- "Bearer <token>" -> the token, or nil. Plain searches only: the value may be kilobytes long,
-- and the gateway already removed the spaces around it.
local function parse_bearer(v)
    local sp = find(v, " ", 1, true)
    if sp ~= 7 or lower(sub(v, 1, 6)) ~= "bearer" then return nil end
    local i = 8
    while byte(v, i) == 32 do i = i + 1 end
    local token = sub(v, i)
    if token == "" or find(token, " ", 1, true) or find(token, "\t", 1, true) then return nil end
    return token
end

function M.read(conf)
    local req = pgw.req
    local v = req.get_header(conf.header)
    if v then
        local token = parse_bearer(v)
        if token then
            if conf.hide_credentials then req.clear_header(conf.header) end
            return token
        end
    end
    if conf.query then
        local q = req.get_query_arg(conf.query)
        if type(q) == "string" and q ~= "" then
            if conf.hide_credentials then req.clear_query_arg(conf.query) end
            return q
        end
    end
    if conf.cookie then
        local c = cookie_value(req.get_header("Cookie"), conf.cookie)
        if c and c ~= "" then return c end
    end
    return nil
end

local function json_exit(status, msg, challenge)
    return pgw.exit(status, '{"message":"' .. msg .. '"}\n', {
        ["Content-Type"] = "application/json",
        ["WWW-Authenticate"] = challenge,
    })
end

-- pgw.bearer.missing(conf) / invalid(conf) / insufficient_scope(conf) / unavailable(msg)
-- Stages: rewrite, access. Yields: no. End the request (pgw.exit): 401 with the challenge
-- `Bearer realm="<realm>"` (no token); 401 `..., error="invalid_token"` (any bad token: the
-- client is not told which check failed); 403 `..., error="insufficient_scope",
-- scope="<required>"`; 503 without a challenge (the keys or the authorization server cannot be
-- used).
function M.missing(conf)
    return json_exit(401, "missing bearer token", 'Bearer realm="' .. conf.realm .. '"')
end

function M.invalid(conf)
    return json_exit(401, "invalid token",
                     'Bearer realm="' .. conf.realm .. '", error="invalid_token"')
end

function M.insufficient_scope(conf)
    return json_exit(403, "insufficient scope", 'Bearer realm="' .. conf.realm ..
                     '", error="insufficient_scope", scope="' .. concat(conf.required_scopes, " ") .. '"')
end

function M.unavailable(msg)
    return pgw.exit(503, '{"message":"' .. msg .. '"}\n', { ["Content-Type"] = "application/json" })
end

-- pgw.bearer.scopes(claims)
-- Returns: the token's scopes as an array: the `scope` claim split on spaces, plus `scp` (a
-- string split the same way, or an array of strings).
function M.scopes(claims)
    local out = {}
    local function add(v)
        if type(v) == "string" then
            for s in gmatch(v, "%S+") do out[#out + 1] = s end
        elseif type(v) == "table" then
            for _, s in ipairs(v) do
                if type(s) == "string" then out[#out + 1] = s end
            end
        end
    end
    add(claims.scope)
    add(claims.scp)
    return out
end

-- pgw.bearer.has_scopes(scopes, required) -> whether every required scope is in scopes
function M.has_scopes(scopes, required)
    if #required == 0 then return true end
    local have = {}
    for _, s in ipairs(scopes) do have[s] = true end
    for _, s in ipairs(required) do
        if not have[s] then return false end
    end
    return true
end

-- Header values from a token must not carry control characters (they would be refused by
-- set_header, and they have no business in an identity).
local function clean(s)
    return type(s) == "string" and s ~= "" and #s <= 4096 and not find(s, "[%z\1-\31\127]")
end

-- A claim as a header value: a string as is, a number in decimal (integers without exponent), an
-- array of strings joined with ", ", an empty array or object not at all, anything else as JSON.
local function number_text(v)
    if v == floor(v) and v >= -2^53 and v <= 2^53 then
        return format("%d", v) -- 1234567890123456, not 1.2345678901235e+15
    end
    return format("%.17g", v)
end

local function header_value(v)
    local t = type(v)
    if t == "string" then return v end
    if t == "number" then return number_text(v) end
    if t == "boolean" then return tostring(v) end
    if t ~= "table" then return nil end
    if next(v) == nil then return nil end -- [] or {}: nothing to send
    local parts = {}
    for i, x in ipairs(v) do
        if type(x) ~= "string" then return pgw.json.encode(v) end
        parts[i] = x
    end
    if #parts > 0 then return concat(parts, ", ") end
    return pgw.json.encode(v)
end

-- pgw.bearer.strip(conf, identified)
-- Stages: rewrite, access. Removes the headers the policy sets for the upstream from the client's
-- request: every claims_to_headers header, and the consumer header unless an earlier policy
-- already identified the caller.
function M.strip(conf, identified)
    local clear = pgw.req.clear_header
    for _, h in pairs(conf.claims_to_headers) do clear(h) end
    if not identified and conf.consumer_header ~= "" then clear(conf.consumer_header) end
end

local function consumer_record(name)
    local ok, c = pcall(pgw.keys.consumer, name) -- raises when the gateway has no store
    if ok then return c end
    return nil
end

local function split_groups(s)
    local out = {}
    for g in gmatch(s or "", "[^,%s]+") do out[#out + 1] = g end
    return out
end

local function set_consumer(conf, name, rec)
    local c = pgw.ctx()
    c.consumer = name
    if rec then
        c["consumer.plan"] = rec.plan ~= "" and rec.plan or nil
        c["consumer.groups"] = split_groups(rec.groups)
    end
    if conf.consumer_header ~= "" then pgw.req.set_header(conf.consumer_header, name) end
end

-- pgw.bearer.anonymous(conf): runs the request as consumer conf.anonymous.
function M.anonymous(conf)
    set_consumer(conf, conf.anonymous, consumer_record(conf.anonymous))
end

-- pgw.bearer.token(opts)
-- Syntax: local token = pgw.bearer.token(opts); if not token then return end
-- Stages: rewrite, access. Yields: no.
-- The prologue of a bearer policy: strips the headers it sets (strip), reads the token (read),
-- and when there is none settles the request: passes it when an earlier policy identified the
-- caller, runs it as opts.anonymous, or answers 401 (missing). Returns the token, or nil when
-- the request is settled and the stage function should return.
function M.token(opts)
    local identified = pgw.ctx().consumer ~= nil
    M.strip(opts, identified)
    local token = M.read(opts)
    if token == nil and not identified then
        if opts.anonymous then
            M.anonymous(opts)
        else
            M.missing(opts)
        end
    end
    return token
end

-- pgw.bearer.identify(conf, claims, consumer_claim, require_consumer)
-- Stages: rewrite, access. Yields: no.
-- Returns: true after setting pgw.ctx().consumer (the claim's value), the consumer's plan and
-- groups when the store knows it, `auth.scopes`, the consumer header and the claims_to_headers
-- headers; or nil and the reason (for the log) when the claim is not a string without control
-- characters (1 to 256 bytes), or when require_consumer is set and the claim is absent or the
-- store does not know the consumer. Without the claim (and without require_consumer) the
-- request goes on with no consumer.
function M.identify(conf, claims, consumer_claim, require_consumer)
    local name = claims[consumer_claim]
    if name ~= nil or require_consumer then
        if not clean(name) or #name > 256 then
            return nil, "no usable consumer claim " .. consumer_claim
        end
        local rec = consumer_record(name)
        if require_consumer and not rec then
            return nil, "unknown consumer"
        end
        set_consumer(conf, name, rec)
    end
    pgw.ctx()["auth.scopes"] = M.scopes(claims)
    local set = pgw.req.set_header
    for claim, header in pairs(conf.claims_to_headers) do
        local v = header_value(claims[claim])
        if v ~= nil and clean(v) then
            set(header, v)
        end
    end
    return true
end

return M
