-- ws_validate: JSON validation of WebSocket messages (docs/websocket.md) against a documented
-- subset of JSON Schema, until full JSON Schema lands.
--
-- In `ws_message`, for messages of the chosen direction: the payload must be JSON (text or binary)
-- that matches `schema`. Keywords: type (object, array, string, number, integer, boolean, null,
-- or a list of them), properties, required, additionalProperties (true or false), items (one
-- schema for every element), enum, const, minLength / maxLength (bytes), minimum / maximum,
-- minItems / maxItems, minProperties / maxProperties. Any other keyword is a configuration error
-- (it would be silently ignored otherwise). An empty JSON array and an empty object decode to the
-- same empty table, which both "array" and "object" accept.
-- Over an invalid message, per `action`:
--   drop   the message is not forwarded (later ws_message policies do not see it);
--   reply  the same, and the sender gets {"error":"invalid message","detail":"<why>"};
--   close  both sides get close `close_code` (default 1007, invalid payload data).
--
-- Config:
--   schema      the JSON Schema (a map), required
--   direction   inbound | outbound | both; default inbound
--   action      drop | reply | close; default reply
--   close_code  default 1007
--
-- Example (route config):
--   policies:
--     - ws_validate:
--         schema:
--           type: object
--           required: [action]
--           properties:
--             action: { type: string, enum: [join, leave, send] }
--             text: { type: string, maxLength: 500 }

local pgw = require "pgw"

local type, pairs, ipairs, next, tostring, floor = type, pairs, ipairs, next, tostring, math.floor
local decode, encode, null, ws = pgw.json.decode, pgw.json.encode, pgw.json.null, pgw.ws

local KEYWORDS = {
    type = true, properties = true, required = true, additionalProperties = true, items = true,
    enum = true, const = true, minLength = true, maxLength = true, minimum = true,
    maximum = true, minItems = true, maxItems = true, minProperties = true, maxProperties = true,
}
local TYPES = { object = true, array = true, string = true, number = true, integer = true,
                boolean = true, null = true }

-- The JSON type of a decoded value ("array" for a table with keys 1..n, "empty" for {}).
local function json_type(v)
    local t = type(v)
    if v == null then return "null" end
    if t == "string" or t == "boolean" then return t end
    if t == "number" then return v == floor(v) and "integer" or "number" end
    if t ~= "table" then return "?" end
    if next(v) == nil then return "empty" end
    local n = #v
    if n > 0 then
        local count = 0
        for _ in pairs(v) do count = count + 1 end
        if count == n then return "array" end
    end
    return "object"
end

local function type_ok(want, got)
    if want == got then return true end
    if want == "number" and got == "integer" then return true end
    return got == "empty" and (want == "array" or want == "object")
end

local function count_keys(t)
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    return n
end

local function equal(a, b)
    if type(a) ~= "table" or type(b) ~= "table" then return a == b end
    for k, v in pairs(a) do
        if not equal(v, b[k]) then return false end
    end
    for k in pairs(b) do
        if a[k] == nil then return false end
    end
    return true
end

local validate

local function check_type(s, v, got, path)
    local want = s.type
    if want == nil then return true end
    if type(want) == "string" then
        if type_ok(want, got) then return true end
    else
        for _, w in ipairs(want) do
            if type_ok(w, got) then return true end
        end
    end
    return nil, path .. ": expected " .. (type(want) == "string" and want or "one of the types")
end

local function check_object(s, v, path)
    local n = count_keys(v)
    if s.minProperties and n < s.minProperties then return nil, path .. ": too few members" end
    if s.maxProperties and n > s.maxProperties then return nil, path .. ": too many members" end
    for _, name in ipairs(s.required or {}) do
        if v[name] == nil then return nil, path .. ": missing " .. name end
    end
    local props = s.properties or {}
    for k, item in pairs(v) do
        local ps = props[k]
        if ps then
            local ok, why = validate(ps, item, path .. "." .. tostring(k))
            if not ok then return nil, why end
        elseif s.additionalProperties == false then
            return nil, path .. ": unexpected member " .. tostring(k)
        end
    end
    return true
end

local function check_array(s, v, path)
    local n = #v
    if s.minItems and n < s.minItems then return nil, path .. ": too few items" end
    if s.maxItems and n > s.maxItems then return nil, path .. ": too many items" end
    if s.items then
        for i = 1, n do
            local ok, why = validate(s.items, v[i], path .. "[" .. (i - 1) .. "]")
            if not ok then return nil, why end
        end
    end
    return true
end

-- Whether <v> matches <s>: true, or nil and why (a JSON path like "$.text").
validate = function(s, v, path)
    local got = json_type(v)
    local ok, why = check_type(s, v, got, path)
    if not ok then return nil, why end
    if s.const ~= nil and not equal(s.const, v) then return nil, path .. ": not the constant" end
    if s.enum then
        local found = false
        for _, e in ipairs(s.enum) do
            if equal(e, v) then found = true break end
        end
        if not found then return nil, path .. ": not one of the allowed values" end
    end
    if got == "string" then
        if s.minLength and #v < s.minLength then return nil, path .. ": too short" end
        if s.maxLength and #v > s.maxLength then return nil, path .. ": too long" end
    elseif got == "number" or got == "integer" then
        if s.minimum and v < s.minimum then return nil, path .. ": below the minimum" end
        if s.maximum and v > s.maximum then return nil, path .. ": above the maximum" end
    elseif got == "object" or (got == "empty" and s.type ~= "array") then
        return check_object(s, v, path)
    elseif got == "array" or got == "empty" then
        return check_array(s, v, path)
    end
    return true
end

-- Checks the schema itself (at load): known keywords with values of the right shape.
local function check_schema(s, path)
    if type(s) ~= "table" then return nil, path .. ": a schema must be a map" end
    for k, v in pairs(s) do
        if not KEYWORDS[k] then
            return nil, path .. ": unsupported keyword " .. tostring(k)
        end
        if k == "type" then
            for _, t in ipairs(type(v) == "table" and v or { v }) do
                if not TYPES[t] then return nil, path .. ".type: unknown type " .. tostring(t) end
            end
        elseif k == "properties" then
            if type(v) ~= "table" then return nil, path .. ".properties: a map is needed" end
            for name, ps in pairs(v) do
                local ok, why = check_schema(ps, path .. ".properties." .. tostring(name))
                if not ok then return nil, why end
            end
        elseif k == "items" then
            local ok, why = check_schema(v, path .. ".items")
            if not ok then return nil, why end
        elseif k == "required" or k == "enum" then
            if type(v) ~= "table" then return nil, path .. "." .. k .. ": a list is needed" end
        elseif k == "additionalProperties" then
            if type(v) ~= "boolean" then
                return nil, path .. ".additionalProperties: true or false (schemas unsupported)"
            end
        elseif k ~= "const" and type(v) ~= "number" then
            return nil, path .. "." .. k .. ": a number is needed"
        end
    end
    return true
end

local function refuse(conf, why)
    local action = conf.action
    if action == "reply" then
        ws.reply(encode({ error = "invalid message", detail = why }))
        return ws.drop()
    elseif action == "drop" then
        return ws.drop()
    end
    return ws.close(conf.close_code, "invalid message")
end

return {
    name = "ws_validate",

    schema = {
        schema = { type = "map", required = true },
        direction = { type = "string", enum = { "inbound", "outbound", "both" },
                      default = "inbound" },
        action = { type = "string", enum = { "drop", "reply", "close" }, default = "reply" },
        close_code = { type = "integer", min = 1000, max = 4999, default = 1007 },
    },

    check_conf = function(conf)
        local ok, why = check_schema(conf.schema, "ws_validate.schema")
        if not ok then return nil, why end
        local valid, why = ws.is_close_code(conf.close_code)
        if not valid then
            return nil, "ws_validate.close_code: " .. why
        end
        return true
    end,

    ws_message = function(conf, msg)
        if conf.direction ~= "both" and msg.direction ~= conf.direction then
            return
        end
        local v, err = decode(msg.data)
        if v == nil then
            return refuse(conf, "not JSON: " .. tostring(err))
        end
        local ok, why = validate(conf.schema, v, "$")
        if not ok then
            return refuse(conf, why)
        end
    end,
}
