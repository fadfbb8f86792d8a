-- lua/pgw/policies/jwt.lua and lua/pgw/bearer.lua under the fake host, with pgw.jwt scripted
-- here: what the policy does with each outcome of the C verification (end to end, with real
-- tokens, keys and a JWKS server, in spec/e2e/test_jwt.py).
local fake = require "fake_pgw"
local pgw = fake.install()
local H = fake.header

-- ---- a scripted pgw.jwt ----

local script -- token -> { claims } | { nil, reason, code }; after a JWKS fetch: script.after
local fetched, clock, provider_conf

pgw.jwt = {
    verify = function(name, token)
        assert(name == "corp", name)
        local r = (fetched > 0 and script.after and script.after[token]) or script[token]
        if r == nil then return nil, "bad signature", "invalid" end
        return r[1], r[2], r[3]
    end,
    provider = function(name)
        if name ~= "corp" then return nil end
        return provider_conf
    end,
    jwks_claim = function(_, forced)
        if provider_conf.busy then return false, true end
        if forced and clock - (provider_conf.last or -1e9) < provider_conf.jwks.min_refresh then
            return false, false
        end
        provider_conf.last = clock
        return true, false
    end,
    jwks_done = function(_, body)
        fetched = fetched + 1
        provider_conf.jwks_version = provider_conf.jwks_version + 1
        if body == nil then return nil, "fetch failed" end
        return 1, 0
    end,
    claim_refresher = function() return true end,
}
local consumers = { alice = { name = "alice", plan = "gold", groups = "staff, ops" } }
pgw.keys = { consumer = function(name) return consumers[name] end }
pgw.time = { monotonic = function() return clock end, now = function() return clock end }
pgw.sleep = function(s) clock = clock + s end
local http_status
pgw.http = {
    request = function(t)
        assert(t.url == "https://idp.example/jwks", t.url)
        if http_status == nil then return nil, "timeout" end
        return { status = http_status, body = '{"keys":[]}', headers = {} }
    end,
}

local jwt = fake.load("jwt")

local function reset()
    fetched, clock, http_status = 0, 1000, 200
    provider_conf = { name = "corp", consumer_claim = "sub", require_consumer = false,
                      jwks = { url = "https://idp.example/jwks", refresh = 3600, min_refresh = 30,
                               timeout = 5 },
                      jwks_version = 0, keys = 0, jwks_keys = 1 }
    script = {
        good = { { sub = "alice", scope = "read write", n = 42, list = { "a", "b" }, nums = { 1, 2 },
                   obj = { x = 1 }, bad = "x\r\ny" } },
        expired = { nil, "token expired", "invalid" },
        rotated = { nil, "unknown kid", "unknown_kid" },
        nokeys = { nil, "no keys loaded", "no_keys" },
        nosub = { { scope = "read" } },
        after = { rotated = { { sub = "bob" } } },
    }
end

local function run(conf, headers, o)
    local r = fake.request{ path = "/x", headers = headers, query = o and o.query }
    fake.pipeline({ { jwt, fake.configure(jwt, conf) } })
    return r
end

local function challenge(r) return H(r.exited and r.exited.headers or {}, "WWW-Authenticate") end

describe("schema", function()
    it("requires a provider that exists", function()
        local ok, e = fake.check(jwt, {})
        assert.equal(nil, ok)
        assert.equal("jwt.provider: required field missing", e)
        reset()
        local _, c = fake.check(jwt, { provider = "nope" })
        local ok2, e2 = jwt.check_conf(fake.readonly(c))
        assert.equal(nil, ok2)
        assert.truthy(e2:find('no provider "nope"', 1, true), e2)
    end)
end)

describe("tokens", function()
    before_each(reset)

    it("answers 401 without a challenge error when there is no token", function()
        local r = run({ provider = "corp" }, {})
        assert.equal(401, r.exited.status)
        assert.equal('Bearer realm="passerelle"', challenge(r))
    end)

    it("refuses other schemes and empty tokens", function()
        for _, v in ipairs({ "Basic abc", "Bearer", "Bearer a b", "bearer" }) do
            local r = run({ provider = "corp" }, { Authorization = v })
            assert.equal('Bearer realm="passerelle"', challenge(r), v)
        end
    end)

    it("gives one answer for every invalid token, and logs the reason", function()
        for _, t in ipairs({ "expired", "whatever" }) do
            local r = run({ provider = "corp" }, { Authorization = "Bearer " .. t })
            assert.equal(401, r.exited.status)
            assert.equal('Bearer realm="passerelle", error="invalid_token"', challenge(r))
            assert.equal('{"message":"invalid token"}\n', r.exited.body)
        end
        assert.truthy(fake.logs[#fake.logs][2]:find("provider corp: bad signature", 1, true))
    end)

    it("identifies the consumer and maps claims to headers, client copies removed", function()
        local r = run({ provider = "corp", claims_to_headers = { scope = "X-Scope", n = "X-N",
                        list = "X-List", nums = "X-Nums", obj = "X-Obj", bad = "X-Bad", absent = "X-Absent" } },
                      { Authorization = "bearer good", ["X-Consumer"] = "mallory",
                        ["X-Absent"] = "forged", ["X-N"] = "7" })
        assert.equal(nil, r.exited)
        assert.equal("alice", H(r.headers, "X-Consumer"))
        assert.equal("read write", H(r.headers, "X-Scope"))
        assert.equal("42", H(r.headers, "X-N"))
        assert.equal("a, b", H(r.headers, "X-List"))
        assert.equal("[1,2]", H(r.headers, "X-Nums"))
        assert.equal('{"x":1}', H(r.headers, "X-Obj"))
        assert.equal(nil, H(r.headers, "X-Bad"))     -- a CR/LF value is not sent
        assert.equal(nil, H(r.headers, "X-Absent"))  -- removed even though the claim is absent
        assert.equal("alice", r.ctx.consumer)
        assert.equal("gold", r.ctx["consumer.plan"])
        assert.same({ "staff", "ops" }, r.ctx["consumer.groups"])
        assert.equal("corp", r.ctx["jwt.provider"])
        assert.same({ "read", "write" }, r.ctx["auth.scopes"])
        assert.equal(42, r.ctx["jwt.claims"].n)
    end)

    it("requires a known consumer when the provider says so", function()
        provider_conf.require_consumer = true
        local r = run({ provider = "corp" }, { Authorization = "Bearer good" })
        assert.equal(nil, r.exited)
        script.good[1].sub = "unknown"
        r = run({ provider = "corp" }, { Authorization = "Bearer good" })
        assert.equal(401, r.exited.status)
        assert.truthy(fake.logs[#fake.logs][2]:find("unknown consumer", 1, true))
    end)

    it("serves a token without the consumer claim with no consumer, unless required", function()
        local r = run({ provider = "corp" }, { Authorization = "Bearer nosub", ["X-Consumer"] = "x" })
        assert.equal(nil, r.exited)
        assert.equal(nil, r.ctx.consumer)
        assert.equal(nil, H(r.headers, "X-Consumer"))
        provider_conf.require_consumer = true
        r = run({ provider = "corp" }, { Authorization = "Bearer nosub" })
        assert.equal(401, r.exited.status)
        script.nosub[1].sub = { "not", "a", "string" }
        provider_conf.require_consumer = false
        r = run({ provider = "corp" }, { Authorization = "Bearer nosub" })
        assert.equal(401, r.exited.status)
    end)

    it("checks scopes", function()
        local r = run({ provider = "corp", required_scopes = { "read", "admin" } },
                      { Authorization = "Bearer good" })
        assert.equal(403, r.exited.status)
        assert.equal('Bearer realm="passerelle", error="insufficient_scope", scope="read admin"',
                     challenge(r))
        r = run({ provider = "corp", required_scopes = { "write" } }, { Authorization = "Bearer good" })
        assert.equal(nil, r.exited)
    end)

    it("reads the query and the cookie, and hides credentials", function()
        local r = run({ provider = "corp", query = "access_token", hide_credentials = true }, {},
                      { query = "access_token=good&x=1" })
        assert.equal(nil, r.exited)
        assert.equal(nil, r.query.access_token)
        r = run({ provider = "corp", cookie = "tok" }, { Cookie = "a=1; tok=good; b=2" })
        assert.equal(nil, r.exited)
        r = run({ provider = "corp", hide_credentials = true }, { Authorization = "Bearer good" })
        assert.equal(nil, H(r.headers, "Authorization"))
    end)

    it("passes a request without a token that an earlier policy identified", function()
        local r = fake.request{ path = "/x", headers = { ["X-Consumer"] = "k" } }
        r.ctx.consumer = "from-key"
        fake.pipeline({ { jwt, fake.configure(jwt, { provider = "corp" }) } })
        assert.equal(nil, r.exited)
        assert.equal("k", H(r.headers, "X-Consumer")) -- its header stays
    end)

    it("runs as anonymous without a token, but still refuses a bad one", function()
        local r = run({ provider = "corp", anonymous = "guest" }, {})
        assert.equal(nil, r.exited)
        assert.equal("guest", r.ctx.consumer)
        r = run({ provider = "corp", anonymous = "guest" }, { Authorization = "Bearer expired" })
        assert.equal(401, r.exited.status)
    end)
end)

describe("JWKS refresh", function()
    before_each(reset)

    it("fetches once on an unknown kid and verifies again", function()
        local r = run({ provider = "corp" }, { Authorization = "Bearer rotated" })
        assert.equal(nil, r.exited)
        assert.equal("bob", r.ctx.consumer)
        assert.equal(1, fetched)
    end)

    it("does not fetch again within min_refresh", function()
        provider_conf.last = clock - 10
        script.after = nil
        local r = run({ provider = "corp" }, { Authorization = "Bearer rotated" })
        assert.equal(401, r.exited.status)
        assert.equal(0, fetched)
    end)

    it("waits for a fetch in flight instead of starting another", function()
        provider_conf.busy = true
        local r = run({ provider = "corp" }, { Authorization = "Bearer rotated" })
        assert.equal(401, r.exited.status) -- the fetch never ended: waited up to timeout + 1
        assert.equal(0, fetched)
        assert.truthy(clock >= 1006, clock)
    end)

    it("answers 503 when there are no keys and the JWKS cannot be fetched", function()
        http_status = nil
        script.after = nil
        local r = run({ provider = "corp" }, { Authorization = "Bearer nokeys" })
        assert.equal(503, r.exited.status)
        assert.equal(1, fetched)
        local seen = false
        for _, l in ipairs(fake.logs) do
            seen = seen or (l[1] == "err" and l[2]:find("JWKS fetch from https://idp.example/jwks failed: timeout", 1, true) ~= nil)
        end
        assert.truthy(seen)
    end)
end)
