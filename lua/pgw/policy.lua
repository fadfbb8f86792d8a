-- pgw.policy: what a policy file is, and the check the loader applies to it.
--
-- A policy file returns a table:
--
--   local pgw = require "pgw"
--   return {
--       name = "key_auth",                 -- optional; defaults to the file name
--       schema = { header = { type = "string", default = "apikey" } },   -- optional
--       access = function(conf, req) ... end,
--       log = function(conf, req) ... end,
--   }
--
-- Stage functions are called as fn(conf, req); `conf` is the route's validated, read-only
-- configuration. Stages run in pipeline order, and within a stage in the route's list order:
--   rewrite -> access -> [proxy] -> header_filter -> body_filter -> log
-- plus init_worker, called once per worker after load, and, on a WebSocket route, once the
-- upgrade succeeded: ws_connect(conf) -> ws_message(conf, msg) for each message -> ws_close(conf,
-- info) (docs/sdk.md, docs/websocket.md). Stage functions and everything they call from the
-- policy run with the JIT off and under the CPU budget (docs/lua.md).

local schema = require "pgw.schema"

local M = {}

-- pgw.policy.STAGES
-- Syntax: pgw.policy.STAGES[i]
-- Stages: all. Yields: no.
-- Returns: the stage names, in pipeline order, that a policy table may define.
-- Example: for _, s in ipairs(pgw.policy.STAGES) do ... end
M.STAGES = { "init_worker", "rewrite", "access", "header_filter", "body_filter", "log",
             "ws_connect", "ws_message", "ws_close" }

-- pgw.policy.check(tbl)
-- Syntax: ok, err = pgw.policy.check(tbl)
-- Stages: all, and at load time. Yields: no.
-- Returns: true, or nil and a message naming the first offending field. Fields that are
-- neither a stage, `name` nor `schema` are allowed (helpers, constants); a field named like a
-- stage must be a function; `schema` must be a valid schema (pgw.schema.check_schema, whose
-- message is returned as "field 'schema': <field>: <message>"). A route's config for the
-- policy is then checked with pgw.schema.check(tbl.schema or {}, conf, name).
-- Example: assert(pgw.policy.check({ access = function() end }))
function M.check(tbl)
    if type(tbl) ~= "table" then
        return nil, "a policy must return a table, got " .. type(tbl)
    end
    if tbl.name ~= nil and type(tbl.name) ~= "string" then
        return nil, "field 'name' must be a string"
    end
    if tbl.schema ~= nil and type(tbl.schema) ~= "table" then
        return nil, "field 'schema' must be a table"
    end
    if tbl.schema ~= nil then
        local ok, err = schema.check_schema(tbl.schema)
        if not ok then
            return nil, "field 'schema': " .. err
        end
    end
    for _, s in ipairs(M.STAGES) do
        local fn = tbl[s]
        if fn ~= nil and type(fn) ~= "function" then
            return nil, "stage '" .. s .. "' must be a function, got " .. type(fn)
        end
    end
    return true
end

return M
