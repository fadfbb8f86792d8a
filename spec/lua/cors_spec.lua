-- lua/pgw/policies/cors.lua under the fake host.
local fake = require "fake_pgw"
fake.install()
local cors = fake.load("cors")
local H = fake.header

local A = "https://app.example.com"

local function preflight(conf, origin, method, req_headers)
    local r = fake.request{ method = "OPTIONS", path = "/orders", headers = {
        Origin = origin, ["Access-Control-Request-Method"] = method,
        ["Access-Control-Request-Headers"] = req_headers } }
    fake.pipeline({ { cors, fake.configure(cors, conf) } })
    return r
end

local function simple(conf, origin, resp_headers, method)
    local r = fake.request{ method = method or "GET", path = "/orders",
                            headers = { Origin = origin }, resp = { status = 200, headers = resp_headers } }
    fake.pipeline({ { cors, fake.configure(cors, conf) } })
    return r
end

describe("schema", function()
    it("has defaults", function()
        local ok, conf = fake.check(cors, {})
        assert.truthy(ok)
        assert.same({ origins = { "*" }, methods = { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE" },
                      headers = {}, exposed_headers = {}, credentials = false }, conf)
    end)
    it("normalises max_age", function()
        local _, conf = fake.check(cors, { max_age = "10m" })
        assert.equal(600, conf.max_age)
    end)
    it("refuses bad configs with the path", function()
        local function err(c) local ok, e = fake.check(cors, c); assert.equal(nil, ok); return e end
        assert.equal("cors.origins: number of items must be at least 1, got 0", err({ origins = {} }))
        assert.equal("cors.origins: expected an array, got string", err({ origins = "*" }))
        assert.equal("cors.origins[1]: length must be at least 1, got 0", err({ origins = { "" } }))
        assert.equal("cors.credentials: expected a boolean, got string", err({ credentials = "yes" }))
        assert.equal('cors.max_age: expected a duration, got "forever"', err({ max_age = "forever" }))
        assert.equal("cors.origin: unknown field", err({ origin = A }))
    end)
end)

describe("preflight", function()
    it("answers an allowed preflight with 204 and never reaches the upstream", function()
        local r = preflight({ origins = { A }, max_age = "10m" }, A, "POST", "Content-Type, X-Trace")
        assert.equal(204, r.exited.status)
        assert.equal(nil, r.exited.body)
        local h = r.resp.headers
        assert.equal(A, H(h, "Access-Control-Allow-Origin"))
        assert.equal("GET, HEAD, PUT, PATCH, POST, DELETE", H(h, "Access-Control-Allow-Methods"))
        assert.equal("content-type, x-trace", H(h, "Access-Control-Allow-Headers"))
        assert.equal("600", H(h, "Access-Control-Max-Age"))
        assert.equal("Origin", H(h, "Vary"))
        assert.equal(nil, H(h, "Access-Control-Allow-Credentials"))
    end)
    it("answers with * for any origin without credentials, and no Vary", function()
        local r = preflight({}, "https://other.example", "GET")
        assert.equal(204, r.exited.status)
        assert.equal("*", H(r.resp.headers, "Access-Control-Allow-Origin"))
        assert.equal(nil, H(r.resp.headers, "Vary"))
        assert.equal(nil, H(r.resp.headers, "Access-Control-Allow-Headers"))
        assert.equal(nil, H(r.resp.headers, "Access-Control-Max-Age"))
    end)
    it("compares origins without regard to case", function()
        local r = preflight({ origins = { "https://APP.example.com" } }, A, "GET")
        assert.equal(204, r.exited.status)
        assert.equal(A, H(r.resp.headers, "Access-Control-Allow-Origin"))
    end)
    it("refuses a disallowed origin with 403 and no Access-Control-* header", function()
        local r = preflight({ origins = { A } }, "https://evil.example", "GET")
        assert.equal(403, r.exited.status)
        assert.same({ { "Vary", "Origin" } }, r.resp.headers)
    end)
    it("refuses a method not listed", function()
        local r = preflight({ origins = { A }, methods = { "GET" } }, A, "DELETE")
        assert.equal(403, r.exited.status)
        assert.equal(nil, H(r.resp.headers, "Access-Control-Allow-Origin"))
    end)
    it("checks requested headers against a configured list, case-insensitively", function()
        local conf = { origins = { A }, headers = { "Content-Type", "X-Trace" } }
        local r = preflight(conf, A, "POST", "x-trace,content-type")
        assert.equal(204, r.exited.status)
        assert.equal("Content-Type, X-Trace", H(r.resp.headers, "Access-Control-Allow-Headers"))
        r = preflight(conf, A, "POST", "X-Trace, Authorization")
        assert.equal(403, r.exited.status)
    end)
    it("echoes the origin with credentials even when origins has *", function()
        local r = preflight({ credentials = true }, A, "GET")
        assert.equal(204, r.exited.status)
        assert.equal(A, H(r.resp.headers, "Access-Control-Allow-Origin"))
        assert.equal("true", H(r.resp.headers, "Access-Control-Allow-Credentials"))
        assert.equal("Origin", H(r.resp.headers, "Vary"))
    end)
    it("treats OPTIONS without Access-Control-Request-Method as a normal request", function()
        local r = fake.request{ method = "OPTIONS", headers = { Origin = A } }
        fake.pipeline({ { cors, fake.configure(cors, { origins = { A } }) } })
        assert.equal(nil, r.exited)
        assert.equal(A, H(r.resp.headers, "Access-Control-Allow-Origin"))
    end)
    it("does not add headers twice: header_filter skips the answered preflight", function()
        local r = preflight({ origins = { A } }, A, "GET")
        assert.same({ "Origin" }, fake.header_values(r.resp.headers, "Vary"))
        assert.same({ A }, fake.header_values(r.resp.headers, "Access-Control-Allow-Origin"))
        for _, c in ipairs(r.calls) do
            assert.equal("pgw.exit", c[1], "only pgw.exit is called")
        end
    end)
end)

describe("simple and actual requests", function()
    it("adds Allow-Origin and Vary in header_filter for an allowed origin", function()
        local r = simple({ origins = { A }, exposed_headers = { "X-Request-Id", "ETag" } }, A)
        assert.equal(nil, r.exited)
        assert.same({
            { "pgw.resp.set_header", "Access-Control-Allow-Origin", A },
            { "pgw.resp.set_header", "Access-Control-Expose-Headers", "X-Request-Id, ETag" },
            { "pgw.resp.add_header", "Vary", "Origin" },
        }, r.calls)
    end)
    it("sends * for any origin, without Vary", function()
        local r = simple({}, "https://x.example")
        assert.same({ { "pgw.resp.set_header", "Access-Control-Allow-Origin", "*" } }, r.calls)
    end)
    it("sends credentials and the echoed origin", function()
        local r = simple({ credentials = true }, A)
        assert.equal(A, H(r.resp.headers, "Access-Control-Allow-Origin"))
        assert.equal("true", H(r.resp.headers, "Access-Control-Allow-Credentials"))
        assert.equal("Origin", H(r.resp.headers, "Vary"))
    end)
    it("adds only Vary for a disallowed origin", function()
        local r = simple({ origins = { A } }, "https://evil.example")
        assert.same({ { "pgw.resp.add_header", "Vary", "Origin" } }, r.calls)
    end)
    it("keeps an upstream Vary and does not repeat Origin", function()
        local r = simple({ origins = { A } }, A, { Vary = "Accept-Encoding" })
        assert.same({ "Accept-Encoding", "Origin" }, fake.header_values(r.resp.headers, "Vary"))
        r = simple({ origins = { A } }, A, { Vary = "accept-encoding, origin" })
        assert.same({ "accept-encoding, origin" }, fake.header_values(r.resp.headers, "Vary"))
        r = simple({ origins = { A } }, A, { Vary = "*" })
        assert.same({ "*" }, fake.header_values(r.resp.headers, "Vary"))
    end)
    it("does nothing without an Origin header", function()
        local r = fake.request{ method = "GET" }
        fake.pipeline({ { cors, fake.configure(cors, { origins = { A } }) } })
        assert.same({}, r.calls)
        r = fake.request{ method = "OPTIONS", headers = { ["Access-Control-Request-Method"] = "GET" } }
        fake.pipeline({ { cors, fake.configure(cors, {}) } })
        assert.equal(nil, r.exited)
    end)
    it("adds headers to a response another policy produced", function()
        local term = fake.load("request_termination")
        local r = fake.request{ method = "GET", headers = { Origin = A } }
        fake.pipeline({ { cors, fake.configure(cors, { origins = { A } }) },
                        { term, fake.configure(term, { status = 401, body = "no" }) } })
        assert.equal(401, r.exited.status)
        assert.equal(A, H(r.resp.headers, "Access-Control-Allow-Origin"))
    end)
    it("leaves the per-request state to each request", function()
        local conf = { origins = { A } }
        preflight(conf, A, "GET")
        local r = simple(conf, A)
        assert.equal(A, H(r.resp.headers, "Access-Control-Allow-Origin"))
    end)
end)
