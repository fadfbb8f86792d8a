-- lua/pgw/policies/request_termination.lua under the fake host.
local fake = require "fake_pgw"
fake.install()
local term = fake.load("request_termination")
local H = fake.header

describe("request_termination", function()
    it("answers 503 with no body by default", function()
        local ok, conf = fake.check(term, nil)
        assert.truthy(ok)
        assert.same({ status = 503, content_type = "text/plain; charset=utf-8" }, conf)
        local r = fake.request{ method = "POST", path = "/x" }
        fake.run(term, fake.configure(term, {}), "access")
        assert.same({ status = 503, headers = {} }, r.exited)
        assert.same({ { "pgw.exit", 503, nil, nil } }, r.calls)
    end)
    it("sends the body with its content type", function()
        local r = fake.request{}
        fake.run(term, fake.configure(term, { status = 410, body = '{"message":"gone"}',
                                              content_type = "application/json" }), "access")
        assert.equal(410, r.exited.status)
        assert.equal('{"message":"gone"}', r.exited.body)
        assert.same({ { "Content-Type", "application/json" } }, r.exited.headers)
    end)
    it("uses the default content type with a body", function()
        local r = fake.request{}
        fake.run(term, fake.configure(term, { status = 200, body = "ok" }), "access")
        assert.equal("text/plain; charset=utf-8", H(r.exited.headers, "content-type"))
    end)
    it("sends an empty body when body is the empty string", function()
        local r = fake.request{}
        fake.run(term, fake.configure(term, { body = "" }), "access")
        assert.equal("", r.exited.body)
    end)
    it("skips later policies and the upstream", function()
        local rt = fake.load("request_transformer")
        local r = fake.request{}
        fake.pipeline({ { term, fake.configure(term, { status = 403 }) },
                        { rt, fake.configure(rt, { set = { headers = { ["X-A"] = "1" } } }) } })
        assert.equal(403, r.exited.status)
        assert.equal(nil, H(r.headers, "X-A"))
    end)
    it("refuses bad configs", function()
        local function err(c) local ok, e = fake.check(term, c); assert.equal(nil, ok); return e end
        assert.equal("request_termination.status: value must be at least 200, got 101", err({ status = 101 }))
        assert.equal("request_termination.status: value must be at most 599, got 600", err({ status = 600 }))
        assert.equal("request_termination.status: expected an integer, got 200.5", err({ status = 200.5 }))
        assert.equal("request_termination.body: expected a string, got table", err({ body = { a = 1 } }))
        assert.equal("request_termination.content_type: length must be at least 1, got 0",
                     err({ content_type = "" }))
        assert.equal("request_termination.message: unknown field", err({ message = "x" }))
    end)
    it("is refused by the SDK outside rewrite/access", function()
        fake.request{}
        local conf = fake.configure(term, {})
        local fn = term.access
        local p = { access = fn, log = fn, header_filter = fn }
        assert.error_matches(function() fake.run(p, conf, "log") end, "pgw.exit: not allowed in stage log")
        assert.error_matches(function() fake.run(p, conf, "header_filter") end,
                             "pgw.exit: not allowed in stage header_filter")
    end)
    it("refuses a second exit in the same request", function()
        fake.request{}
        local conf = fake.configure(term, {})
        fake.run(term, conf, "access")
        assert.error_matches(function() fake.run(term, conf, "access") end,
                             "pgw.exit: the response is already decided")
    end)
end)
