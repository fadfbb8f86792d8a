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

local query = require "pgw.internal.query"

for _, name in ipairs({ "resp", "log", "json", "time", "base64", "crypto", "cache", "timer",
                        "http", "store", "keys", "ip", "jwt", "ws" }) do
    pgw[name] = core[name]
end
pgw.exit, pgw.ctx, pgw.const_eq, pgw.sleep = core.exit, core.ctx, core.const_eq, core.sleep
pgw.plan = core.plan

local req = {}
for k, v in pairs(core.req) do
    req[k] = v
end

local get_raw_query, set_raw_query = core.req.get_raw_query, core.req.set_raw_query

-- pgw.req.get_query(): a new table name -> value (decoded); repeated names -> array; bare
-- flags -> true. Stages: request stages. Yields: no.
function req.get_query()
    return query.to_table(query.parse(get_raw_query()))
end

-- pgw.req.get_query_arg(name): the first value, true for a bare flag, or nil.
function req.get_query_arg(name)
    return query.first(query.parse(get_raw_query()), name, "pgw.req.get_query_arg")
end

-- pgw.req.set_query_arg / add_query_arg / clear_query_arg(name[, value]): edit the query string
-- sent upstream (re-encoded).
for _, op in ipairs({ "set_query_arg", "add_query_arg", "clear_query_arg" }) do
    local fname = "pgw.req." .. op
    req[op] = function(name, value)
        local list = query.parse(get_raw_query())
        query.apply(list, fname, op, name, value)
        set_raw_query(query.serialise(list))
    end
end
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
