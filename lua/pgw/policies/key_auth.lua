-- key_auth: identifies the caller by an API key kept in the gateway's store (`passerelle keys
-- add|import`, docs/store.md). Keys are stored as HMAC-SHA-256 under the server secret: the
-- lookup never compares a clear key.
--
-- In `access`:
--   1. removes every client-sent copy of the identity headers it sets (they cannot be forged);
--   2. reads the key from the first of `header` (a request header) or `query` (a query argument)
--      present, and removes it before the request goes upstream (unless hide_credentials: false);
--   3. no key: 401 with WWW-Authenticate, unless `anonymous` names a consumer to run as (or an
--      earlier auth policy already identified the caller: then nothing is done, so a route may
--      accept a key or a token);
--   4. unknown, suspended, revoked or expired key: the same answer for all four (`status`, 401 by
--      default, or 403), and an info log line naming the client and the reason;
--   5. known key: the consumer, its plan and groups go to pgw.ctx() (`consumer`, `consumer.key_id`,
--      `consumer.plan`, `consumer.groups`) for later policies (rate_limit, acl), and to the
--      identity headers for the upstream; a plan that names routes or methods refuses the others
--      with 403.
--
-- Config:
--   header            request header carrying the key; default "apikey" (empty: not read)
--   query             query argument carrying the key; default none
--   hide_credentials  remove the key before forwarding; default true
--   status            answer for a bad key, 401 or 403; default 401
--   anonymous         consumer to run as when no key is given; default none (401)
--   realm             realm of the WWW-Authenticate challenge; default "passerelle"
--   headers           identity headers set for the upstream: { consumer, key_id, plan, groups };
--                     default { consumer = "X-Consumer", key_id = "X-Key-Id" }
--
-- Example (route config):
--   policies:
--     - key_auth: { header: apikey, headers: { consumer: X-Consumer, plan: X-Plan } }
--     - rate_limit: { by: consumer, limit: 100, window: 1m }

local pgw = require "pgw"

local ctx, exit, log_info = pgw.ctx, pgw.exit, pgw.log.info
local req = pgw.req
local clear_header, set_header, get_header = req.clear_header, req.set_header, req.get_header
local lookup, now = pgw.keys.lookup, pgw.time.now

-- Per conf (a read-only view, the same for every request of a generation): the identity header
-- names as an array, computed once.
local header_names = setmetatable({}, { __mode = "k" })

local function names_of(conf)
    local list = header_names[conf]
    if list == nil then
        list = {}
        for _, name in pairs(conf.headers) do
            list[#list + 1] = name
        end
        header_names[conf] = list
    end
    return list
end

local function split_groups(s)
    local out = {}
    if s == nil or s == "" then
        return out
    end
    for g in string.gmatch(s, "[^,%s]+") do
        out[#out + 1] = g
    end
    return out
end

local function json_message(msg)
    return '{"message":"' .. msg .. '"}\n'
end

local function identify(conf, info)
    local c = ctx()
    c.consumer = info.consumer
    c["consumer.key_id"] = info.id
    c["consumer.plan"] = info.plan ~= "" and info.plan or nil
    c["consumer.groups"] = split_groups(info.groups)
    local h = conf.headers
    if h.consumer then set_header(h.consumer, info.consumer) end
    if h.key_id and info.id then set_header(h.key_id, info.id) end
    if h.plan and info.plan ~= "" then set_header(h.plan, info.plan) end
    if h.groups and info.groups ~= "" then set_header(h.groups, info.groups) end
end

-- A plan may restrict routes and methods.
local function plan_allows(plan_name)
    local plan = plan_name and plan_name ~= "" and pgw.plan(plan_name)
    if not plan then
        return true
    end
    local function listed(list, value, fold)
        if list == nil then return true end
        for _, v in ipairs(list) do
            if v == value or (fold and string.upper(v) == value) then return true end
        end
        return false
    end
    return listed(plan.routes, req.get_route()) and listed(plan.methods, req.get_method(), true)
end

local function read_key(conf)
    local header = conf.header
    if header ~= "" then
        local v = get_header(header)
        if v then
            if conf.hide_credentials then clear_header(header) end
            return v
        end
    end
    if conf.query then
        local v = req.get_query_arg(conf.query)
        if type(v) == "string" then
            if conf.hide_credentials then req.clear_query_arg(conf.query) end
            return v
        end
    end
    return nil
end

return {
    name = "key_auth",

    schema = {
        header = { type = "string", default = "apikey" },
        query = { type = "string", min = 1 },
        hide_credentials = { type = "boolean", default = true },
        status = { type = "integer", enum = { 401, 403 }, default = 401 },
        anonymous = { type = "string", min = 1 },
        realm = { type = "string", default = "passerelle" },
        headers = { type = "map", fields = {
            consumer = { type = "string", min = 1 },
            key_id = { type = "string", min = 1 },
            plan = { type = "string", min = 1 },
            groups = { type = "string", min = 1 },
        }, default = { consumer = "X-Consumer", key_id = "X-Key-Id" } },
    },

    access = function(conf)
        local identified = ctx().consumer ~= nil -- by an earlier auth policy
        if not identified then
            local names = names_of(conf)
            for i = 1, #names do
                clear_header(names[i]) -- a client cannot send its own identity
            end
        end
        local key = read_key(conf)
        if key == nil then
            if identified then
                return -- keep what the earlier policy set
            end
            if conf.anonymous then
                local c = pgw.keys.consumer(conf.anonymous)
                identify(conf, { consumer = conf.anonymous, plan = c and c.plan or "",
                                 groups = c and c.groups or "" })
                return
            end
            local where = conf.header ~= "" and ('header="' .. conf.header .. '"')
                or ('query="' .. (conf.query or "") .. '"')
            return exit(401, json_message("no API key in the request"),
                        { ["Content-Type"] = "application/json",
                          ["WWW-Authenticate"] = 'ApiKey realm="' .. conf.realm .. '", ' .. where })
        end
        local info, err = lookup(key)
        local why = err and ("store error: " .. err) or (info == nil and "unknown key")
            or (info.status ~= "active" and (info.status .. " key " .. info.id))
            or (info.expires > 0 and info.expires <= now() and ("expired key " .. info.id))
        if why then
            log_info("refused ", req.get_client_addr(), ": ", why)
            local headers = { ["Content-Type"] = "application/json" }
            if conf.status == 401 then -- RFC 9110: every 401 carries a challenge
                headers["WWW-Authenticate"] = 'ApiKey realm="' .. conf.realm ..
                    '", error="invalid_key"'
            end
            return exit(conf.status, json_message("invalid API key"), headers)
        end
        if info.plan ~= "" and not plan_allows(info.plan) then
            log_info("refused ", req.get_client_addr(), ": plan ", info.plan, " of ",
                     info.consumer, " does not allow this route or method")
            return exit(403, json_message("not allowed by your plan"),
                        { ["Content-Type"] = "application/json" })
        end
        identify(conf, info)
    end,
}
