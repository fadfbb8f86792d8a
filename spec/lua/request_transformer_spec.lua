-- lua/pgw/policies/request_transformer.lua under the fake host.
local fake = require "fake_pgw"
fake.install()
local rt = fake.load("request_transformer")
local H = fake.header

local function run(conf, req)
    local r = fake.request(req or {})
    fake.run(rt, fake.configure(rt, conf), "access")
    return r
end

describe("schema", function()
    it("defaults to doing nothing", function()
        local ok, conf = fake.check(rt, {})
        assert.truthy(ok)
        assert.same({ remove = { headers = {}, query = {} }, set = { headers = {}, query = {} },
                      add = { headers = {}, query = {} } }, conf)
        local r = run({}, { headers = { A = "1" }, query = "x=1" })
        assert.same({}, r.calls)
    end)
    it("refuses bad configs with the path", function()
        local function err(c) local ok, e = fake.check(rt, c); assert.equal(nil, ok); return e end
        assert.equal("request_transformer.remove.headers: expected an array, got string",
                     err({ remove = { headers = "Cookie" } }))
        assert.equal("request_transformer.remove.headers[1]: length must be at least 1, got 0",
                     err({ remove = { headers = { "" } } }))
        assert.equal("request_transformer.set.headers.X-A: expected a string, got number",
                     err({ set = { headers = { ["X-A"] = 1 } } }))
        assert.equal("request_transformer.add.body: unknown field", err({ add = { body = {} } }))
        assert.equal("request_transformer.replace: unknown field", err({ replace = {} }))
        assert.equal("request_transformer.set.query: expected a map, got an array",
                     err({ set = { query = { "a" } } }))
    end)
end)

describe("headers", function()
    it("removes, then sets, then adds, in sorted name order", function()
        local r = run({
            remove = { headers = { "Cookie", "X-Debug" } },
            set = { headers = { ["X-B"] = "b", ["X-A"] = "a" } },
            add = { headers = { ["X-Forwarded-Proto"] = "https" } },
        }, { headers = { { "Cookie", "s=1" }, { "X-A", "old" }, { "X-Forwarded-Proto", "http" } } })
        assert.same({
            { "pgw.req.clear_header", "Cookie" },
            { "pgw.req.clear_header", "X-Debug" },
            { "pgw.req.set_header", "X-A", "a" },
            { "pgw.req.set_header", "X-B", "b" },
            { "pgw.req.add_header", "X-Forwarded-Proto", "https" },
        }, r.calls)
        assert.equal(nil, H(r.headers, "cookie"))
        assert.same({ "a" }, fake.header_values(r.headers, "x-a"))
        assert.same({ "http", "https" }, fake.header_values(r.headers, "x-forwarded-proto"))
    end)
    it("a header removed and set ends with the set value", function()
        local r = run({ remove = { headers = { "X-A" } }, set = { headers = { ["X-A"] = "new" } } },
                      { headers = { ["X-A"] = "old" } })
        assert.same({ "new" }, fake.header_values(r.headers, "X-A"))
    end)
    it("leaves header validation to the SDK (an invalid name raises)", function()
        assert.error_matches(function() run({ set = { headers = { ["Bad Name"] = "x" } } }) end,
                             'pgw.req.set_header: invalid header name "Bad Name"')
        assert.error_matches(function() run({ add = { headers = { ["X-A"] = "a\r\nX-Injected: 1" } } }) end,
                             "pgw.req.add_header: invalid header value")
        assert.error_matches(function() run({ set = { headers = { ["Content-Length"] = "0" } } }) end,
                             'pgw.req.set_header: header "content-length" is managed by the gateway')
    end)
end)

describe("query", function()
    it("removes, sets and adds query arguments", function()
        local r = run({
            remove = { query = { "debug" } },
            set = { query = { page = "1" } },
            add = { query = { tag = "gw" } },
        }, { query = "debug=1&page=7&tag=a&page=8" })
        assert.same({
            { "pgw.req.clear_query_arg", "debug" },
            { "pgw.req.set_query_arg", "page", "1" },
            { "pgw.req.add_query_arg", "tag", "gw" },
        }, r.calls)
        assert.equal("tag=a&page=1&tag=gw", fake.query_string(r))
    end)
    it("encodes what it adds", function()
        local r = run({ add = { query = { ["a b"] = "x&y=z" } } }, { query = "" })
        assert.equal("a%20b=x%26y%3Dz", fake.query_string(r))
    end)
end)

describe("stages", function()
    it("runs in access only", function()
        assert.equal(nil, rt.rewrite)
        assert.equal(nil, rt.header_filter)
        assert.truthy(rt.access)
    end)
    it("the SDK refuses request changes after the upstream was chosen", function()
        fake.request{}
        local conf = fake.configure(rt, { set = { headers = { ["X-A"] = "1" } } })
        assert.error_matches(function() fake.run({ log = rt.access }, conf, "log") end,
                             "pgw.req.set_header: not allowed in stage log")
    end)
end)
