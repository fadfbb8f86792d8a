-- pgw.schema: the configuration schema of a policy, and the check that turns a route's raw
-- policy config into the validated, defaulted `conf` its stage functions receive.
--
-- A policy's `schema` maps each config key to a field spec:
--
--   schema = {
--       window  = { type = "duration", required = true, min = 1 },
--       limit   = { type = "integer", default = 100, min = 1 },
--       by      = { type = "string", enum = { "ip", "consumer" }, default = "ip" },
--       origins = { type = "array", items = { type = "string" }, default = { "*" } },
--       headers = { type = "map", values = { type = "string" } },
--       limits  = { type = "map", fields = { burst = { type = "integer" } } },
--   }
--
-- Field spec keys (docs/sdk.md is the reference):
--   type      "string" | "number" | "integer" | "boolean" | "array" | "map" | "duration" | "size"
--   required  true: the key must be present (a `default` makes it present)
--   default   used when the key is absent; checked against the spec when the schema is checked;
--             tables are copied, so each conf gets its own
--   enum      list of allowed values (compared after normalisation)
--   min, max  bounds on the value (number, integer, duration in seconds, size in bytes), on the
--             length in bytes (string) or on the number of items (array)
--   items     spec of each element (array)
--   fields    spec of each key (map used as a record: other keys are refused)
--   values    spec of each value (map with free string keys, e.g. header name -> value)
-- A map has `fields` or `values`, not both; with neither, any string keys and values pass.
--
-- Normalisation: a duration is a number of seconds or a string of <number><unit> groups with
-- units ms, s, m, h, d ("250ms", "1m30s") and becomes seconds (a number: "250ms" -> 0.25); a
-- string of digits is seconds too ("1.5"); a
-- size is a number of bytes or <number><unit> with units b, k, kb, m, mb, g, gb (powers of 1024)
-- and becomes an integer number of bytes ("1.5k" -> 1536). Numbers and integers also accept
-- their decimal string form ("10"), since configuration files may quote them.
--
-- Errors name the path to the value: `rate_limit.window: expected a duration, got "1x"`,
-- `cors.origins[2]: expected a string, got number`. Pure Lua, no globals: runs in the sandbox.

local type, pairs, ipairs, tostring, tonumber, next, error, setmetatable =
    type, pairs, ipairs, tostring, tonumber, next, error, setmetatable
local floor, huge = math.floor, math.huge
local format, match, gmatch, lower, concat, sort = string.format, string.match, string.gmatch,
    string.lower, table.concat, table.sort

local M = {}

local TYPES = {
    string = true, number = true, integer = true, boolean = true,
    array = true, map = true, duration = true, size = true,
}
local SPEC_KEYS = {
    type = true, required = true, default = true, enum = true, min = true, max = true,
    items = true, fields = true, values = true, description = true,
}
local NUMERIC = { number = true, integer = true, duration = true, size = true }

local DURATION_UNITS = { ms = 0.001, s = 1, m = 60, h = 3600, d = 86400 }
local SIZE_UNITS = {
    b = 1, k = 1024, kb = 1024, m = 1048576, mb = 1048576, g = 1073741824, gb = 1073741824,
}

local function show(v)
    if type(v) == "string" then
        return format("%q", v)
    end
    return tostring(v)
end

local function join(path, key)
    if type(key) == "number" then
        return path .. "[" .. key .. "]"
    end
    if path == "" then
        return key
    end
    return path .. "." .. key
end

local function fail(path, msg)
    if path == "" then
        return nil, msg
    end
    return nil, path .. ": " .. msg
end

-- An array is a table whose keys are exactly 1..n (the empty table is one).
local function is_array(t)
    local n = 0
    for k in pairs(t) do
        if type(k) ~= "number" or k < 1 or k ~= floor(k) then
            return false
        end
        n = n + 1
    end
    for i = 1, n do
        if t[i] == nil then
            return false
        end
    end
    return true, n
end

local function parse_duration(s)
    s = lower(s)
    if match(s, "^%d+%.?%d*$") then
        return tonumber(s)
    end
    if not match(s, "^[%d%.a-z]+$") or match(s, "^[a-z]") then
        return nil
    end
    local total, rest = 0, s
    for num, unit in gmatch(s, "([%d%.]+)([a-z]+)") do
        local n, mult = tonumber(num), DURATION_UNITS[unit]
        if not n or not mult then
            return nil
        end
        total = total + n * mult
    end
    -- every character must belong to a <number><unit> group
    rest = s:gsub("[%d%.]+[a-z]+", "")
    if rest ~= "" then
        return nil
    end
    return total
end

local function parse_size(s)
    local num, unit = match(lower(s), "^([%d%.]+)%s*([a-z]*)$")
    local n = tonumber(num or "")
    if not n then
        return nil
    end
    local mult = SIZE_UNITS[unit == "" and "b" or unit]
    if not mult then
        return nil
    end
    return n * mult
end

local function deep_copy(v)
    if type(v) ~= "table" then
        return v
    end
    local t = {}
    for k, x in pairs(v) do
        t[k] = deep_copy(x)
    end
    return t
end

local check_value -- forward

local function check_fields(fields, value, path)
    local out = {}
    for k in pairs(value) do
        if type(k) ~= "string" then
            return fail(path, "keys must be strings, got " .. type(k) .. " " .. show(k))
        end
        if fields[k] == nil then
            return fail(join(path, k), "unknown field")
        end
    end
    -- Sorted, so that the first error reported does not depend on hash order.
    local names = {}
    for k in pairs(fields) do
        names[#names + 1] = k
    end
    sort(names)
    for _, k in ipairs(names) do
        local spec, v = fields[k], value[k]
        if v == nil and spec.default ~= nil then
            v = deep_copy(spec.default)
        end
        if v == nil then
            if spec.required then
                return fail(join(path, k), "required field missing")
            end
        else
            local ok, res = check_value(spec, v, join(path, k))
            if not ok then
                return nil, res
            end
            out[k] = res
        end
    end
    return true, out
end

local function check_bounds(spec, n, path, what)
    if spec.min ~= nil and n < spec.min then
        return fail(path, format("%s must be at least %s, got %s", what, show(spec.min), show(n)))
    end
    if spec.max ~= nil and n > spec.max then
        return fail(path, format("%s must be at most %s, got %s", what, show(spec.max), show(n)))
    end
    return true
end

-- Returns true, normalised value; or nil, "path: message".
function check_value(spec, v, path)
    local t, tv = spec.type, type(v)
    local out = v
    if t == "string" then
        if tv ~= "string" then
            return fail(path, "expected a string, got " .. tv)
        end
        local ok, err = check_bounds(spec, #v, path, "length")
        if not ok then
            return nil, err
        end
    elseif t == "boolean" then
        if tv ~= "boolean" then
            return fail(path, "expected a boolean, got " .. tv)
        end
    elseif t == "number" or t == "integer" then
        local n = v
        if tv == "string" then
            n = tonumber(v)
        elseif tv ~= "number" then
            n = nil
        end
        if n == nil or n ~= n or n == huge or n == -huge then
            return fail(path, "expected " .. (t == "integer" and "an integer" or "a number") ..
                        ", got " .. (tv == "string" and show(v) or tv))
        end
        if t == "integer" and n ~= floor(n) then
            return fail(path, "expected an integer, got " .. show(n))
        end
        out = n
    elseif t == "duration" then
        local n
        if tv == "number" then
            n = v
        elseif tv == "string" then
            n = parse_duration(v)
        end
        if n == nil or n ~= n or n < 0 or n == huge then
            return fail(path, "expected a duration, got " .. (tv == "string" and show(v) or tv))
        end
        out = n
    elseif t == "size" then
        local n
        if tv == "number" then
            n = v
        elseif tv == "string" then
            n = parse_size(v)
        end
        if n == nil or n ~= n or n < 0 or n == huge or n ~= floor(n) then
            return fail(path, "expected a size, got " .. (tv == "string" and show(v) or tv))
        end
        out = n
    elseif t == "array" then
        local ok, n = false, 0
        if tv == "table" then
            ok, n = is_array(v)
        end
        if not ok then
            return fail(path, "expected an array, got " .. (tv == "table" and "a map" or tv))
        end
        local okb, errb = check_bounds(spec, n, path, "number of items")
        if not okb then
            return nil, errb
        end
        out = {}
        for i = 1, n do
            if spec.items then
                local oki, res = check_value(spec.items, v[i], join(path, i))
                if not oki then
                    return nil, res
                end
                out[i] = res
            else
                out[i] = deep_copy(v[i])
            end
        end
    elseif t == "map" then
        if tv ~= "table" or (next(v) ~= nil and is_array(v)) then
            return fail(path, "expected a map, got " .. (tv == "table" and "an array" or tv))
        end
        if spec.fields then
            return check_fields(spec.fields, v, path)
        end
        out = {}
        for k, x in pairs(v) do
            if type(k) ~= "string" then
                return fail(path, "keys must be strings, got " .. type(k) .. " " .. show(k))
            end
            if spec.values then
                local okv, res = check_value(spec.values, x, join(path, k))
                if not okv then
                    return nil, res
                end
                out[k] = res
            else
                out[k] = deep_copy(x)
            end
        end
    end
    if NUMERIC[t] then
        local ok, err = check_bounds(spec, out, path, "value")
        if not ok then
            return nil, err
        end
    end
    if spec.enum then
        local found = false
        for _, e in ipairs(spec.enum) do
            if e == out then
                found = true
                break
            end
        end
        if not found then
            local names = {}
            for i, e in ipairs(spec.enum) do
                names[i] = show(e)
            end
            return fail(path, "expected one of " .. concat(names, ", ") .. ", got " .. show(out))
        end
    end
    return true, out
end

-- ---- Checking a schema itself ----

local check_spec -- forward

local function check_spec_map(fields, path)
    if type(fields) ~= "table" then
        return fail(path, "expected a table of field specs, got " .. type(fields))
    end
    local names = {}
    for k in pairs(fields) do
        if type(k) ~= "string" then
            return fail(path, "field names must be strings, got " .. type(k))
        end
        names[#names + 1] = k
    end
    sort(names)
    for _, k in ipairs(names) do
        local ok, err = check_spec(fields[k], join(path, k))
        if not ok then
            return nil, err
        end
    end
    return true
end

function check_spec(spec, path)
    if type(spec) ~= "table" then
        return fail(path, "expected a field spec (a table), got " .. type(spec))
    end
    for k in pairs(spec) do
        if not SPEC_KEYS[k] then
            return fail(path, "unknown spec key " .. show(k))
        end
    end
    local t = spec.type
    if not TYPES[t] then
        return fail(path, "unknown type " .. show(t))
    end
    if spec.required ~= nil and type(spec.required) ~= "boolean" then
        return fail(path, "'required' must be a boolean")
    end
    if (spec.min ~= nil and type(spec.min) ~= "number") or
       (spec.max ~= nil and type(spec.max) ~= "number") then
        return fail(path, "'min' and 'max' must be numbers")
    end
    if (spec.min ~= nil or spec.max ~= nil) and (t == "boolean" or t == "map") then
        return fail(path, "'min'/'max' do not apply to type " .. t)
    end
    if spec.items ~= nil then
        if t ~= "array" then
            return fail(path, "'items' applies only to type array")
        end
        local ok, err = check_spec(spec.items, join(path, "items"))
        if not ok then
            return nil, err
        end
    end
    if spec.fields ~= nil or spec.values ~= nil then
        if t ~= "map" then
            return fail(path, "'fields' and 'values' apply only to type map")
        end
        if spec.fields ~= nil and spec.values ~= nil then
            return fail(path, "a map has 'fields' or 'values', not both")
        end
        local ok, err
        if spec.fields ~= nil then
            ok, err = check_spec_map(spec.fields, join(path, "fields"))
        else
            ok, err = check_spec(spec.values, join(path, "values"))
        end
        if not ok then
            return nil, err
        end
    end
    if spec.enum ~= nil then
        local ok, n = false, 0
        if type(spec.enum) == "table" then
            ok, n = is_array(spec.enum)
        end
        if not ok or n == 0 then
            return fail(path, "'enum' must be a non-empty array")
        end
        if t == "array" or t == "map" or t == "boolean" then
            return fail(path, "'enum' does not apply to type " .. t)
        end
    end
    if spec.default ~= nil then
        local ok, err = check_value(spec, deep_copy(spec.default), join(path, "default"))
        if not ok then
            return nil, err
        end
    end
    return true
end

-- pgw.schema.check_schema(schema)
-- Syntax: ok, err = pgw.schema.check_schema(schema)
-- Stages: all, and at load time. Yields: no.
-- Returns: true if <schema> is a valid schema (a table of field specs, each default valid for
-- its spec); else nil and a message naming the field, e.g. "window: unknown type \"durration\"".
-- Example: assert(pgw.schema.check_schema({ limit = { type = "integer" } }))
function M.check_schema(schema)
    return check_spec_map(schema, "")
end

-- Checked schemas, so that check() validates each schema once (weak: schemas come and go with
-- policy sets).
local known_good = setmetatable({}, { __mode = "k" })

-- pgw.schema.check(schema, conf[, name])
-- Syntax: ok, conf_or_err = pgw.schema.check(schema, conf, name)
-- Stages: all, and at load time. Yields: no.
-- Returns: true and a new table (the input is not modified): <conf> with defaults filled in,
-- durations in seconds and sizes in bytes; or nil and "<name>.<path>: <message>" for the first
-- error (fields in sorted order). <conf> nil means {}. <name> (the policy name) prefixes paths.
-- Raises if <schema> itself is invalid ("invalid schema: ...").
-- Example:
--   local ok, conf = schema.check({ window = { type = "duration", required = true } },
--                                 { window = "1m" }, "rate_limit")   --> true, { window = 60 }
function M.check(schema, conf, name)
    if not known_good[schema] then
        local ok, err = M.check_schema(schema)
        if not ok then
            error("invalid schema: " .. err, 2)
        end
        known_good[schema] = true
    end
    if conf == nil then
        conf = {}
    end
    local path = name or ""
    if type(conf) ~= "table" or (next(conf) ~= nil and is_array(conf)) then
        return fail(path, "expected a map, got " .. (type(conf) == "table" and "an array"
                                                      or type(conf)))
    end
    return check_fields(schema, conf, path)
end

-- pgw.schema.parse_duration(s) / pgw.schema.parse_size(s)
-- Syntax: secs = pgw.schema.parse_duration("1m30s"); bytes = pgw.schema.parse_size("64k")
-- Stages: all. Yields: no.
-- Returns: the number (seconds / bytes), or nil if <s> is not in the format above.
-- Example: pgw.schema.parse_duration("250ms") --> 0.25
M.parse_duration = function(s)
    if type(s) ~= "string" then
        return nil
    end
    return parse_duration(s)
end
M.parse_size = function(s)
    if type(s) ~= "string" then
        return nil
    end
    local n = parse_size(s)
    if n and n == floor(n) then
        return n
    end
    return nil
end

return M
