-- spec/support/fake_pgw.lua: a fake `pgw` host for the Lua specs, so that built-in policies run
-- under build/luarun without the C bridge. It implements the part of docs/sdk.md the built-ins
-- use, with the same stage rules and the same errors (misuse raises "pgw.req.set_header: not
-- allowed in stage log", an invalid header name or value raises), and records what a policy did.
--
--   local fake = require "fake_pgw"
--   local pgw = fake.install()                      -- package.loaded.pgw = the fake SDK
--   local cors = fake.load("cors")                  -- a fresh require "pgw.policies.cors"
--   local conf = fake.configure(cors, { origins = { "https://a.example" } })   -- raises if invalid
--   local r = fake.request{ method = "OPTIONS", path = "/x", query = "a=1",
--                           headers = { Origin = "https://a.example" } }     -- or a list of {n, v}
--   fake.run(cors, conf, "access")                  -- calls cors.access(conf, req) in that stage
--   r.exited  --> { status = 204, body = nil, headers = { {name, value}, ... } } or nil
--   fake.header(r.headers, "x-a") / fake.header(r.resp.headers, "vary") --> joined values or nil
--   r.calls   --> { { "pgw.req.set_header", "X-A", "1" }, ... }: every mutating call, in order
--
-- `conf` is handed to stage functions as a read-only view built like the sandbox's (an empty
-- table whose __index is the data), so `#conf.list` and next(conf) see nothing there too: a
-- policy must iterate config arrays with ipairs. The fake keeps one current request, like the
-- bridge's "current request".

local schema = require "pgw.schema"

local M = {}

local STAGE_BITS = {
    init_worker = 1, rewrite = 2, access = 4, header_filter = 8, body_filter = 16, log = 32,
    timer = 64,
}
local function mask(...)
    local m = 0
    for _, s in ipairs({ ... }) do
        m = m + STAGE_BITS[s]
    end
    return m
end
local ALL = mask("init_worker", "rewrite", "access", "header_filter", "body_filter", "log", "timer")
local REQ_READ = mask("rewrite", "access", "header_filter", "body_filter", "log")
local REQ_WRITE = mask("rewrite", "access")
local RESP_READ = mask("header_filter", "body_filter", "log")
local RESP_WRITE = mask("header_filter")

local current        -- the current request
local stage = nil    -- the current stage name, nil at load time

local function check_stage(fname, m)
    if stage == nil or STAGE_BITS[stage] == nil or bit.band(m, STAGE_BITS[stage]) == 0 then
        error(fname .. ": not allowed " .. (stage and ("in stage " .. stage) or "at load time"), 3)
    end
    if bit.band(m, ALL - STAGE_BITS.init_worker - STAGE_BITS.timer) == m and current == nil then
        error(fname .. ": no current request", 3)
    end
end

local function record(fname, ...)
    local c = { fname, ... }
    current.calls[#current.calls + 1] = c
end

-- ---- headers: ordered lists of { name, value } ----

local MANAGED = {
    ["content-length"] = true, ["transfer-encoding"] = true, connection = true,
    ["keep-alive"] = true, upgrade = true, te = true, trailer = true,
    ["proxy-connection"] = true,
}

local function check_name(fname, name)
    if type(name) ~= "string" then
        error(fname .. ": bad argument #1 (string expected, got " .. type(name) .. ")", 4)
    end
    if not name:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
        error(fname .. ": invalid header name " .. string.format("%q", name), 4)
    end
    return name:lower()
end

local function check_values(fname, value)
    local list
    if type(value) == "string" then
        list = { value }
    elseif type(value) == "number" then
        list = { tostring(value) }
    elseif type(value) == "table" and #value > 0 then
        list = {}
        for i, v in ipairs(value) do
            if type(v) ~= "string" and type(v) ~= "number" then
                error(fname .. ": bad argument #2 (value " .. i .. " is a " .. type(v) .. ")", 4)
            end
            list[i] = tostring(v)
        end
    else
        error(fname .. ": bad argument #2 (string, number or array of strings expected, got " ..
              type(value) .. ")", 4)
    end
    for _, v in ipairs(list) do
        if v:find("[\r\n%z]") then
            error(fname .. ": invalid header value " .. string.format("%q", v), 4)
        end
    end
    return list
end

local function values_of(list, lname)
    local out = {}
    for _, h in ipairs(list) do
        if h[1]:lower() == lname then
            out[#out + 1] = h[2]
        end
    end
    return out
end

local function remove_all(list, lname)
    for i = #list, 1, -1 do
        if list[i][1]:lower() == lname then
            table.remove(list, i)
        end
    end
end

-- fake.header(list, name): every value of <name> joined with ", ", or nil.
function M.header(list, name)
    local v = values_of(list, name:lower())
    if #v == 0 then
        return nil
    end
    return table.concat(v, ", ")
end
M.header_values = function(list, name)
    return values_of(list, name:lower())
end

local function headers_table(list)
    local t = {}
    for _, h in ipairs(list) do
        local k = h[1]:lower()
        local old = t[k]
        if old == nil then
            t[k] = h[2]
        elseif type(old) == "table" then
            old[#old + 1] = h[2]
        else
            t[k] = { old, h[2] }
        end
    end
    return t
end

-- get/set/add/clear for one header list; <managed_ok> names the managed headers that may be
-- cleared (Content-Length in a response's header_filter).
local function header_api(prefix, read_mask, write_mask, list_of, clear_ok)
    local api = {}
    api.get_header = function(name)
        check_stage(prefix .. "get_header", read_mask)
        local lname = check_name(prefix .. "get_header", name)
        return M.header(list_of(), lname)
    end
    api.get_headers = function()
        check_stage(prefix .. "get_headers", read_mask)
        return headers_table(list_of())
    end
    local function writer(op)
        local fname = prefix .. op
        return function(name, value)
            check_stage(fname, write_mask)
            local lname = check_name(fname, name)
            if MANAGED[lname] and not (op == "clear_header" and clear_ok[lname]) then
                error(fname .. ": header " .. string.format("%q", lname) ..
                      " is managed by the gateway", 3)
            end
            local vals = op ~= "clear_header" and check_values(fname, value) or nil
            record(fname, name, value)
            local list = list_of()
            if op ~= "add_header" then
                remove_all(list, lname)
            end
            for _, v in ipairs(vals or {}) do
                list[#list + 1] = { name, v }
            end
        end
    end
    api.set_header = writer("set_header")
    api.add_header = writer("add_header")
    api.clear_header = writer("clear_header")
    return api
end

-- ---- query strings: ordered lists of { name, value }, as the SDK keeps them ----

local query = require "pgw.internal.query"

-- fake.query_string(r): the upstream query string after the policy's changes.
function M.query_string(r)
    return query.serialise(r.query)
end

-- ---- the SDK ----

local pgw = { version = "0.1.0-fake" }
M.pgw = pgw

local req = header_api("pgw.req.", REQ_READ, REQ_WRITE, function() return current.headers end, {})
pgw.req = req

local function reader(fname, field)
    return function()
        check_stage(fname, REQ_READ)
        return current[field]
    end
end
req.get_method = reader("pgw.req.get_method", "method")
req.get_path = reader("pgw.req.get_path", "path")
req.get_raw_path = reader("pgw.req.get_raw_path", "raw_path")
req.get_client_addr = reader("pgw.req.get_client_addr", "client_addr")
req.get_listener = reader("pgw.req.get_listener", "listener")
req.get_route = reader("pgw.req.get_route", "route")
req.get_scheme = reader("pgw.req.get_scheme", "scheme")
req.get_tls = reader("pgw.req.get_tls", "tls")
function req.get_path_params()
    check_stage("pgw.req.get_path_params", REQ_READ)
    local t = {}
    for k, v in pairs(current.path_params) do
        t[k] = v
    end
    return t
end
function req.get_query()
    check_stage("pgw.req.get_query", REQ_READ)
    return query.to_table(current.query)
end
function req.get_query_arg(name)
    check_stage("pgw.req.get_query_arg", REQ_READ)
    return query.first(current.query, name, "pgw.req.get_query_arg")
end
for _, op in ipairs({ "set_query_arg", "add_query_arg", "clear_query_arg" }) do
    local fname = "pgw.req." .. op
    req[op] = function(name, value)
        check_stage(fname, REQ_WRITE)
        query.apply(current.query, fname, op, name, value)
        record(fname, name, value)
    end
end

function req.set_path(path)
    check_stage("pgw.req.set_path", REQ_WRITE)
    if type(path) ~= "string" or path:sub(1, 1) ~= "/" or path:find("[%s%z?#]") then
        error("pgw.req.set_path: invalid path " .. string.format("%q", tostring(path)), 2)
    end
    record("pgw.req.set_path", path)
    current.path = path
end

function req.read_body()
    check_stage("pgw.req.read_body", REQ_WRITE)
    return current.body or ""
end
function req.set_body(body)
    check_stage("pgw.req.set_body", REQ_WRITE)
    if type(body) ~= "string" then
        error("pgw.req.set_body: bad argument #1 (string expected, got " .. type(body) .. ")", 2)
    end
    record("pgw.req.set_body", body)
    current.body = body
end

local resp = header_api("pgw.resp.", RESP_READ, RESP_WRITE, function() return current.resp.headers end,
                        { ["content-length"] = true })
pgw.resp = resp
function resp.get_status()
    check_stage("pgw.resp.get_status", RESP_READ)
    return current.resp.status
end
function resp.set_status(status)
    check_stage("pgw.resp.set_status", RESP_WRITE)
    if type(status) ~= "number" or status < 100 or status > 599 or status % 1 ~= 0 then
        error("pgw.resp.set_status: invalid status " .. tostring(status), 2)
    end
    record("pgw.resp.set_status", status)
    current.resp.status = status
end

function pgw.exit(status, body, headers)
    check_stage("pgw.exit", REQ_WRITE)
    if type(status) ~= "number" or status < 200 or status > 599 or status % 1 ~= 0 then
        error("pgw.exit: invalid status " .. tostring(status), 2)
    end
    if body ~= nil and type(body) ~= "string" then
        error("pgw.exit: bad argument #2 (string or nil expected, got " .. type(body) .. ")", 2)
    end
    if headers ~= nil and type(headers) ~= "table" then
        error("pgw.exit: bad argument #3 (table or nil expected, got " .. type(headers) .. ")", 2)
    end
    if current.exited then
        error("pgw.exit: the response is already decided", 2)
    end
    local list = {}
    local names = {}
    for k in pairs(headers or {}) do
        names[#names + 1] = k
    end
    table.sort(names)
    for _, k in ipairs(names) do
        local lname = check_name("pgw.exit", k)
        if MANAGED[lname] then
            error("pgw.exit: header " .. string.format("%q", lname) .. " is managed by the gateway", 2)
        end
        for _, v in ipairs(check_values("pgw.exit", headers[k])) do
            list[#list + 1] = { k, v }
        end
    end
    record("pgw.exit", status, body, headers)
    current.exited = { status = status, body = body, headers = list }
    current.resp = { status = status, headers = {} }
    for i, h in ipairs(list) do
        current.resp.headers[i] = { h[1], h[2] }
    end
    current.resp.body = body
end

function pgw.ctx()
    check_stage("pgw.ctx", REQ_READ)
    return current.ctx
end

pgw.log = {}
for _, level in ipairs({ "err", "warn", "info", "debug" }) do
    pgw.log[level] = function(...)
        local parts = {}
        for i = 1, select("#", ...) do
            parts[i] = tostring((select(i, ...)))
        end
        M.logs[#M.logs + 1] = { level, table.concat(parts) }
    end
end
M.logs = {}

-- pgw.json on Debian's lua-cjson, as the bridge will bind it.
local ok_cjson, cjson = pcall(require, "cjson.safe")
if ok_cjson then
    cjson.decode_max_depth(64)
    cjson.encode_max_depth(64)
    pgw.json = {
        null = cjson.null,
        empty_array = cjson.empty_array,
        decode = function(s)
            if type(s) ~= "string" then
                error("pgw.json.decode: bad argument #1 (string expected, got " .. type(s) .. ")", 2)
            end
            local v, err = cjson.decode(s)
            if v == nil and err then
                return nil, "invalid JSON: " .. err
            end
            return v
        end,
        encode = function(v)
            local s, err = cjson.encode(v)
            if s == nil then
                return nil, err
            end
            return s
        end,
    }
end
M.has_json = ok_cjson

-- ---- driving the fake ----

-- The sandbox's read-only view, simplified: reads see the data, writes raise, # and next see {};
-- the policy environment's pairs/ipairs (below) see through it, like the sandbox's.
local shadows = setmetatable({}, { __mode = "k" })
local function readonly(t)
    local shadow = {}
    for k, v in pairs(t) do
        shadow[k] = type(v) == "table" and readonly(v) or v
    end
    local view
    view = setmetatable({}, {
        __index = shadow,
        __newindex = function(_, k)
            error("attempt to modify a read-only table (field '" .. tostring(k) .. "')", 2)
        end,
        __metatable = false,
    })
    shadows[view] = shadow
    return view
end
M.readonly = readonly

local function env_pairs(t)
    return pairs(shadows[t] or t)
end
local function env_ipairs(t)
    return ipairs(shadows[t] or t)
end

-- A policy environment like sandbox.new_env's, as far as the built-ins can tell: its own
-- globals, pairs/ipairs that see through views, `require "pgw"` giving the fake SDK.
local function policy_env(name)
    local env = {
        pairs = env_pairs, ipairs = env_ipairs, _POLICY = name,
        require = function(mod)
            if mod == "pgw" then
                return pgw
            end
            return require(mod)
        end,
    }
    env._G = env
    return setmetatable(env, { __index = _G })
end

function M.install()
    package.loaded.pgw = pgw
    return pgw
end

-- fake.load(name): the built-in policy lua/pgw/policies/<name>.lua, loaded afresh in its own
-- environment (as the bridge loads a policy: docs/sdk.md, "Built-in policies").
function M.load(name)
    local path = "lua/pgw/policies/" .. name .. ".lua"
    local chunk = assert(loadfile(path))
    setfenv(chunk, policy_env(name))
    local p = chunk()
    local policy = require "pgw.policy"
    assert(policy.check(p))
    return p
end

-- fake.check(policy, conf): pgw.schema.check with the policy's name, as the config build does.
function M.check(p, conf)
    return schema.check(p.schema or {}, conf, p.name)
end

-- fake.configure(policy, conf): the read-only conf a stage receives; raises if conf is invalid.
function M.configure(p, conf)
    local ok, res = M.check(p, conf)
    if not ok then
        error(res, 2)
    end
    return readonly(res)
end

local function header_list(h)
    local list = {}
    if h == nil then
        return list
    end
    if #h > 0 then
        for i, x in ipairs(h) do
            list[i] = { x[1], x[2] }
        end
        return list
    end
    local names = {}
    for k in pairs(h) do
        names[#names + 1] = k
    end
    table.sort(names)
    for _, k in ipairs(names) do
        local v = h[k]
        for _, x in ipairs(type(v) == "table" and v or { v }) do
            list[#list + 1] = { k, x }
        end
    end
    return list
end

-- fake.request{...}: a new current request. Fields: method ("GET"), path ("/"), raw_path (path),
-- query (a string "a=1&b"), headers (map or list of {name, value}), body, client_addr
-- ("127.0.0.1"), listener ("public"), route ("test"), scheme ("http"), path_params ({}),
-- tls (nil: plain; else the table pgw.req.get_tls() returns),
-- resp = { status = 200, headers = ..., } (what the upstream answers).
function M.request(o)
    o = o or {}
    local r = {
        method = o.method or "GET",
        path = o.path or "/",
        raw_path = o.raw_path or o.path or "/",
        query = query.parse(o.query or ""),
        headers = header_list(o.headers),
        body = o.body,
        client_addr = o.client_addr or "127.0.0.1",
        listener = o.listener or "public",
        route = o.route or "test",
        scheme = o.scheme or "http",
        tls = o.tls,
        path_params = o.path_params or {},
        ctx = {},
        calls = {},
        resp = { status = (o.resp and o.resp.status) or 200,
                 headers = header_list(o.resp and o.resp.headers) },
    }
    r.handle = setmetatable({}, { __index = req, __metatable = "pgw.req" })
    current = r
    M.logs = {}
    return r
end

-- fake.run(policy, conf, stage, ...): calls policy[stage](conf, req, ...) in <stage>, like the
-- bridge; returns what it returns. A stage the policy does not define is a no-op.
function M.run(p, conf, st, ...)
    assert(STAGE_BITS[st], "unknown stage " .. tostring(st))
    local fn = p[st]
    if fn == nil then
        return nil
    end
    local prev = stage
    stage = st
    local res = { pcall(fn, conf, current and current.handle, ...) }
    stage = prev
    if not res[1] then
        error(res[2], 0)
    end
    return unpack(res, 2, table.maxn(res))
end

-- fake.run_body(policy, conf, chunks): body_filter over <chunks> (the last one has eof = true),
-- as the bridge calls it; returns the concatenated output (a nil return passes the chunk on).
function M.run_body(p, conf, chunks)
    local out = {}
    for i, c in ipairs(chunks) do
        local r = M.run(p, conf, "body_filter", c, i == #chunks)
        if r == nil then
            r = c
        end
        out[#out + 1] = r
    end
    return table.concat(out)
end

-- fake.pipeline(policies, r): runs a list of { policy, conf } through the stages in pipeline
-- order like the bridge (rewrite, access; if no pgw.exit, the upstream answers r.resp; then
-- header_filter, body_filter over r.resp.chunks or { r.resp.body or "" }, log).
function M.pipeline(list, upstream_body_chunks)
    local r = current
    for _, st in ipairs({ "rewrite", "access" }) do
        for _, pc in ipairs(list) do
            M.run(pc[1], pc[2], st)
            if r.exited then
                break
            end
        end
        if r.exited then
            break
        end
    end
    local chunks = r.exited and { r.exited.body or "" } or upstream_body_chunks or { "" }
    for _, pc in ipairs(list) do
        M.run(pc[1], pc[2], "header_filter")
    end
    for _, pc in ipairs(list) do
        local out = {}
        for i, c in ipairs(chunks) do
            local x = M.run(pc[1], pc[2], "body_filter", c, i == #chunks)
            out[#out + 1] = x == nil and c or x
        end
        chunks = out
    end
    r.resp.body = table.concat(chunks)
    for _, pc in ipairs(list) do
        M.run(pc[1], pc[2], "log")
    end
    return r
end

-- fake.set_stage(name): for specs that call pgw functions directly.
function M.set_stage(st)
    stage = st
end

return M
