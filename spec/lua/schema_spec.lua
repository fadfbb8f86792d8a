-- pgw.schema: the config checker (lua/pgw/schema.lua) and its use by pgw.policy.check.
local schema = require "pgw.schema"
local policy = require "pgw.policy"

local function ok(s, conf, name)
    local good, res = schema.check(s, conf, name)
    assert.equal(true, good, tostring(res))
    return res
end
local function bad(s, conf, name)
    local good, res = schema.check(s, conf, name)
    assert.equal(nil, good, "expected a failure")
    return res
end

describe("scalars", function()
    it("accepts and keeps strings, booleans, numbers", function()
        local s = { a = { type = "string" }, b = { type = "boolean" }, c = { type = "number" } }
        assert.same({ a = "x", b = false, c = 1.5 }, ok(s, { a = "x", b = false, c = 1.5 }))
    end)
    it("names the field and the types in errors", function()
        local s = { a = { type = "string" }, b = { type = "boolean" }, c = { type = "number" } }
        assert.equal("p.a: expected a string, got number", bad(s, { a = 1 }, "p"))
        assert.equal("p.b: expected a boolean, got string", bad(s, { b = "true" }, "p"))
        assert.equal('p.c: expected a number, got "x"', bad(s, { c = "x" }, "p"))
        assert.equal("p.c: expected a number, got table", bad(s, { c = {} }, "p"))
    end)
    it("accepts numeric strings for number and integer", function()
        local s = { n = { type = "number" }, i = { type = "integer" } }
        assert.same({ n = 2.5, i = 10 }, ok(s, { n = "2.5", i = "10" }))
    end)
    it("refuses non-integers, NaN and infinities", function()
        local s = { i = { type = "integer" }, n = { type = "number" } }
        assert.equal("i: expected an integer, got 1.5", bad(s, { i = 1.5 }))
        assert.equal("i: expected an integer, got 1.5", bad(s, { i = "1.5" }))
        assert.equal("n: expected a number, got number", bad(s, { n = 0 / 0 }))
        assert.equal("n: expected a number, got number", bad(s, { n = math.huge }))
    end)
    it("checks min and max on values and string lengths", function()
        local s = { i = { type = "integer", min = 1, max = 10 }, s = { type = "string", min = 2, max = 3 } }
        assert.equal("i: value must be at least 1, got 0", bad(s, { i = 0 }))
        assert.equal("i: value must be at most 10, got 11", bad(s, { i = 11 }))
        assert.equal("s: length must be at least 2, got 1", bad(s, { s = "a" }))
        assert.equal("s: length must be at most 3, got 4", bad(s, { s = "abcd" }))
        assert.same({ i = 10, s = "abc" }, ok(s, { i = 10, s = "abc" }))
    end)
    it("checks enums", function()
        local s = { by = { type = "string", enum = { "ip", "consumer" } } }
        assert.same({ by = "ip" }, ok(s, { by = "ip" }))
        assert.equal('rl.by: expected one of "ip", "consumer", got "host"', bad(s, { by = "host" }, "rl"))
    end)
end)

describe("durations and sizes", function()
    local s = { w = { type = "duration" }, z = { type = "size" } }
    it("normalises durations to seconds", function()
        local cases = { ["250ms"] = 0.25, ["1m"] = 60, ["1m30s"] = 90, ["2h"] = 7200, ["1d"] = 86400,
                        ["1.5s"] = 1.5, ["10"] = 10, ["0s"] = 0, ["1H"] = 3600 }
        for text, secs in pairs(cases) do
            assert.equal(secs, ok(s, { w = text }).w, text)
        end
        assert.equal(5, ok(s, { w = 5 }).w)
    end)
    it("refuses malformed durations", function()
        for _, text in ipairs({ "1x", "m", "", "1 m", "1m30", "-1s", "1.2.3s", "ms1" }) do
            assert.equal("rate_limit.w: expected a duration, got " .. string.format("%q", text),
                         bad(s, { w = text }, "rate_limit"), text)
        end
        assert.equal("w: expected a duration, got number", bad(s, { w = -1 }))
        assert.equal("w: expected a duration, got boolean", bad(s, { w = true }))
    end)
    it("normalises sizes to bytes", function()
        local cases = { ["512"] = 512, ["1k"] = 1024, ["1kb"] = 1024, ["1.5k"] = 1536, ["2m"] = 2097152,
                        ["1g"] = 1073741824, ["10b"] = 10, ["64 KB"] = 65536 }
        for text, n in pairs(cases) do
            assert.equal(n, ok(s, { z = text }).z, text)
        end
        assert.equal(100, ok(s, { z = 100 }).z)
    end)
    it("refuses malformed and fractional sizes", function()
        for _, text in ipairs({ "1t", "k", "", "0.3b", "1.1k" }) do
            assert.equal("z: expected a size, got " .. string.format("%q", text), bad(s, { z = text }), text)
        end
        assert.equal("z: expected a size, got number", bad(s, { z = 1.5 }))
    end)
    it("applies min/max after normalisation", function()
        local s2 = { w = { type = "duration", min = 1, max = 60 } }
        assert.equal("w: value must be at least 1, got 0.5", bad(s2, { w = "500ms" }))
        assert.equal("w: value must be at most 60, got 61", bad(s2, { w = "1m1s" }))
    end)
    it("exposes the parsers", function()
        assert.equal(0.25, schema.parse_duration("250ms"))
        assert.equal(nil, schema.parse_duration("x"))
        assert.equal(1536, schema.parse_size("1.5k"))
        assert.equal(nil, schema.parse_size("0.5"))
        assert.equal(nil, schema.parse_size(5))
    end)
end)

describe("required and defaults", function()
    it("reports a missing required field", function()
        local s = { window = { type = "duration", required = true } }
        assert.equal("rate_limit.window: required field missing", bad(s, {}, "rate_limit"))
        assert.equal("rate_limit.window: required field missing", bad(s, nil, "rate_limit"))
    end)
    it("fills defaults, normalised, and copies table defaults", function()
        local s = {
            w = { type = "duration", default = "1m" },
            l = { type = "array", items = { type = "string" }, default = { "*" } },
            r = { type = "boolean", required = true, default = false },
        }
        local a = ok(s, {})
        assert.same({ w = 60, l = { "*" }, r = false }, a)
        a.l[1] = "changed"
        assert.same({ "*" }, ok(s, {}).l)
        assert.same({ "*" }, s.l.default)
    end)
    it("does not modify its input", function()
        local s = { w = { type = "duration", default = "1s" } }
        local input = { w = "2m" }
        assert.same({ w = 120 }, ok(s, input))
        assert.same({ w = "2m" }, input)
    end)
    it("leaves absent optional fields absent", function()
        assert.same({}, ok({ x = { type = "string" } }, {}))
    end)
end)

describe("arrays and maps", function()
    it("checks items with their index in the path", function()
        local s = { origins = { type = "array", items = { type = "string" } } }
        assert.same({ origins = { "a", "b" } }, ok(s, { origins = { "a", "b" } }))
        assert.equal("cors.origins[2]: expected a string, got number", bad(s, { origins = { "a", 2 } }, "cors"))
        assert.equal("cors.origins: expected an array, got a map", bad(s, { origins = { a = 1 } }, "cors"))
        assert.equal("cors.origins: expected an array, got string", bad(s, { origins = "*" }, "cors"))
    end)
    it("refuses sparse arrays", function()
        local s = { a = { type = "array" } }
        assert.equal("a: expected an array, got a map", bad(s, { a = { [1] = "x", [3] = "y" } }))
    end)
    it("checks the number of items", function()
        local s = { a = { type = "array", min = 1, max = 2 } }
        assert.equal("a: number of items must be at least 1, got 0", bad(s, { a = {} }))
        assert.equal("a: number of items must be at most 2, got 3", bad(s, { a = { 1, 2, 3 } }))
    end)
    it("checks records (fields): unknown keys, nested defaults, nested paths", function()
        local s = { limits = { type = "map", default = {}, fields = {
            burst = { type = "integer", default = 5 },
            window = { type = "duration", required = true, default = "1s" },
        } } }
        assert.same({ limits = { burst = 5, window = 1 } }, ok(s, {}))
        assert.same({ limits = { burst = 7, window = 60 } }, ok(s, { limits = { burst = 7, window = "1m" } }))
        assert.equal("rl.limits.window: expected a duration, got \"x\"", bad(s, { limits = { window = "x" } }, "rl"))
        assert.equal("rl.limits.brust: unknown field", bad(s, { limits = { brust = 1 } }, "rl"))
        assert.equal("rl.limits: expected a map, got an array", bad(s, { limits = { 1 } }, "rl"))
    end)
    it("checks free maps (values)", function()
        local s = { headers = { type = "map", values = { type = "string" } } }
        assert.same({ headers = { ["X-A"] = "1" } }, ok(s, { headers = { ["X-A"] = "1" } }))
        assert.same({ headers = {} }, ok(s, { headers = {} }))
        assert.equal("t.headers.X-A: expected a string, got number", bad(s, { headers = { ["X-A"] = 1 } }, "t"))
        assert.equal("t.headers: expected a map, got boolean", bad(s, { headers = true }, "t"))
    end)
    it("refuses unknown top-level fields and non-map configs", function()
        local s = { a = { type = "string" } }
        assert.equal("p.b: unknown field", bad(s, { b = 1 }, "p"))
        assert.equal("p: expected a map, got string", bad(s, "x", "p"))
        assert.equal("p: expected a map, got an array", bad(s, { "x" }, "p"))
        assert.equal("b: unknown field", bad(s, { b = 1 }))
        assert.equal("expected a map, got number", bad(s, 5))
    end)
    it("reports the first error in sorted field order", function()
        local s = { b = { type = "string" }, a = { type = "string" } }
        assert.equal("a: expected a string, got number", bad(s, { a = 1, b = 2 }))
    end)
end)

describe("schema definitions", function()
    local function schema_err(s)
        local good, err = schema.check_schema(s)
        assert.equal(nil, good)
        return err
    end
    it("accepts valid schemas", function()
        assert.truthy(schema.check_schema({}))
        assert.truthy(schema.check_schema({
            a = { type = "array", items = { type = "map", fields = { x = { type = "size", default = "1k" } } } },
            b = { type = "string", enum = { "x", "y" }, default = "x", description = "doc" },
        }))
    end)
    it("refuses bad specs with the field named", function()
        assert.equal('window: unknown type "durration"', schema_err({ window = { type = "durration" } }))
        assert.equal('a: unknown type nil', schema_err({ a = {} }))
        assert.equal("a: expected a field spec (a table), got string", schema_err({ a = "string" }))
        assert.equal('a: unknown spec key "requird"', schema_err({ a = { type = "string", requird = true } }))
        assert.equal("a: 'items' applies only to type array", schema_err({ a = { type = "string", items = {} } }))
        assert.equal("a: a map has 'fields' or 'values', not both",
                     schema_err({ a = { type = "map", fields = {}, values = { type = "string" } } }))
        assert.equal("a.items: unknown type \"strng\"", schema_err({ a = { type = "array", items = { type = "strng" } } }))
        assert.equal("a.fields.b: unknown type nil", schema_err({ a = { type = "map", fields = { b = {} } } }))
        assert.equal("a: 'enum' must be a non-empty array", schema_err({ a = { type = "string", enum = {} } }))
        assert.equal("a: 'min'/'max' do not apply to type boolean", schema_err({ a = { type = "boolean", min = 1 } }))
        assert.equal("a: 'required' must be a boolean", schema_err({ a = { type = "string", required = "yes" } }))
    end)
    it("checks defaults against their spec", function()
        assert.equal("w.default: expected a duration, got \"soon\"",
                     schema_err({ w = { type = "duration", default = "soon" } }))
        assert.equal('b.default: expected one of "x", got "y"',
                     schema_err({ b = { type = "string", enum = { "x" }, default = "y" } }))
    end)
    it("check() raises on an invalid schema", function()
        assert.error_matches(function() schema.check({ a = { type = "nope" } }, {}) end,
                             'invalid schema: a: unknown type "nope"')
    end)
    it("pgw.policy.check validates the policy's schema", function()
        assert.truthy(policy.check({ schema = { a = { type = "string" } }, access = function() end }))
        local good, err = policy.check({ schema = { a = { type = "strin" } } })
        assert.equal(nil, good)
        assert.equal("field 'schema': a: unknown type \"strin\"", err)
        good, err = policy.check({ schema = 1 })
        assert.equal("field 'schema' must be a table", err)
    end)
end)
