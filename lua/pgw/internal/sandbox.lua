-- pgw/internal/sandbox.lua: builds the environment each policy runs in. Bridge-internal: loaded
-- once by gateway/lua.c with the privileged values below, never reachable from a policy
-- (`require` refuses "pgw.internal.*" and "pgw.policies.*"). docs/lua.md lists what a policy
-- sees and why.
--
-- Called as chunk(priv) where priv = {
--   guard_check = C function: raises the CPU-budget error again if the budget was exceeded,
--   io_yield    = light userdata: first value of every yield made by a bridge function that waits,
--   sdk_has     = C function: whether the embedded SDK has a module of that name,
--   pattern     = { find, match, gmatch, gsub }: the pattern functions of gateway/lua_pattern.c,
--                 which the CPU guard can stop (the builtin ones run to completion in C),
-- }
-- Returns { new_env = function(name) -> env, register = function(name, tbl or nil),
--           readonly = function(t) -> view }.

local priv = ...
local guard_check, IO, sdk_has = priv.guard_check, priv.io_yield, priv.sdk_has
local PATTERN = priv.pattern

local error, pairs, ipairs, type, tostring, rawset, setmetatable, select =
    error, pairs, ipairs, type, tostring, rawset, setmetatable, select
local raw_pcall, raw_xpcall, trusted_require = pcall, xpcall, require
local co_create, co_resume, co_yield, co_status, co_running =
    coroutine.create, coroutine.resume, coroutine.yield, coroutine.status, coroutine.running
local sub = string.sub

-- ---- Read-only views ----

-- Every view made here, so that rawset/table.insert/remove/sort can refuse them.
local protected = setmetatable({}, { __mode = "k" })
-- original table -> its view, so every policy shares one view per SDK table.
local views = setmetatable({}, { __mode = "k" })

local function deny_write(_, k)
    error("attempt to modify a read-only table" ..
          (type(k) == "string" and " (field '" .. k .. "')" or ""), 2)
end

-- view -> its snapshot, for pairs/ipairs below (never handed to a policy: it is writable).
local shadows = setmetatable({}, { __mode = "k" })

-- A view is an empty table whose __index is a snapshot of the original, with nested tables
-- replaced by their views; its metatable is hidden (getmetatable returns false) and locked.
-- The snapshot is taken once: SDK modules are static after load. The policy's pairs and ipairs
-- see through a view; `#`, next, unpack and table.concat see an empty table (Lua 5.1 has no
-- __len or __pairs for tables).
local function readonly(t)
    if protected[t] then
        return t
    end
    local v = views[t]
    if v then
        return v
    end
    local shadow = {}
    v = setmetatable({}, { __index = shadow, __newindex = deny_write, __metatable = false })
    views[t] = v
    protected[v] = true
    shadows[v] = shadow
    for k, val in pairs(t) do
        if type(val) == "table" then
            val = readonly(val)
        end
        shadow[k] = val
    end
    return v
end

local raw_next, raw_ipairs = next, ipairs

local function s_pairs(t)
    local shadow = shadows[t]
    if shadow == nil then
        return pairs(t)
    end
    local k
    return function()
        local v
        k, v = raw_next(shadow, k)
        return k, v
    end
end

local function s_ipairs(t)
    local shadow = shadows[t]
    if shadow == nil then
        return raw_ipairs(t)
    end
    local i = 0
    return function()
        i = i + 1
        local v = shadow[i]
        if v ~= nil then
            return i, v
        end
    end
end

local function refuse_protected(name, fn)
    return function(t, ...)
        if protected[t] then
            error(name .. ": table is read-only", 2)
        end
        return fn(t, ...)
    end
end

-- ---- The string metatable ----

-- getmetatable("") returns this stand-in, never the real metatable, so a policy cannot replace
-- string methods for everyone. string.dump is gone from the real string table (gateway/lua.c).
-- Method calls (s:find(p)) reach the guarded pattern functions too: the metatable is shared by
-- every string, so it gets a copy of the string table with them; trusted code calling string.*
-- (or a local copy of it) keeps the builtin, JIT-compiled ones.
do
    local mt = debug.getmetatable("")
    local methods = {}
    for k, v in pairs(mt.__index) do
        methods[k] = v
    end
    for k, v in pairs(PATTERN) do
        methods[k] = v
    end
    mt.__index = methods
    mt.__metatable = readonly({ __index = methods })
end

-- ---- Calls that catch errors: never swallow the CPU-budget error ----

local function after_pcall(...)
    guard_check()
    return ...
end

local function s_pcall(f, ...)
    return after_pcall(raw_pcall(f, ...))
end

-- The handler runs where the error was raised; when that is the guard's count hook, LuaJIT
-- keeps hooks off while the handler runs, so a looping handler would never be stopped.
local function s_xpcall(f, handler, ...)
    return after_pcall(raw_xpcall(f, function(e)
        guard_check()
        return handler(e)
    end, ...))
end

-- ---- Coroutines ----
-- A policy's own coroutines behave as in plain Lua, with two rules that keep the request's
-- thread in the bridge's hands (as lua-nginx-module does):
--  * a bridge function that waits (pgw_lua_yield) yields IO up through every policy coroutine
--    to the request's thread; each resumer forwards it and feeds the results back down;
--  * coroutine.yield outside a coroutine the policy created is an error (it would suspend the
--    request with no event to resume it), and resume/wrap only accept the policy's coroutines.

local mine = setmetatable({}, { __mode = "k" })

local function s_create(f)
    local co = co_create(f)
    mine[co] = true
    return co
end

local function forward(co, ok, first, ...)
    if ok and first == IO and co_status(co) == "suspended" then
        -- Suspend this thread too (up to the request's thread), then give the results down.
        return forward(co, co_resume(co, co_yield(IO, ...)))
    end
    guard_check()
    return ok, first, ...
end

local function s_resume(co, ...)
    if not mine[co] then
        if type(co) ~= "thread" then
            error("bad argument #1 to 'resume' (coroutine expected)", 2)
        end
        error("coroutine.resume: not a coroutine created by this policy", 2)
    end
    return forward(co, co_resume(co, ...))
end

local function wrap_results(ok, ...)
    if ok then
        return ...
    end
    error((...), 0)
end

local function s_wrap(f)
    local co = s_create(f)
    return function(...)
        return wrap_results(forward(co, co_resume(co, ...)))
    end
end

local function s_yield(...)
    local co = co_running()
    if co == nil or not mine[co] then
        error("coroutine.yield: not inside a coroutine created by the policy", 2)
    end
    return co_yield(...)
end

local function s_isyieldable()
    local co = co_running()
    return co ~= nil and mine[co] == true
end

local function s_status(co)
    return co_status(co)
end

-- ---- Limited built-ins ----

local function s_collectgarbage(opt)
    if opt == "count" then
        return collectgarbage("count")
    end
    error("collectgarbage: only \"count\" is allowed in a policy", 2)
end

local function s_rawset(t, k, v)
    if protected[t] then
        error("rawset: table is read-only", 2)
    end
    return rawset(t, k, v)
end

local function copy(src, names, over)
    local t = {}
    for _, n in ipairs(names) do
        t[n] = over and over[n] or src[n]
    end
    return t
end

-- string.dump is absent; table.move/foreach/foreachi/getn are left out: LuaJIT implements them
-- in Lua, so their loops would run compiled where the CPU guard cannot see them.
local STRING = { "byte", "char", "find", "format", "gmatch", "gsub", "len", "lower", "match",
                 "rep", "reverse", "sub", "upper" }
local MATH = { "abs", "acos", "asin", "atan", "atan2", "ceil", "cos", "cosh", "deg", "exp",
               "floor", "fmod", "frexp", "huge", "ldexp", "log", "log10", "max", "min", "modf",
               "pi", "pow", "rad", "random", "sin", "sinh", "sqrt", "tan", "tanh" }
local BIT = { "arshift", "band", "bnot", "bor", "bswap", "bxor", "lshift", "rol", "ror",
              "rshift", "tobit", "tohex" }

local s_table_insert = refuse_protected("table.insert", table.insert)
local s_table_remove = refuse_protected("table.remove", table.remove)
local s_table_sort = refuse_protected("table.sort", table.sort)

-- ---- require ----

local policies = {} -- name -> the table the policy returned (its view is made at first require)

local function s_require(name)
    if type(name) ~= "string" then
        error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2)
    end
    -- Built-in policies are not SDK modules: the engine loads them into a sandbox like any
    -- policy of the set, so a trusted require must never hand one out in the global environment.
    if (name == "pgw" or sub(name, 1, 4) == "pgw.") and sub(name, 1, 13) ~= "pgw.internal."
        and sub(name, 1, 13) ~= "pgw.policies." and sdk_has(name) then
        local m = trusted_require(name)
        if type(m) == "table" then
            m = readonly(m)
        end
        return m
    end
    local p = policies[name]
    if p then
        return readonly(p)
    end
    error("module '" .. name .. "' not found: a policy may require the SDK (pgw, pgw.*) and " ..
          "the policies of its set", 2)
end

-- ---- Environments ----

local M = {}

function M.new_env(name)
    local env = {
        assert = assert, error = error, ipairs = s_ipairs, next = next, pairs = s_pairs,
        pcall = s_pcall, xpcall = s_xpcall, rawequal = rawequal, rawget = rawget,
        rawset = s_rawset, select = select, setmetatable = setmetatable,
        getmetatable = getmetatable, tonumber = tonumber, tostring = tostring, type = type,
        unpack = unpack, collectgarbage = s_collectgarbage, require = s_require,
        _VERSION = _VERSION,
        string = copy(string, STRING, PATTERN),
        table = { concat = table.concat, insert = s_table_insert, maxn = table.maxn,
                  remove = s_table_remove, sort = s_table_sort },
        math = copy(math, MATH),
        bit = copy(bit, BIT),
        os = { time = os.time, clock = os.clock, date = os.date },
        coroutine = { create = s_create, resume = s_resume, wrap = s_wrap, yield = s_yield,
                      status = s_status, running = co_running, isyieldable = s_isyieldable },
    }
    env._G = env
    env._POLICY = name
    return env
end

-- tbl == nil forgets the policy: `require "<name>"` fails from then on.
function M.register(name, tbl)
    policies[name] = tbl
end

M.readonly = readonly

return M
