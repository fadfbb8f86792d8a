-- spec/support/runner.lua: a minimal spec runner for the Lua specs, run by build/luarun:
--
--   build/luarun spec/support/runner.lua spec/lua/cors_spec.lua
--
-- The spec file runs with these globals: describe(name, fn), it(name, fn), before_each(fn) (per
-- describe block, outer ones first), and assert extended with:
--   assert.equal(expected, actual[, msg])        -- ==
--   assert.same(expected, actual[, msg])         -- deep comparison of tables
--   assert.truthy(v) / assert.falsy(v)
--   assert.error_matches(fn, plain_substring)    -- fn must raise; message contains the text
--   assert.no_error(fn)
-- Each `it` runs in protected mode; a failure prints the test's full name and message. The last
-- line is "<spec>: N passed, N failed"; the exit status is 1 if anything failed (or the spec file
-- itself raised outside an `it`), else 0.

local spec = ...
if not spec then
    io.stderr:write("usage: runner.lua <spec.lua>\n")
    os.exit(2)
end

local passed, failed = 0, 0
local stack = {} -- describe blocks: { name = ..., before = {fn...} }

local function serialize(v, seen)
    if type(v) == "string" then
        return string.format("%q", v)
    elseif type(v) ~= "table" then
        return tostring(v)
    end
    seen = seen or {}
    if seen[v] then
        return "<cycle>"
    end
    seen[v] = true
    local keys = {}
    for k in pairs(v) do
        keys[#keys + 1] = k
    end
    table.sort(keys, function(a, b)
        if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then
            return a < b
        end
        return type(a) < type(b)
    end)
    local parts = {}
    for _, k in ipairs(keys) do
        parts[#parts + 1] = "[" .. serialize(k, seen) .. "]=" .. serialize(v[k], seen)
    end
    seen[v] = nil
    return "{" .. table.concat(parts, ", ") .. "}"
end

local function deep_equal(a, b)
    if a == b then
        return true
    end
    if type(a) ~= "table" or type(b) ~= "table" then
        return false
    end
    for k, v in pairs(a) do
        if not deep_equal(v, b[k]) then
            return false
        end
    end
    for k in pairs(b) do
        if a[k] == nil then
            return false
        end
    end
    return true
end

local base_assert = assert
local A = setmetatable({}, {
    __call = function(_, v, msg, ...)
        if not v then
            error(msg or "assertion failed", 2)
        end
        return v, msg, ...
    end,
})

function A.equal(expected, actual, msg)
    if expected ~= actual then
        error((msg and msg .. ": " or "") .. "expected " .. serialize(expected) .. ", got " ..
              serialize(actual), 2)
    end
end

function A.same(expected, actual, msg)
    if not deep_equal(expected, actual) then
        error((msg and msg .. ": " or "") .. "expected " .. serialize(expected) .. "\n     got " ..
              serialize(actual), 2)
    end
end

function A.truthy(v, msg)
    if not v then
        error(msg or ("expected a truthy value, got " .. serialize(v)), 2)
    end
end

function A.falsy(v, msg)
    if v then
        error(msg or ("expected a falsy value, got " .. serialize(v)), 2)
    end
end

function A.error_matches(fn, text)
    local ok, err = pcall(fn)
    if ok then
        error("expected an error containing " .. serialize(text) .. ", got none", 2)
    end
    if not string.find(tostring(err), text, 1, true) then
        error("expected an error containing " .. serialize(text) .. ", got " ..
              serialize(tostring(err)), 2)
    end
end

function A.no_error(fn)
    local ok, err = pcall(fn)
    if not ok then
        error("expected no error, got " .. tostring(err), 2)
    end
end

_G.assert = A

function _G.describe(name, fn)
    stack[#stack + 1] = { name = name, before = {} }
    local ok, err = xpcall(fn, debug.traceback)
    stack[#stack] = nil
    if not ok then
        failed = failed + 1
        print("FAIL (describe) " .. name .. ": " .. tostring(err))
    end
end

function _G.before_each(fn)
    local top = stack[#stack]
    base_assert(top, "before_each outside describe")
    top.before[#top.before + 1] = fn
end

function _G.it(name, fn)
    local names = {}
    for _, d in ipairs(stack) do
        names[#names + 1] = d.name
    end
    names[#names + 1] = name
    local full = table.concat(names, " > ")
    local ok, err = xpcall(function()
        for _, d in ipairs(stack) do
            for _, b in ipairs(d.before) do
                b()
            end
        end
        fn()
    end, debug.traceback)
    if ok then
        passed = passed + 1
    else
        failed = failed + 1
        print("FAIL " .. full .. "\n  " .. tostring(err):gsub("\n", "\n  "))
    end
end

local chunk, lerr = loadfile(spec)
if not chunk then
    print("FAIL loading " .. spec .. ": " .. tostring(lerr))
    failed = failed + 1
else
    local ok, err = xpcall(chunk, debug.traceback)
    if not ok then
        print("FAIL running " .. spec .. ": " .. tostring(err))
        failed = failed + 1
    end
end

print(string.format("%s: %d passed, %d failed", spec, passed, failed))
os.exit(failed == 0 and 0 or 1)
