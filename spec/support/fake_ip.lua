-- spec/support/fake_ip.lua: a pure-Lua `pgw.ip` for the fake host (spec/support/fake_pgw.lua),
-- with the meaning and the errors of gateway/lua_ip.c (docs/sdk.md), for the specs of the
-- policies that use it (ip_restriction):
--
--   local fake = require "fake_pgw"
--   fake.install()
--   require("fake_ip").install(fake)          -- fake.pgw.ip = the pure-Lua pgw.ip
--   local m = fake.pgw.ip.matcher({ "10.0.0.0/8", "2001:db8::/32" })
--   m:match("10.1.2.3") --> true; m:match("x") --> nil, "invalid address"
--
-- Parsing is as strict as addr.c's (no whitespace, brackets, zones or ports; no IPv4 octet or
-- prefix with a leading zero; prefixes 0..32 / 0..128; host bits beyond the prefix cleared).
-- Matching is the definition the C matcher is tested against: every address and range is
-- taken to 128 bits, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d, prefix + 96), and a range holds
-- an address when their first <prefix> bits agree. So an IPv4-mapped address matches IPv4
-- ranges and ::/0 holds every IPv4 address, as in the gateway. The fake matcher scans its list
-- (the C one binary-searches merged ranges); it is a table, not a userdata, and the quoting of
-- bytes in error messages may differ for unprintable bytes.

local M = {}

local byte, find, format, match, sub, gmatch =
    string.byte, string.find, string.format, string.match, string.sub, string.gmatch
local floor = math.floor

-- "0".."255" without a leading zero -> number, or nil
local function octet(s)
    if not match(s, "^%d%d?%d?$") or (#s > 1 and sub(s, 1, 1) == "0") then
        return nil
    end
    local n = tonumber(s)
    return n <= 255 and n or nil
end

-- dotted quad -> { 4 bytes }, or nil
local function parse_v4(s)
    local a, b, c, d = match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    if not a then
        return nil
    end
    local t = { octet(a), octet(b), octet(c), octet(d) }
    if not (t[1] and t[2] and t[3] and t[4]) then
        return nil
    end
    return t
end

-- "1:2::3" / "::ffff:1.2.3.4" -> { 16 bytes }, or nil (inet_pton's rules)
local function parse_v6(s)
    if #s < 2 or find(s, "[^%x:%.]") then
        return nil
    end
    local head, tail = s, nil
    local dc = find(s, "::", 1, true)
    if dc then
        head, tail = sub(s, 1, dc - 1), sub(s, dc + 2)
        if find(tail, "::", 1, true) then
            return nil
        end
    end
    local function groups(part, is_last)
        local out = {}
        if part == "" then
            return out
        end
        local fields = {}
        for f in gmatch(part .. ":", "([^:]*):") do
            fields[#fields + 1] = f
        end
        for i, f in ipairs(fields) do
            if is_last and i == #fields and find(f, ".", 1, true) then
                local v4 = parse_v4(f)
                if not v4 then
                    return nil
                end
                out[#out + 1] = v4[1] * 256 + v4[2]
                out[#out + 1] = v4[3] * 256 + v4[4]
            elseif match(f, "^%x%x?%x?%x?$") then
                out[#out + 1] = tonumber(f, 16)
            else
                return nil
            end
        end
        return out
    end
    local h = groups(head, tail == nil)
    local t = {}
    if tail ~= nil then
        t = groups(tail, true)
    end
    if not h or not t then
        return nil
    end
    local n = #h + #t
    if (tail == nil and n ~= 8) or (tail ~= nil and n > 7) then
        return nil
    end
    local all = {}
    for _, g in ipairs(h) do
        all[#all + 1] = g
    end
    for _ = 1, 8 - n do
        all[#all + 1] = 0
    end
    for _, g in ipairs(t) do
        all[#all + 1] = g
    end
    local bytes = {}
    for i, g in ipairs(all) do
        bytes[2 * i - 1] = floor(g / 256)
        bytes[2 * i] = g % 256
    end
    return bytes
end

-- address text -> { 16 bytes } (IPv4 mapped), or nil
local function parse_addr(s)
    if #s == 0 or #s > 45 or find(s, "%z") then
        return nil
    end
    if find(s, ":", 1, true) then
        return parse_v6(s)
    end
    local v4 = parse_v4(s)
    if not v4 then
        return nil
    end
    return { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, v4[1], v4[2], v4[3], v4[4] }
end

-- "a/p" or "a" -> { bytes = 16 bytes, prefix = 0..128 } on the 128-bit scale, or nil
local function parse_cidr(s)
    local slash = find(s, "/", 1, true)
    local a = slash and sub(s, 1, slash - 1) or s
    if #a == 0 or #a > 45 or find(a, "%z") then
        return nil
    end
    local v6 = find(a, ":", 1, true) ~= nil
    local bytes = parse_addr(a)
    if not bytes then
        return nil
    end
    local max = v6 and 128 or 32
    local prefix = max
    if slash then
        local p = sub(s, slash + 1)
        if not match(p, "^%d%d?%d?$") or (#p > 1 and sub(p, 1, 1) == "0") then
            return nil
        end
        prefix = tonumber(p)
        if prefix > max then
            return nil
        end
    end
    return { bytes = bytes, prefix = v6 and prefix or prefix + 96 }
end

local function holds(r, a)
    local bits = r.prefix
    for i = 1, 16 do
        if bits <= 0 then
            return true
        end
        local x, y = r.bytes[i], a[i]
        if bits >= 8 then
            if x ~= y then
                return false
            end
        else
            local d = 2 ^ (8 - bits) -- compare the top <bits> bits
            return floor(x / d) == floor(y / d)
        end
        bits = bits - 8
    end
    return true
end

local function quote(s)
    local out = s:sub(1, 80):gsub('[%c"\\\128-\255]', function(c)
        return "\\" .. byte(c)
    end)
    return '"' .. out .. (#s > 80 and "..." or "") .. '"'
end

local matcher_mt = { __metatable = "pgw.ip.matcher" }
local methods = {}
matcher_mt.__index = methods
matcher_mt.__tostring = function(m)
    return format("pgw.ip.matcher (fake, %d entries)", #m.ranges)
end

function methods.match(self, addr)
    if getmetatable(self) ~= "pgw.ip.matcher" or type(self) ~= "table" then
        error("pgw.ip.matcher:match: bad self (a pgw.ip.matcher expected, got " .. type(self) ..
              ")", 2)
    end
    if type(addr) ~= "string" then
        error("pgw.ip.matcher:match: bad argument #1 (string expected, got " .. type(addr) ..
              ")", 2)
    end
    local a = parse_addr(addr)
    if not a then
        return nil, "invalid address"
    end
    for _, r in ipairs(self.ranges) do
        if holds(r, a) then
            return true
        end
    end
    return false
end

M.ip = {}

function M.ip.matcher(list)
    if type(list) ~= "table" then
        error("pgw.ip.matcher: bad argument #1 (table expected, got " .. type(list) .. ")", 2)
    end
    local ranges = {}
    local i = 1
    while true do
        local item = list[i] -- through metatables, so read-only views work
        if item == nil then
            break
        end
        if type(item) ~= "string" then
            error(format("pgw.ip.matcher: bad item %d (string expected, got %s)", i, type(item)),
                  2)
        end
        local r = parse_cidr(item)
        if not r then
            error(format("pgw.ip.matcher: invalid CIDR %s (item %d)", quote(item), i), 2)
        end
        ranges[i] = r
        i = i + 1
    end
    return setmetatable({ ranges = ranges }, matcher_mt)
end

function M.ip.valid(addr)
    if type(addr) ~= "string" then
        error("pgw.ip.valid: bad argument #1 (string expected, got " .. type(addr) .. ")", 2)
    end
    return parse_addr(addr) ~= nil
end

-- install(fake): sets fake.pgw.ip (the table policies get from `require "pgw"`).
function M.install(fake)
    fake.pgw.ip = M.ip
    return M.ip
end

return M
