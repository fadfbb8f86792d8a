-- pgw/internal/query.lua: query strings as ordered lists of { name, value } (value true for a
-- bare "flag"). Shared by the SDK (pgw.req.get_query, set_query_arg, ... in lua/pgw/init.lua)
-- and the spec runner's fake host, so both implement one contract (docs/sdk.md).
local type, tostring, ipairs, error, tonumber = type, tostring, ipairs, error, tonumber
local byte, char, format, gsub, find, sub, gmatch = string.byte, string.char, string.format,
    string.gsub, string.find, string.sub, string.gmatch
local concat, remove = table.concat, table.remove

local M = {}

local function unescape(s)
    s = gsub(s, "+", " ")
    return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

local function escape(s)
    return (gsub(s, "[^%w%-._~]", function(c) return format("%%%02X", byte(c)) end))
end

-- parse(q) -> list: "a=1&b&a=2" -> { {"a","1"}, {"b",true}, {"a","2"} } (names and values
-- percent-decoded, '+' is a space).
function M.parse(q)
    local list = {}
    for part in gmatch(q, "[^&]+") do
        local eq = find(part, "=", 1, true)
        if eq then
            list[#list + 1] = { unescape(sub(part, 1, eq - 1)), unescape(sub(part, eq + 1)) }
        else
            list[#list + 1] = { unescape(part), true }
        end
    end
    return list
end

-- serialise(list) -> string: every byte outside unreserved characters percent-encoded.
function M.serialise(list)
    local parts = {}
    for i, a in ipairs(list) do
        parts[i] = a[2] == true and escape(a[1]) or (escape(a[1]) .. "=" .. escape(a[2]))
    end
    return concat(parts, "&")
end

-- to_table(list) -> { name = value | { values... } }
function M.to_table(list)
    local t = {}
    for _, a in ipairs(list) do
        local old = t[a[1]]
        if old == nil then
            t[a[1]] = a[2]
        elseif type(old) == "table" then
            old[#old + 1] = a[2]
        else
            t[a[1]] = { old, a[2] }
        end
    end
    return t
end

-- first(list, name, fname) -> the first value of <name>, or nil; raises (for the caller of the
-- SDK function <fname>) when name is not a string.
function M.first(list, name, fname)
    if type(name) ~= "string" then
        error(fname .. ": bad argument #1 (string expected, got " .. type(name) .. ")", 3)
    end
    for _, a in ipairs(list) do
        if a[1] == name then
            return a[2]
        end
    end
    return nil
end

-- apply(list, fname, op, name, value): set_query_arg / add_query_arg / clear_query_arg on
-- <list>. Raises for the caller of the SDK function <fname> on a bad argument.
function M.apply(list, fname, op, name, value)
    if type(name) ~= "string" or name == "" then
        error(fname .. ": bad argument #1 (non-empty string expected)", 3)
    end
    local vals
    if op ~= "clear_query_arg" then
        if type(value) == "string" or type(value) == "number" or value == true then
            vals = { value == true and true or tostring(value) }
        elseif type(value) == "table" and #value > 0 then
            vals = {}
            for i, v in ipairs(value) do
                vals[i] = tostring(v)
            end
        else
            error(fname .. ": bad argument #2 (string, number, true or array expected, got " ..
                  type(value) .. ")", 3)
        end
    end
    if op ~= "add_query_arg" then
        for i = #list, 1, -1 do
            if list[i][1] == name then
                remove(list, i)
            end
        end
    end
    for _, v in ipairs(vals or {}) do
        list[#list + 1] = { name, v }
    end
end

return M
