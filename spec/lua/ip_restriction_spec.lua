-- lua/pgw/policies/ip_restriction.lua under the fake host, with the pure-Lua pgw.ip of
-- spec/support/fake_ip.lua (the C matcher is tested in spec/unit/lua_ip_test.c, the whole
-- policy end to end in spec/e2e/test_acl.py).
local fake = require "fake_pgw"
local pgw = fake.install()
local fake_ip = require "fake_ip"
fake_ip.install(fake)
local ipr = fake.load("ip_restriction")
local H = fake.header

local function run(conf, addr)
    local r = fake.request{ path = "/orders", client_addr = addr }
    fake.pipeline({ { ipr, fake.configure(ipr, conf) } })
    return r
end

local function refused(conf, addr)
    local r = run(conf, addr)
    return r.exited ~= nil and r.exited.status == (conf.status or 403)
end

local function check_conf(conf)
    local ok, c = fake.check(ipr, conf)
    assert.truthy(ok, c)
    return ipr.check_conf(fake.readonly(c))
end

describe("schema", function()
    it("has defaults", function()
        local ok, conf = fake.check(ipr, { allow = { "10.0.0.0/8" } })
        assert.truthy(ok)
        assert.same({ allow = { "10.0.0.0/8" }, deny = {}, status = 403,
                      message = "Your IP address is not allowed" }, conf)
    end)
    it("refuses bad configs with the path", function()
        local function err(c) local ok, e = fake.check(ipr, c); assert.equal(nil, ok); return e end
        assert.equal("ip_restriction.allow: expected an array, got string",
                     err({ allow = "10.0.0.0/8" }))
        assert.equal("ip_restriction.deny[2]: expected a string, got number",
                     err({ deny = { "10.0.0.1", 10 } }))
        assert.equal("ip_restriction.deny[1]: length must be at least 1, got 0", err({ deny = { "" } }))
        assert.equal("ip_restriction.status: value must be at most 599, got 600",
                     err({ deny = { "::1" }, status = 600 }))
        assert.equal("ip_restriction.whitelist: unknown field", err({ whitelist = { "::1" } }))
    end)
    it("check_conf accepts valid lists", function()
        assert.equal(true, check_conf({ allow = { "10.0.0.0/8", "::1", "192.0.2.7" } }))
        assert.equal(true, check_conf({ deny = { "0.0.0.0/0" } }))
    end)
    it("check_conf refuses two empty lists", function()
        local ok, e = check_conf({})
        assert.equal(nil, ok)
        assert.equal("ip_restriction: allow or deny must list at least one address or range", e)
        ok, e = check_conf({ allow = {}, deny = {} })
        assert.equal(nil, ok)
    end)
    it("check_conf names the list and the item of an invalid entry", function()
        local ok, e = check_conf({ allow = { "10.0.0.0/8" }, deny = { "::1", "10.0.0.0/33" } })
        assert.equal(nil, ok)
        assert.equal('ip_restriction.deny: invalid CIDR "10.0.0.0/33" (item 2)', e)
        ok, e = check_conf({ allow = { "010.0.0.1" } })
        assert.equal('ip_restriction.allow: invalid CIDR "010.0.0.1" (item 1)', e)
        ok, e = check_conf({ allow = { " 10.0.0.1" } })
        assert.equal('ip_restriction.allow: invalid CIDR " 10.0.0.1" (item 1)', e)
    end)
    it("raises in init_worker and at every request when the conf is invalid", function()
        local _, c = fake.check(ipr, { deny = { "nope" } })
        assert.error_matches(function() fake.run(ipr, fake.readonly(c), "init_worker") end,
                             'ip_restriction.deny: invalid CIDR "nope" (item 1)')
        fake.request{ client_addr = "192.0.2.1" }
        assert.error_matches(function() fake.run(ipr, fake.readonly(c), "access") end,
                             'ip_restriction.deny: invalid CIDR "nope" (item 1)')
        _, c = fake.check(ipr, {})
        assert.error_matches(function() fake.run(ipr, fake.readonly(c), "access") end,
                             "allow or deny must list at least one")
    end)
end)

describe("allow list", function()
    local conf = { allow = { "10.0.0.0/8", "192.0.2.7", "2001:db8::/32" } }
    it("lets listed addresses through without a call or a log", function()
        for _, a in ipairs({ "10.0.0.0", "10.255.255.255", "10.1.2.3", "192.0.2.7", "2001:db8::1",
                             "2001:db8:ffff::", "::ffff:10.1.2.3" }) do
            local r = run(conf, a)
            assert.equal(nil, r.exited, a)
            assert.same({}, r.calls, a)
            assert.same({}, fake.logs, a)
        end
    end)
    it("refuses everything else with 403 and a JSON message", function()
        for _, a in ipairs({ "11.0.0.0", "9.255.255.255", "192.0.2.8", "127.0.0.1", "::1",
                             "2001:db9::1", "::ffff:192.0.2.8" }) do
            local r = run(conf, a)
            assert.truthy(r.exited, a)
            assert.equal(403, r.exited.status)
            assert.equal("application/json", H(r.exited.headers, "Content-Type"))
            assert.same({ message = "Your IP address is not allowed" }, pgw.json.decode(r.exited.body))
            assert.same({ { "info", "refused client " .. a .. ": not in the allow list" } }, fake.logs)
        end
    end)
end)

describe("deny list", function()
    it("refuses listed addresses and lets the others through", function()
        local conf = { deny = { "203.0.113.0/24", "2001:db8:bad::/48" } }
        assert.truthy(refused(conf, "203.0.113.9"))
        assert.truthy(refused(conf, "::ffff:203.0.113.9"))
        assert.truthy(refused(conf, "2001:db8:bad:1::7"))
        assert.falsy(refused(conf, "203.0.114.1"))
        assert.falsy(refused(conf, "2001:db8:bae::1"))
        assert.falsy(refused(conf, "127.0.0.1"))
        local r = run(conf, "203.0.113.200")
        assert.same({ { "info", "refused client 203.0.113.200: in the deny list" } }, fake.logs)
        assert.same({ "pgw.exit" }, { r.calls[1][1] })
    end)
    it("wins over allow", function()
        local conf = { allow = { "10.0.0.0/8", "2001:db8::/32" },
                       deny = { "10.9.0.0/16", "2001:db8::1" } }
        assert.falsy(refused(conf, "10.1.0.1"))
        assert.truthy(refused(conf, "10.9.3.4"))
        assert.truthy(refused(conf, "2001:db8::1"))
        assert.falsy(refused(conf, "2001:db8::2"))
        assert.truthy(refused(conf, "11.0.0.1"), "not in allow")
        local r = run(conf, "10.9.0.0")
        assert.same({ { "info", "refused client 10.9.0.0: in the deny list" } }, fake.logs)
        assert.truthy(r.exited)
    end)
    it("::/0 holds every IPv4 client, 0.0.0.0/0 no IPv6 one", function()
        assert.truthy(refused({ deny = { "::/0" } }, "192.0.2.1"))
        assert.truthy(refused({ deny = { "0.0.0.0/0" } }, "192.0.2.1"))
        assert.truthy(refused({ deny = { "0.0.0.0/0" } }, "::ffff:192.0.2.1"))
        assert.falsy(refused({ deny = { "0.0.0.0/0" } }, "2001:db8::1"))
    end)
    it("handles a long list", function()
        local list = {}
        for i = 0, 1999 do
            list[#list + 1] = string.format("198.%d.%d.0/24", 18 + i % 2, i % 256)
            list[#list + 1] = string.format("2001:db8:%x::/48", i)
        end
        local conf = { deny = list }
        assert.truthy(refused(conf, "198.18.0.77"))
        assert.truthy(refused(conf, "198.19.255.1"))
        assert.truthy(refused(conf, "2001:db8:7cf::1"))
        assert.falsy(refused(conf, "2001:db8:7d0::1"))
        assert.falsy(refused(conf, "198.20.0.1"))
    end)
end)

describe("answers", function()
    it("uses the configured status and message", function()
        local r = run({ deny = { "192.0.2.0/24" }, status = 401, message = 'go "away"' }, "192.0.2.1")
        assert.equal(401, r.exited.status)
        assert.same({ message = 'go "away"' }, pgw.json.decode(r.exited.body))
    end)
    it("refuses a client address that does not parse", function()
        local r = run({ deny = { "192.0.2.0/24" } }, "unknown")
        assert.equal(403, r.exited.status)
        assert.same({ { "info", "refused client unknown: not an IP address" } }, fake.logs)
        r = run({ allow = { "0.0.0.0/0", "::/0" } }, "")
        assert.equal(403, r.exited.status)
    end)
    it("compiles each conf once, in init_worker", function()
        local real, n = pgw.ip.matcher, 0
        pgw.ip.matcher = function(list) n = n + 1; return real(list) end
        local conf = fake.configure(ipr, { allow = { "10.0.0.0/8" }, deny = { "10.1.0.0/16" } })
        fake.run(ipr, conf, "init_worker")
        assert.equal(2, n)
        for _, a in ipairs({ "10.0.0.1", "10.1.0.1", "11.0.0.1", "10.2.0.1" }) do
            fake.request{ client_addr = a }
            fake.run(ipr, conf, "access")
        end
        pgw.ip.matcher = real
        assert.equal(2, n)
    end)
    it("only acts in access", function()
        local conf = fake.configure(ipr, { deny = { "0.0.0.0/0" } })
        local r = fake.request{ client_addr = "1.2.3.4" }
        fake.run(ipr, conf, "rewrite")
        fake.run(ipr, conf, "header_filter")
        fake.run(ipr, conf, "log")
        assert.equal(nil, r.exited)
    end)
end)

describe("fake pgw.ip (spec/support/fake_ip.lua)", function()
    it("parses like addr.c", function()
        for _, a in ipairs({ "1.2.3.4", "0.0.0.0", "255.255.255.255", "::", "::1", "1::",
                             "2001:DB8::1", "::ffff:1.2.3.4", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::",
                             "::2:3:4:5:6:7:8", "1:2:3:4:5:6:1.2.3.4" }) do
            assert.equal(true, pgw.ip.valid(a), a)
        end
        for _, a in ipairs({ "", "1.2.3", "1.2.3.4.5", "256.0.0.1", "010.0.0.1", " 1.2.3.4",
                             "1.2.3.4/32", "[::1]", "fe80::1%eth0", ":::", "1::2::3", ":1::2",
                             "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7:8::", "12345::", "1.2.3.4::",
                             "::1.2.3", "1:2:3:4:5:6:7:1.2.3.4", "1.2.3.4\0" }) do
            assert.equal(false, pgw.ip.valid(a), a)
        end
        assert.error_matches(function() pgw.ip.valid(1) end,
                             "pgw.ip.valid: bad argument #1 (string expected, got number)")
    end)
    it("matches and fails like lua_ip.c", function()
        local m = pgw.ip.matcher({ "10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "::ffff:0:0/97" })
        assert.equal(true, m:match("10.1.2.3"))
        assert.equal(true, m:match("127.1.2.3"), "::ffff:0:0/97 is 0.0.0.0/1")
        assert.equal(false, m:match("128.1.2.3"))
        assert.equal(true, m:match("2001:db8:ffff::1"))
        assert.equal(false, m:match("2001:db9::1"))
        local ok, e = m:match("nope")
        assert.equal(nil, ok)
        assert.equal("invalid address", e)
        assert.error_matches(function() m:match(1) end,
                             "pgw.ip.matcher:match: bad argument #1 (string expected, got number)")
        assert.error_matches(function() pgw.ip.matcher({ "10.0.0.0/8", "::1", "x" }) end,
                             'pgw.ip.matcher: invalid CIDR "x" (item 3)')
        assert.error_matches(function() pgw.ip.matcher({ "10.0.0.0/8", 5 }) end,
                             "pgw.ip.matcher: bad item 2 (string expected, got number)")
        assert.error_matches(function() pgw.ip.matcher("10.0.0.0/8") end,
                             "pgw.ip.matcher: bad argument #1 (table expected, got string)")
        for _, b in ipairs({ "10.0.0.0/33", "::/129", "10.0.0.0/08", "1.2.3.4/", "/8", "a/8" }) do
            assert.error_matches(function() pgw.ip.matcher({ b }) end, "invalid CIDR")
        end
    end)
end)
