-- pgw/internal/engine.lua: the trusted half of gateway/policy.c, which builds policy sets.
-- Never reachable from a policy (`require` refuses "pgw.internal.*"). Every function here is
-- called by C under the CPU guard (pgw_lua_call_guarded): the policy tables it reads are
-- untrusted and may carry metatables.

local policy = require "pgw.policy"
local schema = require "pgw.schema"
local core = require "pgw.core"

local type, pairs, rawget = type, pairs, rawget
local NULL = core.json.null

local M = {}

-- check(tbl) -> true | nil, message: the policy table's shape (pgw.policy.check).
M.check = policy.check

-- YAML `key: ~` arrives as JSON null: treat it as an absent key.
local function strip_nulls(t)
    for k, v in pairs(t) do
        if v == NULL then
            t[k] = nil
        elseif type(v) == "table" then
            strip_nulls(v)
        end
    end
    return t
end

-- conf(tbl, json_text, name, readonly) -> view | nil, message: a route's settings for the
-- policy <tbl>, checked against its schema (defaults filled), as a read-only view.
function M.conf(tbl, json_text, name, readonly)
    local conf, err = core.json.decode(json_text)
    if conf == nil then
        return nil, name .. ": " .. tostring(err)
    end
    if type(conf) ~= "table" then
        return nil, name .. ": settings must be a map"
    end
    local sch = rawget(tbl, "schema") or {}
    local ok, res = schema.check(sch, strip_nulls(conf), name)
    if not ok then
        return nil, res
    end
    local view = readonly(res)
    -- A policy may check what its schema cannot express (a CIDR, a normalised path, a field
    -- needed by another's value): check_conf(conf) -> true | nil, message.
    local check = rawget(tbl, "check_conf")
    if type(check) == "function" then
        local ok2, err2 = check(view)
        if not ok2 then
            return nil, name .. ": " .. tostring(err2)
        end
    end
    return view
end

-- Usage plans (config `plans:`): name -> { rate = { limit, per, burst }, quota = { limit,
-- per = "day" | "month" }, routes = [names], methods = [names] }.
local PLAN = {
    rate = { type = "map", fields = {
        limit = { type = "integer", min = 1, required = true },
        per = { type = "duration", default = "1s" },
        burst = { type = "integer", min = 0, default = 0 },
    } },
    quota = { type = "map", fields = {
        limit = { type = "integer", min = 1, required = true },
        per = { type = "string", enum = { "day", "month" }, required = true },
    } },
    routes = { type = "array", items = { type = "string" } },
    methods = { type = "array", items = { type = "string" } },
    description = { type = "string" },
}

-- plans(json_text, readonly) -> view of name -> plan | nil, message
function M.plans(json_text, readonly)
    local plans, err = core.json.decode(json_text)
    if type(plans) ~= "table" then
        return nil, "plans: " .. tostring(err or "must be a map")
    end
    local out = {}
    for name, spec in pairs(strip_nulls(plans)) do
        local ok, res = schema.check(PLAN, spec, "plans." .. tostring(name))
        if not ok then
            return nil, res
        end
        out[name] = res
    end
    return readonly(out)
end

-- stages(tbl) -> rewrite, access, header_filter, body_filter, log, ws_connect, ws_message,
-- ws_close, init_worker (functions or nil; the order of enum pgw_policy_stage_idx), read raw so
-- that no metamethod of the policy runs.
function M.stages(tbl)
    return rawget(tbl, "rewrite"), rawget(tbl, "access"), rawget(tbl, "header_filter"),
        rawget(tbl, "body_filter"), rawget(tbl, "log"), rawget(tbl, "ws_connect"),
        rawget(tbl, "ws_message"), rawget(tbl, "ws_close"), rawget(tbl, "init_worker")
end

return M
