-- pgw: the SDK, reached from a policy with `local pgw = require "pgw"`. docs/sdk.md documents
-- every function (syntax, stages, yields, returns, example).
--
-- Compiled to bytecode at build time (tools/luabc) and linked into ./passerelle: the gateway
-- never reads these files at run time. A policy sees every SDK table through a read-only view
-- (writing a field raises "attempt to modify a read-only table"). The functions come from the C
-- bridge (`pgw.core`, gateway/lua_*.c); the query-string helpers below are Lua over its
-- get_raw_query/set_raw_query.

local pgw = {}

-- pgw.version
-- Syntax: pgw.version
-- Stages: all, and at load time. Yields: no.
-- Returns: the SDK version string, "<major>.<minor>.<patch>".
-- Example: if pgw.version < "1" then ... end
pgw.version = "0.2.0"

-- pgw.policy: the policy file format and its checks (see lua/pgw/policy.lua).
pgw.policy = require "pgw.policy"
pgw.schema = require "pgw.schema"

-- The C bridge is absent in the spec runner's plain states (build/luarun).
local ok, core = pcall(require, "pgw.core")
if not ok then
    return pgw
end

local type, tostring, ipairs, error, select = type, tostring, ipairs, error, select
local byte, char, format, gsub, find, sub = string.byte, string.char, string.format,
    string.gsub, string.find, string.sub
local concat, remove = table.concat, table.remove

for _, name in ipairs({ "resp", "log", "json", "time", "base64", "crypto", "cache", "timer",
                        "http" }) do
    pgw[name] = core[name]
end
pgw.exit, pgw.ctx, pgw.const_eq, pgw.sleep = core.exit, core.ctx, core.const_eq, core.sleep

-- ---- query strings: ordered lists of { name, value } (value true for a bare "flag") ----

local function unescape(s)
    s = gsub(s, "+", " ")
    return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

local function escape(s)
    return (gsub(s, "[^%w%-._~]", function(c) return format("%%%02X", byte(c)) end))
end

local function parse_query(q)
    local list = {}
    for part in string.gmatch(q, "[^&]+") do
        local eq = find(part, "=", 1, true)
        if eq then
            list[#list + 1] = { unescape(sub(part, 1, eq - 1)), unescape(sub(part, eq + 1)) }
        else
            list[#list + 1] = { unescape(part), true }
        end
    end
    return list
end

local function serialise(list)
    local parts = {}
    for i, a in ipairs(list) do
        parts[i] = a[2] == true and escape(a[1]) or (escape(a[1]) .. "=" .. escape(a[2]))
    end
    return concat(parts, "&")
end

local req = {}
for k, v in pairs(core.req) do
    req[k] = v
end

-- pgw.req.get_query(): a new table name -> value (decoded); repeated names -> array; bare
-- flags -> true. Stages: request stages. Yields: no.
function req.get_query()
    local t = {}
    for _, a in ipairs(parse_query(core.req.get_raw_query())) do
        local old = t[a[1]]
        if old == nil then
            t[a[1]] = a[2]
        elseif type(old) == "table" then
            old[#old + 1] = a[2]
        else
            t[a[1]] = { old, a[2] }
        end
    end
    return t
end

-- pgw.req.get_query_arg(name): the first value, true for a bare flag, or nil.
function req.get_query_arg(name)
    if type(name) ~= "string" then
        error("pgw.req.get_query_arg: bad argument #1 (string expected, got " .. type(name) .. ")", 2)
    end
    for _, a in ipairs(parse_query(core.req.get_raw_query())) do
        if a[1] == name then
            return a[2]
        end
    end
    return nil
end

local function query_writer(op)
    local fname = "pgw.req." .. op
    return function(name, value)
        if type(name) ~= "string" or name == "" then
            error(fname .. ": bad argument #1 (non-empty string expected)", 2)
        end
        local vals
        if op ~= "clear_query_arg" then
            if type(value) == "string" or type(value) == "number" or value == true then
                vals = { value == true and true or tostring(value) }
            elseif type(value) == "table" and #value > 0 then
                vals = {}
                for i, v in ipairs(value) do
                    vals[i] = tostring(v)
                end
            else
                error(fname .. ": bad argument #2 (string, number, true or array expected, got " ..
                      type(value) .. ")", 2)
            end
        end
        local list = parse_query(core.req.get_raw_query())
        if op ~= "add_query_arg" then
            for i = #list, 1, -1 do
                if list[i][1] == name then
                    remove(list, i)
                end
            end
        end
        for _, v in ipairs(vals or {}) do
            list[#list + 1] = { name, v }
        end
        core.req.set_raw_query(serialise(list))
    end
end
req.set_query_arg = query_writer("set_query_arg")
req.add_query_arg = query_writer("add_query_arg")
req.clear_query_arg = query_writer("clear_query_arg")
pgw.req = req

-- The `req` argument of stage functions: req:get_header("a") == pgw.req.get_header("a"), but a
-- handle kept past its request raises "request already finished".
local check_handle = core.check_handle
local methods = {}
for k, f in pairs(req) do
    methods[k] = function(self, ...)
        check_handle(self)
        return f(...)
    end
end
core.set_handle_methods(methods)

return pgw
