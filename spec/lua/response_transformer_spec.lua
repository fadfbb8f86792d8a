-- lua/pgw/policies/response_transformer.lua under the fake host.
local fake = require "fake_pgw"
local pgw = fake.install()
local rtx = fake.load("response_transformer")
local H = fake.header

local JSON = { ["Content-Type"] = "application/json", ["Content-Length"] = "20" }

-- Runs the policy on an upstream response; returns the request (r.resp.body is the final body).
local function run(conf, resp, chunks, method)
    local r = fake.request{ method = method or "GET", resp = resp }
    fake.pipeline({ { rtx, fake.configure(rtx, conf) } }, chunks)
    return r
end

local function decode(s)
    return pgw.json.decode(s)
end

describe("schema", function()
    it("defaults to doing nothing, with a 1 MiB body bound", function()
        local ok, conf = fake.check(rtx, {})
        assert.truthy(ok)
        assert.same({ remove = { headers = {}, json = {} }, set = { headers = {}, json = {} },
                      add = { headers = {}, json = {} }, json_max_body = 1048576 }, conf)
        local r = run({}, { headers = JSON }, { '{"a":1}' })
        assert.same({}, r.calls)
        assert.equal('{"a":1}', r.resp.body)
        assert.equal("20", H(r.resp.headers, "content-length"))
    end)
    it("refuses bad configs with the path", function()
        local function err(c) local ok, e = fake.check(rtx, c); assert.equal(nil, ok); return e end
        assert.equal("response_transformer.remove.json: expected an array, got string",
                     err({ remove = { json = "id" } }))
        assert.equal("response_transformer.set.headers.X-A: expected a string, got boolean",
                     err({ set = { headers = { ["X-A"] = true } } }))
        assert.equal('response_transformer.json_max_body: expected a size, got "big"',
                     err({ json_max_body = "big" }))
        assert.equal("response_transformer.add.query: unknown field", err({ add = { query = {} } }))
    end)
end)

describe("headers", function()
    it("removes, sets, adds in header_filter", function()
        local r = run({
            remove = { headers = { "Server", "X-Powered-By" } },
            set = { headers = { ["Cache-Control"] = "no-store" } },
            add = { headers = { ["Set-Cookie"] = "gw=1" } },
        }, { headers = { Server = "x", ["X-Powered-By"] = "php", ["Cache-Control"] = "max-age=60",
                         ["Set-Cookie"] = "a=1" } })
        assert.same({
            { "pgw.resp.clear_header", "Server" },
            { "pgw.resp.clear_header", "X-Powered-By" },
            { "pgw.resp.set_header", "Cache-Control", "no-store" },
            { "pgw.resp.add_header", "Set-Cookie", "gw=1" },
        }, r.calls)
        assert.equal(nil, H(r.resp.headers, "server"))
        assert.equal("no-store", H(r.resp.headers, "cache-control"))
        assert.same({ "a=1", "gw=1" }, fake.header_values(r.resp.headers, "set-cookie"))
    end)
    it("leaves validation to the SDK", function()
        assert.error_matches(function() run({ set = { headers = { ["X-A"] = "1\n2" } } }, {}) end,
                             "pgw.resp.set_header: invalid header value")
        assert.error_matches(function() run({ remove = { headers = { "Transfer-Encoding" } } }, {}) end,
                             'pgw.resp.clear_header: header "transfer-encoding" is managed by the gateway')
    end)
    it("also applies to responses produced by pgw.exit", function()
        local term = fake.load("request_termination")
        local r = fake.request{}
        fake.pipeline({ { term, fake.configure(term, { status = 418, body = "x" }) },
                        { rtx, fake.configure(rtx, { set = { headers = { ["X-A"] = "1" } } }) } })
        assert.equal("1", H(r.resp.headers, "x-a"))
    end)
end)

if not fake.has_json then
    describe("JSON body", function()
        it("needs lua-cjson (apt package lua-cjson)", function()
            error("lua-cjson is not installed")
        end)
    end)
    return
end

describe("JSON body", function()
    local conf = { remove = { json = { "internal_id" } }, set = { json = { version = "2" } },
                   add = { json = { source = "gw", kept = "no" } } }

    it("removes, sets and adds top-level fields over chunks, and drops Content-Length", function()
        local r = run(conf, { headers = JSON },
                      { '{"internal_id":7,', '"version":"1","kept":"yes",', '"n":[1,2]}' })
        assert.same({ version = "2", kept = "yes", source = "gw", n = { 1, 2 } }, decode(r.resp.body))
        assert.equal(nil, H(r.resp.headers, "content-length"))
        assert.equal("application/json", H(r.resp.headers, "content-type"))
    end)
    it("holds chunks back until the end", function()
        fake.request{ resp = { headers = JSON } }
        local c = fake.configure(rtx, conf)
        fake.run(rtx, c, "header_filter")
        assert.equal("", fake.run(rtx, c, "body_filter", '{"a":', false))
        local out = fake.run(rtx, c, "body_filter", '1}', true)
        assert.same({ a = 1, version = "2", source = "gw", kept = "no" }, decode(out))
    end)
    it("accepts +json media types and parameters", function()
        local r = run(conf, { headers = { ["Content-Type"] = "application/problem+json; charset=utf-8" } },
                      { '{"internal_id":1}' })
        assert.same({ version = "2", source = "gw", kept = "no" }, decode(r.resp.body))
    end)
    it("passes other content types, compressed bodies, HEAD, 204 and 304 untouched", function()
        local body = '{"internal_id":1}'
        local cases = {
            { { headers = { ["Content-Type"] = "text/html", ["Content-Length"] = "17" } } },
            { { headers = { ["Content-Type"] = "application/json", ["Content-Encoding"] = "gzip",
                            ["Content-Length"] = "17" } } },
            { { headers = JSON }, "HEAD" },
            { { status = 204, headers = JSON } },
            { { status = 304, headers = JSON } },
        }
        for i, c in ipairs(cases) do
            local r = run(conf, c[1], { body }, c[2])
            assert.equal(body, r.resp.body, "case " .. i)
            assert.truthy(H(r.resp.headers, "content-length"), "case " .. i .. " keeps Content-Length")
        end
    end)
    it("sends invalid JSON and non-objects unchanged, with a warning", function()
        for _, body in ipairs({ '{"a":', '[1,2]', '"s"', '' }) do
            local r = run(conf, { headers = JSON }, { body })
            assert.equal(body, r.resp.body)
            assert.equal("warn", fake.logs[1][1])
            assert.truthy(fake.logs[1][2]:find("body sent unchanged", 1, true), fake.logs[1][2])
        end
    end)
    it("releases the body unchanged past json_max_body and streams the rest", function()
        local c = { remove = { json = { "a" } }, json_max_body = 10 }
        fake.request{ resp = { headers = JSON } }
        local cc = fake.configure(rtx, c)
        fake.run(rtx, cc, "header_filter")
        assert.equal("", fake.run(rtx, cc, "body_filter", '{"a":1,', false))
        assert.equal('{"a":1,"bb":2', fake.run(rtx, cc, "body_filter", '"bb":2', false))
        assert.equal(nil, fake.run(rtx, cc, "body_filter", '}', true))
        assert.equal("warn", fake.logs[1][1])
        assert.equal("response_transformer: body larger than json_max_body (10 bytes), sent unchanged",
                     fake.logs[1][2])
    end)
    it("keeps state per request", function()
        run(conf, { headers = JSON }, { '{"x":' })
        local r = run(conf, { headers = JSON }, { '{"y":1}' })
        assert.same({ y = 1, version = "2", source = "gw", kept = "no" }, decode(r.resp.body))
    end)
end)
