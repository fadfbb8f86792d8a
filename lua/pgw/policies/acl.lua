-- acl: allows or refuses requests by path, method and consumer group, in `access`.
--
-- The rules are tried in order against the request; the first rule that matches decides
-- (`action`), and when none matches `default` decides. A refused request is answered `status`
-- with the JSON body {"message": <message>} and Content-Type: application/json, the upstream is
-- not contacted, and the refusal is logged at info level ("denied GET /admin/users (rule 3)").
--
-- A rule matches when all of its conditions hold:
--   path     the path, compared with pgw.req.get_path(): the NORMALISED path (docs/http.md,
--            gateway/route.h: dot segments removed, runs of "/" merged, percent-encoded
--            unreserved characters decoded), never the raw one. So "/admin", "//admin",
--            "/./admin", "/x/../admin" and "/%61dmin" are all the path "/admin" and one rule
--            covers them. Paths are case-sensitive: "/ADMIN" is another path.
--            A path ending in "/" is a prefix, with the router's meaning: "/admin/" matches
--            "/admin" itself and everything below it ("/admin/users"), not "/administrator";
--            "/" matches every path. Any other path matches exactly.
--            Rule paths must be written normalised (checked: no "//", no "." or ".." segment,
--            no %XX of a letter, digit or -._~, hex digits upper-case), since a path that is
--            not normalised could never match.
--   methods  optional: the request method is one of these (exact, case-sensitive: "GET"; HEAD
--            is not implied by GET)
--   groups   optional: the consumer is in one of these groups. The consumer's groups are
--            pgw.ctx()["consumer.groups"], an array of strings (or one string) that an
--            authentication policy listed before acl sets; a request without them matches no
--            rule that has `groups`.
--
-- Config:
--   rules    array of { path = string, methods = [string], groups = [string],
--            action = "allow" | "deny" }; default {} (then `default` decides alone)
--   default  "allow" | "deny": the decision when no rule matches; default "allow"
--   status   the status of a refusal, 200..599; default 403
--   message  the "message" of the refusal's JSON body; default "Forbidden"
--
-- A rule path that is not normalised is reported as `acl.rules[2].path: ...` by check_conf(conf)
-- below, logged as an error by init_worker when a worker starts the generation, and raised again
-- by every request the entry sees (answered 500, never let through).
--
-- Example (route config): admins everywhere under /admin/, auditors read-only, nobody else.
--   policies:
--     - key_auth: {}          # sets pgw.ctx()["consumer.groups"]
--     - acl:
--         rules:
--           - { path: /admin/, groups: [admins], action: allow }
--           - { path: /admin/, methods: [GET, HEAD], groups: [auditors], action: allow }
--           - { path: /admin/, action: deny }

local pgw = require "pgw"

local ipairs, pcall, setmetatable, tostring, tonumber, error, type =
    ipairs, pcall, setmetatable, tostring, tonumber, error, type
local byte, char, find, format, sub =
    string.byte, string.char, string.find, string.format, string.sub

local GROUPS_KEY = "consumer.groups" -- pgw.ctx() key set by authentication policies
local JSON_HEADERS = { ["Content-Type"] = "application/json" }

-- conf (a read-only view, one per listener or route entry and generation) -> compiled rules
local compiled = setmetatable({}, { __mode = "k" })

local function is_hex_upper(c)
    return (c >= 48 and c <= 57) or (c >= 65 and c <= 70) -- 0-9 A-F
end

local function is_unreserved(c)
    return (c >= 48 and c <= 57) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122) or
        c == 45 or c == 46 or c == 95 or c == 126 -- - . _ ~
end

-- nil when <path> is what the router's normalisation could produce, else the reason.
local function not_normalised(path)
    if byte(path, 1) ~= 47 then
        return "must start with \"/\""
    end
    if find(path, "//", 1, true) then
        return "must not contain \"//\""
    end
    local seg = path .. "/"
    if find(seg, "/./", 1, true) or find(seg, "/../", 1, true) then
        return "must not contain \".\" or \"..\" segments"
    end
    for i = 1, #path do
        local c = byte(path, i)
        if c <= 32 or c >= 127 or c == 63 or c == 35 then -- controls, space, non-ASCII, ? #
            return "must not contain spaces, control or non-ASCII bytes, \"?\" or \"#\""
        end
        if c == 37 then -- %XX
            local h1, h2 = byte(path, i + 1), byte(path, i + 2)
            if not (h1 and h2 and is_hex_upper(h1) and is_hex_upper(h2)) then
                return "percent-escapes must be %XX with upper-case hex digits"
            end
            local v = tonumber(sub(path, i + 1, i + 2), 16)
            if is_unreserved(v) then
                return format("must not encode %q as %s (the path is compared decoded)",
                              char(v), sub(path, i, i + 2))
            end
        end
    end
    return nil
end

local function set_of(list)
    if list == nil then
        return nil
    end
    local s = {}
    for _, v in ipairs(list) do
        s[v] = true
    end
    return s
end

-- { rules = { { exact, prefix, methods, groups, allow } ... }, default_allow, body }; raises on
-- a rule path that is not normalised.
local function compile(conf)
    local c = compiled[conf]
    if c ~= nil then
        return c
    end
    local rules = {}
    for i, r in ipairs(conf.rules) do
        local path = r.path
        local why = not_normalised(path)
        if why then
            error(format("acl.rules[%d].path: %s, got %q", i, why, path), 0)
        end
        local rule = { allow = r.action == "allow", methods = set_of(r.methods),
                       groups = set_of(r.groups) }
        if sub(path, -1) == "/" then
            rule.prefix = path
            rule.exact = sub(path, 1, -2) -- "/admin/" also matches "/admin"; "/" gives ""
        else
            rule.exact = path
        end
        rules[i] = rule
    end
    c = { rules = rules, default_allow = conf.default == "allow",
          body = pgw.json.encode({ message = conf.message }) }
    compiled[conf] = c
    return c
end

local function path_matches(rule, path)
    if path == rule.exact then
        return true
    end
    local p = rule.prefix
    return p ~= nil and sub(path, 1, #p) == p
end

local function in_groups(rule_groups, groups)
    if type(groups) == "string" then
        return rule_groups[groups] == true
    end
    if type(groups) ~= "table" then
        return false
    end
    for _, g in ipairs(groups) do
        if rule_groups[g] then
            return true
        end
    end
    return false
end

return {
    name = "acl",

    schema = {
        rules = {
            type = "array",
            default = {},
            items = {
                type = "map",
                fields = {
                    path = { type = "string", required = true, min = 1 },
                    methods = { type = "array", min = 1, items = { type = "string", min = 1 } },
                    groups = { type = "array", min = 1, items = { type = "string", min = 1 } },
                    action = { type = "string", required = true, enum = { "allow", "deny" } },
                },
            },
        },
        default = { type = "string", enum = { "allow", "deny" }, default = "allow" },
        status = { type = "integer", min = 200, max = 599, default = 403 },
        message = { type = "string", default = "Forbidden" },
    },

    -- check_conf(conf) -> true | nil, message: the checks the schema cannot express (normalised
    -- rule paths), for a config check to call after pgw.schema.check.
    check_conf = function(conf)
        local ok, err = pcall(compile, conf)
        if ok then
            return true
        end
        return nil, type(err) == "string" and err or tostring(err)
    end,

    -- Compiles each entry's conf before traffic: a bad conf is logged at start and reload
    -- ("policy acl: stage init_worker: ...") rather than first seen at a request.
    init_worker = function(conf)
        compile(conf)
    end,

    access = function(conf)
        local c = compile(conf)
        local path = pgw.req.get_path()
        local method = pgw.req.get_method()
        local groups -- read once, and only if a rule asks
        local allow, which = c.default_allow, "default"
        for i, rule in ipairs(c.rules) do
            if path_matches(rule, path) and (rule.methods == nil or rule.methods[method]) then
                local ok = true
                if rule.groups ~= nil then
                    if groups == nil then
                        groups = pgw.ctx()[GROUPS_KEY] or false
                    end
                    ok = in_groups(rule.groups, groups)
                end
                if ok then
                    allow, which = rule.allow, "rule " .. i
                    break
                end
            end
        end
        if allow then
            return
        end
        pgw.log.info("denied ", method, " ", path, " (", which, ")")
        return pgw.exit(conf.status, c.body, JSON_HEADERS)
    end,
}
