-- lua/pgw/policies/acl.lua under the fake host (end to end, with the gateway's path
-- normalisation, in spec/e2e/test_acl.py).
local fake = require "fake_pgw"
local pgw = fake.install()
local acl = fake.load("acl")
local H = fake.header

-- The fake hands the policy `path` as pgw.req.get_path() (the normalised path) and `raw_path`
-- as pgw.req.get_raw_path().
local function run(conf, o)
    local r = fake.request{ method = o.method or "GET", path = o.path, raw_path = o.raw_path }
    if o.groups ~= nil then
        r.ctx["consumer.groups"] = o.groups
    end
    fake.pipeline({ { acl, fake.configure(acl, conf) } })
    return r
end

local function denied(conf, o)
    local r = run(conf, o)
    return r.exited ~= nil and r.exited.status == (conf.status or 403)
end

local ADMIN = {
    rules = {
        { path = "/admin/", methods = { "GET", "HEAD" }, groups = { "auditors" }, action = "allow" },
        { path = "/admin/", groups = { "admins" }, action = "allow" },
        { path = "/admin/", action = "deny" },
        { path = "/secret", action = "deny" },
    },
}

local function check_conf(conf)
    local ok, c = fake.check(acl, conf)
    assert.truthy(ok, c)
    return acl.check_conf(fake.readonly(c))
end

describe("schema", function()
    it("has defaults", function()
        local ok, conf = fake.check(acl, {})
        assert.truthy(ok)
        assert.same({ rules = {}, default = "allow", status = 403, message = "Forbidden" }, conf)
    end)
    it("refuses bad configs with the path", function()
        local function err(c) local ok, e = fake.check(acl, c); assert.equal(nil, ok); return e end
        assert.equal('acl.default: expected one of "allow", "deny", got "block"',
                     err({ default = "block" }))
        assert.equal("acl.rules[1].action: required field missing", err({ rules = { { path = "/" } } }))
        assert.equal('acl.rules[1].action: expected one of "allow", "deny", got "permit"',
                     err({ rules = { { path = "/", action = "permit" } } }))
        assert.equal("acl.rules[1].path: required field missing", err({ rules = { { action = "deny" } } }))
        assert.equal("acl.rules[1].methods: number of items must be at least 1, got 0",
                     err({ rules = { { path = "/", action = "deny", methods = {} } } }))
        assert.equal("acl.rules[1].groups[1]: expected a string, got number",
                     err({ rules = { { path = "/", action = "deny", groups = { 1 } } } }))
        assert.equal("acl.rules[1].method: unknown field",
                     err({ rules = { { path = "/", action = "deny", method = "GET" } } }))
        assert.equal("acl.status: value must be at least 200, got 100", err({ status = 100 }))
    end)
    it("check_conf accepts normalised rule paths", function()
        for _, p in ipairs({ "/", "/admin", "/admin/", "/a%20b", "/a%2Fb", "/%C3%A9t%C3%A9/",
                             "/a.b/c..d/.e", "/..x", "/a-b_c~d" }) do
            assert.equal(true, check_conf({ rules = { { path = p, action = "deny" } } }), p)
        end
    end)
    it("check_conf refuses rule paths that could never match", function()
        local SEG = 'must not contain "." or ".." segments'
        local PCT = "percent-escapes must be %XX with upper-case hex digits"
        local BYTES = 'must not contain spaces, control or non-ASCII bytes, "?" or "#"'
        local DEC = "(the path is compared decoded)"
        local cases = {
            ["admin"] = 'must start with "/"',
            ["//admin"] = 'must not contain "//"',
            ["/a//b/"] = 'must not contain "//"',
            ["/./admin"] = SEG,
            ["/x/../admin"] = SEG,
            ["/admin/.."] = SEG,
            ["/admin/."] = SEG,
            ["/%61dmin"] = 'must not encode "a" as %61 ' .. DEC,
            ["/a%7E"] = 'must not encode "~" as %7E ' .. DEC,
            ["/a%2fb"] = PCT,
            ["/a%2"] = PCT,
            ["/a b"] = BYTES,
            ["/a?x=1"] = BYTES,
        }
        for p, want in pairs(cases) do
            local ok, e = check_conf({ rules = { { path = "/ok", action = "allow" },
                                                 { path = p, action = "deny" } } })
            assert.equal(nil, ok, p)
            assert.equal(string.format("acl.rules[2].path: %s, got %q", want, p), e, p)
        end
    end)
    it("raises in init_worker and at every request when a rule path is not normalised", function()
        local _, c = fake.check(acl, { rules = { { path = "//admin", action = "deny" } } })
        assert.error_matches(function() fake.run(acl, fake.readonly(c), "init_worker") end,
                             'acl.rules[1].path: must not contain "//"')
        fake.request{ path = "/admin" }
        assert.error_matches(function() fake.run(acl, fake.readonly(c), "access") end,
                             'acl.rules[1].path: must not contain "//"')
    end)
end)

describe("rules", function()
    it("deny a prefix: the path itself and everything below, nothing beside", function()
        for _, p in ipairs({ "/admin", "/admin/", "/admin/users", "/admin/a/b/c" }) do
            assert.truthy(denied(ADMIN, { path = p }), p)
        end
        for _, p in ipairs({ "/administrator", "/admin-x", "/adm", "/", "/x/admin", "/ADMIN",
                             "/Admin/users" }) do
            assert.falsy(denied(ADMIN, { path = p }), p)
        end
    end)
    it("match an exact path exactly", function()
        assert.truthy(denied(ADMIN, { path = "/secret" }))
        assert.falsy(denied(ADMIN, { path = "/secret/" }))
        assert.falsy(denied(ADMIN, { path = "/secrets" }))
        assert.falsy(denied(ADMIN, { path = "/SECRET" }))
    end)
    it("compare the normalised path, never the raw one", function()
        for _, raw in ipairs({ "//admin", "/./admin", "/x/../admin", "/%61dmin" }) do
            assert.truthy(denied(ADMIN, { path = "/admin", raw_path = raw }), raw)
        end
        assert.falsy(denied(ADMIN, { path = "/public", raw_path = "/admin" }))
    end)
    it("apply in order, the first match deciding", function()
        -- admins: rule 2; auditors: rule 1 for GET/HEAD, else rule 3
        assert.falsy(denied(ADMIN, { path = "/admin/x", method = "DELETE", groups = { "admins" } }))
        assert.falsy(denied(ADMIN, { path = "/admin/x", method = "GET", groups = { "auditors" } }))
        assert.falsy(denied(ADMIN, { path = "/admin", method = "HEAD", groups = { "auditors" } }))
        assert.truthy(denied(ADMIN, { path = "/admin/x", method = "POST", groups = { "auditors" } }))
        assert.truthy(denied(ADMIN, { path = "/admin/x", method = "get", groups = { "auditors" } }))
        assert.falsy(denied(ADMIN, { path = "/admin/x", method = "POST",
                                     groups = { "auditors", "admins" } }))
        local conf = { rules = { { path = "/a/", action = "allow" }, { path = "/a/", action = "deny" } },
                       default = "deny" }
        assert.falsy(denied(conf, { path = "/a/b" }))
        assert.truthy(denied(conf, { path = "/b" }))
    end)
    it("read the consumer's groups from pgw.ctx()[\"consumer.groups\"]", function()
        assert.truthy(denied(ADMIN, { path = "/admin" }), "no groups")
        assert.truthy(denied(ADMIN, { path = "/admin", groups = {} }))
        assert.truthy(denied(ADMIN, { path = "/admin", groups = { "users", "Admins" } }))
        assert.falsy(denied(ADMIN, { path = "/admin", groups = "admins" }), "one string")
        assert.truthy(denied(ADMIN, { path = "/admin", groups = 42 }), "not a list")
        local view = fake.readonly({ "users", "admins" })
        assert.falsy(denied(ADMIN, { path = "/admin", groups = view }), "a read-only view")
    end)
    it("fall back to default", function()
        assert.falsy(denied({}, { path = "/anything" }))
        assert.truthy(denied({ default = "deny" }, { path = "/anything" }))
        local conf = { rules = { { path = "/public/", action = "allow" },
                                 { path = "/", methods = { "GET" }, action = "allow" } },
                       default = "deny" }
        assert.falsy(denied(conf, { path = "/public/x", method = "POST" }))
        assert.falsy(denied(conf, { path = "/x", method = "GET" }))
        assert.truthy(denied(conf, { path = "/x", method = "POST" }))
    end)
    it("do not read pgw.ctx() when no rule asks for groups", function()
        local r = fake.request{ path = "/x" }
        local ctx_calls = 0
        local real = pgw.ctx
        pgw.ctx = function() ctx_calls = ctx_calls + 1; return real() end
        fake.run(acl, fake.configure(acl, { rules = { { path = "/x", action = "deny" } } }), "access")
        pgw.ctx = real
        assert.equal(0, ctx_calls)
        assert.equal(403, r.exited.status)
    end)
end)

describe("answers", function()
    it("refuse with 403, a JSON message and an info log line", function()
        local r = run(ADMIN, { path = "/admin/users", method = "POST" })
        assert.equal(403, r.exited.status)
        assert.equal("application/json", H(r.exited.headers, "Content-Type"))
        assert.same({ message = "Forbidden" }, pgw.json.decode(r.exited.body))
        assert.same({ { "info", "denied POST /admin/users (rule 3)" } }, fake.logs)
        r = run({ default = "deny" }, { path = "/x" })
        assert.same({ { "info", "denied GET /x (default)" } }, fake.logs)
    end)
    it("use the configured status and message", function()
        local r = run({ default = "deny", status = 404, message = "Not Found" }, { path = "/x" })
        assert.equal(404, r.exited.status)
        assert.same({ message = "Not Found" }, pgw.json.decode(r.exited.body))
    end)
    it("let allowed requests through untouched", function()
        local r = run(ADMIN, { path = "/orders" })
        assert.equal(nil, r.exited)
        assert.same({}, r.calls)
        assert.same({}, fake.logs)
    end)
    it("only act in access", function()
        local conf = fake.configure(acl, { default = "deny" })
        local r = fake.request{ path = "/x" }
        fake.run(acl, conf, "rewrite")
        fake.run(acl, conf, "header_filter")
        fake.run(acl, conf, "log")
        assert.equal(nil, r.exited)
    end)
end)
