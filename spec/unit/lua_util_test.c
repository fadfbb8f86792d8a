/* lua_util_test.c: the SDK's pure helpers (lua_util.c: pgw.json, pgw.time, pgw.base64,
 * pgw.crypto, pgw.const_eq) and pgw.cache (lua_cache.c), called from trusted Lua code through a
 * global `pgw` table. The bridge (lua_task.c) is not linked: the fakes below stand for it, with
 * a settable current policy and stage. Both modules are included to reach their statics (the
 * cache's clock skew and counters). */
#include "../../gateway/lua_cache.c"
#include "../../gateway/lua_util.c"
#include "../support/test.h"
#include "../support/lua_snippets.h"

#include <event2/event.h>
#include <unistd.h>

/* ---- Fake bridge ---- */

static struct pgw_bridge_run fake_run = {.stage = PGW_STAGE_ACCESS, .policy = "alpha"};
static struct event_base *fake_base;

const struct pgw_bridge_run *pgw_bridge_current(void) { return &fake_run; }

struct event_base *pgw_bridge_base(void) { return fake_base; }

const char *pgw_bridge_stage_name(unsigned stage)
{
    static const char *const names[] = {"rewrite",       "access",      "balance",
                                        "header_filter", "body_filter", "log",
                                        "init_worker",   "timer",       "load"};
    for (unsigned i = 0; i < PGW_ARRAY_LEN(names); i++)
        if (stage == 1u << i)
            return names[i];
    return "none";
}

unsigned pgw_bridge_check(lua_State *L, const char *fname, unsigned stages)
{
    if ((fake_run.stage & stages) == 0)
        luaL_error(L, "%s: not allowed in stage %s", fname, pgw_bridge_stage_name(fake_run.stage));
    return fake_run.stage;
}

/* ---- Helpers ---- */

#define CAP (64u * 1024 * 1024)
#define SMALL_CAP (4u * 1024 * 1024)


/* Lua helpers for the snippets: eq(got, want[, what]), raises(substring, f, ...),
 * fails(reason_prefix, f, ...) for functions returning nil, reason. */
static const char prelude[] =
    SNIPPETS_PRELUDE
    "function fails(prefix, f, ...)\n"
    "  local v, e = f(...)\n"
    "  if v ~= nil or type(e) ~= 'string' or e:sub(1, #prefix) ~= prefix then\n"
    "    error(string.format('got %s, %s; expected nil, %q...', tostring(v), tostring(e), "
    "prefix),\n"
    "      2)\n"
    "  end\n"
    "  return e\n"
    "end\n";

static void open_modules(lua_State *L)
{
    pgw_lua_open_util(L);
    pgw_lua_open_cache(L);
}

static struct pgw_lua *new_state(size_t cap) { return snippets_state(cap, open_modules, prelude); }

static struct pgw_lua *lua; /* the shared state of most tests */

/* ---- pgw.json ---- */

static void test_json_decode(void)
{
    LUA(lua, "local t = pgw.json.decode(' {\"a\": [1, 2, {\"b\": null}], \"c\": "
             "\"\\\\u00e9\\\\ud83d\\\\ude00\", \"d\": -1.5e3, \"e\": false, \"f\": true} ')\n"
             "eq(t.a[1], 1); eq(t.a[2], 2); eq(#t.a, 3)\n"
             "eq(t.a[3].b, pgw.json.null, 'null'); eq(type(pgw.json.null), 'userdata')\n"
             "eq(t.c, '\\195\\169\\240\\159\\152\\128', 'utf-8'); eq(t.d, -1500)\n"
             "eq(t.e, false); eq(t.f, true)\n"
             "eq(pgw.json.decode('1'), 1); eq(pgw.json.decode(' \"x\" '), 'x')\n"
             "eq(pgw.json.decode('null'), pgw.json.null); eq(pgw.json.decode('0.25e1'), 2.5)\n"
             "eq(pgw.json.decode('-0'), 0); eq(pgw.json.decode('1E+2'), 100)\n"
             "eq(pgw.json.decode([[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"]]), '\"\\\\/\\b\\f\\n\\r\\t')\n"
             "eq(pgw.json.decode([[\"a\\u0000b\"]]), 'a\\0b', 'NUL')\n"
             "eq(pgw.json.decode('\"\\255\\254\"'), '\\255\\254', 'bytes >= 0x80 kept')\n"
             "eq(next(pgw.json.decode('{}')), nil); eq(next(pgw.json.decode('[ ]')), nil)\n"
             "eq(pgw.json.decode('{\"k\":1,\"k\":2}').k, 2, 'duplicate key: last wins')\n"
             "eq(pgw.json.decode('{\"1\":true}')['1'], true, 'keys stay strings')\n");
    /* The depth limit: 64 nested arrays decode, 65 do not. */
    LUA(lua, "local t = pgw.json.decode(string.rep('[', 64) .. string.rep(']', 64))\n"
             "for i = 1, 63 do t = t[1] end; eq(type(t), 'table'); eq(next(t), nil)\n"
             "local e = fails('invalid JSON: ', pgw.json.decode,\n"
             "  string.rep('[', 65) .. string.rep(']', 65))\n"
             "eq(e, 'invalid JSON: nested too deeply (limit 64) at byte 65')\n"
             "fails('invalid JSON: nested too deeply', pgw.json.decode,\n"
             "  string.rep('{\"a\":', 65) .. '1' .. string.rep('}', 65))\n");
    LUA(lua,
        "local bad = { '', ' ', '{', '[1,]', '[1 2]', '{\"a\" 1}', '{\"a\":}', '{a:1}',\n"
        "  '{1:2}', '01', '1.', '.5', '-', '1e', '1e+', '+1', 'tru', 'nul', 'True', '\"abc',\n"
        "  '\"a\\1b\"', '\"\\t\"', '[1] x', 'NaN', 'Infinity', '-Infinity', '0x10', \"'a'\",\n"
        "  '\"\\\\x\"', '\"\\\\u12\"', '\"\\\\ud800\"', '\"\\\\udc00\"', "
        "'\"\\\\ud800\\\\u0041\"',\n"
        "  '1e400', '-1e400', '[', ']', '{}}', '\\239\\187\\191{}', '\"\\\\', '[1,,2]',\n"
        "  string.rep('1', 500) }\n"
        "for i, s in ipairs(bad) do\n"
        "  local v, e = pgw.json.decode(s)\n"
        "  if v ~= nil or type(e) ~= 'string' or e:sub(1, 14) ~= 'invalid JSON: ' then\n"
        "    error(string.format('case %d %q: %s %s', i, s, tostring(v), tostring(e)))\n"
        "  end\n"
        "end\n"
        "eq(select(2, pgw.json.decode('[1,]')), 'invalid JSON: unexpected character at byte 4')\n"
        "eq(select(2, pgw.json.decode('[1] x')),\n"
        "  'invalid JSON: unexpected data after the value at byte 5')\n"
        "eq(select(2, pgw.json.decode('')), 'invalid JSON: unexpected end of input at byte 1')\n"
        "eq(select(2, pgw.json.decode('1e400')), 'invalid JSON: number out of range at byte 1')\n");
    LUA(lua,
        "raises('pgw.json.decode: bad argument #1 (string expected, got nil)',\n"
        "  pgw.json.decode, nil)\n"
        "raises('pgw.json.decode: bad argument #1 (string expected, got number)',\n"
        "  pgw.json.decode, 1)\n"
        "raises('pgw.json.decode: bad argument #1 (string expected, got no value)',\n"
        "  pgw.json.decode)\n"
        "eq(fails('too large', pgw.json.decode, string.rep(' ', 16 * 2^20 + 1)), 'too large')\n"
        "collectgarbage()\n"
        "eq(pgw.json.decode(string.rep(' ', 16 * 2^20 - 1) .. '7'), 7, '16 MiB is allowed')\n"
        "collectgarbage()\n");
    /* A large document of many values (JSON_GUARD_EVERY polls, luaL_Buffer spilling). */
    LUA(lua, "local parts = {}\n"
             "for i = 1, 20000 do parts[i] = '{\"k' .. i .. '\":\"v\\\\n' .. i .. '\"}' end\n"
             "local t = pgw.json.decode('[' .. table.concat(parts, ',') .. ']')\n"
             "eq(#t, 20000); eq(t[20000].k20000, 'v\\n20000')\n"
             "local long = string.rep('\\\\u00e9', 10000)\n"
             "eq(#pgw.json.decode('\"' .. long .. '\"'), 20000)\n");
}

static void test_json_encode(void)
{
    LUA(lua,
        "local J = pgw.json\n"
        "eq(J.encode({}), '{}'); eq(J.encode({1, 2, 3}), '[1,2,3]')\n"
        "eq(J.encode({a = 'x'}), '{\"a\":\"x\"}'); eq(J.encode('a/\"b\\n'), "
        "'\"a\\\\/\\\\\"b\\\\n\"')\n"
        "eq(J.encode(J.null), 'null'); eq(J.encode({1, J.null, 3}), '[1,null,3]')\n"
        "eq(J.encode(true), 'true'); eq(J.encode(0.5), '0.5'); eq(J.encode(nil), 'null')\n"
        "eq(J.encode({[1] = 1, [3] = 3}), '[1,null,3]', 'a hole is not excessively sparse')\n"
        "eq(J.encode(setmetatable({}, {__index = {a = 1}})), '{}', 'views encode empty')\n"
        "local v = {a = {1, 2, {b = 'c', d = {true, false}}}, e = 'é', n = -12.5, z = J.null}\n"
        "local back = J.decode(J.encode(v))\n"
        "eq(back.a[3].b, 'c'); eq(back.a[3].d[2], false); eq(back.e, 'é')\n"
        "eq(back.n, -12.5); eq(back.z, J.null)\n"
        "eq(J.encode(J.decode(J.encode(v))), J.encode(back), 'stable round trip')\n");
    LUA(lua,
        "local J = pgw.json\n"
        "local e = fails('Cannot serialise function', J.encode, {f = print})\n"
        "local cyc = {}; cyc.self = cyc\n"
        "fails('Cannot serialise, excessive nesting', J.encode, cyc)\n"
        "local deep = {}; local t = deep\n"
        "for i = 1, 63 do t[1] = {}; t = t[1] end\n"
        "eq(J.encode(deep), string.rep('[', 63) .. '{}' .. string.rep(']', 63), 'depth 64')\n"
        "t[1] = {}\n"
        "fails('Cannot serialise, excessive nesting (65)', J.encode, deep)\n"
        "fails('Cannot serialise table: excessively sparse array', J.encode, {[1]=1, [100]=2})\n"
        "fails('Cannot serialise number: must not be NaN or Inf', J.encode, 0/0)\n"
        "fails('Cannot serialise number: must not be NaN or Inf', J.encode, {math.huge})\n"
        "fails('Cannot serialise boolean: table key must be', J.encode, {[true] = 1})\n"
        "eq(J.encode({1}), '[1]', 'usable after errors')\n");
    LUA(lua, "local J = pgw.json\n"
             "local big = string.rep('a', 2 * 2^20)\n"
             "eq(#J.encode(big), 2 * 2^20 + 2, 'large output (buffer released after)')\n"
             "eq(J.encode('x'), '\"x\"')\n"
             "big = string.rep('/', 8 * 2^20 + 1)\n"
             "eq(fails('too large', J.encode, big), 'too large', 'output over 16 MiB')\n"
             "big = nil; collectgarbage()\n");
}

/* Under a small cap, decode and encode fail with "not enough memory", leak nothing (LeakSanitizer
 * checks at exit) and leave the state usable. */
static void test_json_memory_cap(void)
{
    struct pgw_lua *small = new_state(SMALL_CAP);
    CHECK(small != NULL);
    if (small == NULL)
        return;
    LUA(small, "local J = pgw.json\n"
               "local doc = '[' .. string.rep('[],', 200000) .. '[]]'\n"
               "for i = 1, 3 do\n"
               "  local ok, e = pcall(J.decode, doc)\n"
               "  eq(ok, false); eq(e, 'not enough memory')\n"
               "  collectgarbage()\n"
               "end\n"
               "doc = nil; collectgarbage()\n"
               "eq(J.decode('[1]')[1], 1)\n"
               "local s = string.rep('\\1', 400 * 1024)\n"
               "for i = 1, 3 do\n"
               "  local ok, e = pcall(J.encode, {s, s})\n"
               "  eq(ok, false); eq(e, 'not enough memory')\n"
               "  collectgarbage()\n"
               "end\n"
               "s = nil; collectgarbage()\n"
               "eq(J.encode({1}), '[1]')\n");
    pgw_lua_free(small);
}

/* ---- pgw.time ---- */

static void test_time(void)
{
    LUA(lua,
        "local T = pgw.time\n"
        "local now = T.now()\n"
        "assert(math.abs(now - os.time()) <= 2, 'now is the wall clock')\n"
        "assert(math.abs(now * 1000 - math.floor(now * 1000 + 0.5)) < 1e-3, 'ms precision')\n"
        "local a = T.monotonic(); local b = T.monotonic()\n"
        "assert(a > 0 and b >= a, 'monotonic')\n"
        "eq(T.http_date(784111777), 'Sun, 06 Nov 1994 08:49:37 GMT')\n"
        "eq(T.http_date(784111777.99), 'Sun, 06 Nov 1994 08:49:37 GMT', 'floored')\n"
        "eq(T.http_date(0), 'Thu, 01 Jan 1970 00:00:00 GMT')\n"
        "eq(T.http_date(951782400), 'Tue, 29 Feb 2000 00:00:00 GMT')\n"
        "eq(T.http_date(-1), 'Wed, 31 Dec 1969 23:59:59 GMT')\n"
        "eq(T.http_date(253402300799), 'Fri, 31 Dec 9999 23:59:59 GMT')\n"
        "raises('pgw.time.http_date: bad argument #1 (number expected, got string)',\n"
        "  T.http_date, '0')\n"
        "raises('pgw.time.http_date: bad argument #1 (time out of range)', T.http_date, 0/0)\n"
        "raises('pgw.time.http_date: bad argument #1 (time out of range)', T.http_date, 1e300)\n"
        "raises('pgw.time.http_date: bad argument #1 (time out of range)', T.http_date,\n"
        "  253402300800)\n");
    LUA(lua,
        "local T = pgw.time\n"
        "eq(T.parse_http_date('Sun, 06 Nov 1994 08:49:37 GMT'), 784111777, 'IMF-fixdate')\n"
        "eq(T.parse_http_date('Sunday, 06-Nov-94 08:49:37 GMT'), 784111777, 'RFC 850')\n"
        "eq(T.parse_http_date('Sun Nov  6 08:49:37 1994'), 784111777, 'asctime')\n"
        "eq(T.parse_http_date('Sun Nov 06 08:49:37 1994'), 784111777, 'asctime 2DIGIT')\n"
        "eq(T.parse_http_date('Sat, 31 Dec 2016 23:59:60 GMT'), 1483228800, 'leap second')\n"
        "eq(T.parse_http_date('Tue, 29 Feb 2000 00:00:00 GMT'), 951782400)\n"
        "eq(T.parse_http_date('Mon, 01 Jan 1900 00:00:00 GMT'), -2208988800)\n"
        "for _, t in ipairs({0, 1, 59, 86399, 951782400, 1700000000, 4102444800,\n"
        "                    253402300799, -2208988800}) do\n"
        "  eq(T.parse_http_date(T.http_date(t)), t, 'round trip ' .. t)\n"
        "end\n"
        "for i = 1, 200 do\n"
        "  local t = math.random(0, 4102444800)\n"
        "  eq(T.parse_http_date(T.http_date(t)), t, 'round trip ' .. t)\n"
        "end\n"
        /* RFC 850 two-digit years: within 50 years ahead, else the previous century. */
        "local year = os.date('!*t').year\n"
        "local function rfc850(y) return string.format('Monday, 01-Mar-%02d 00:00:00 GMT', y % "
        "100) end\n"
        "local function imf(y) return string.format('Mon, 01 Mar %04d 00:00:00 GMT', y) end\n"
        "for _, d in ipairs({-49, -1, 0, 1, 10, 49, 50}) do\n"
        "  eq(T.parse_http_date(rfc850(year + d)), T.parse_http_date(imf(year + d)), 'yy ' .. d)\n"
        "end\n"
        "eq(T.parse_http_date(rfc850(year + 51)), T.parse_http_date(imf(year - 49)), 'yy +51')\n"
        "eq(T.parse_http_date(rfc850(year - 60)), T.parse_http_date(imf(year + 40)), 'yy -60')\n");
    LUA(lua,
        "local bad = { '', 'x', 'Sun, 06 Nov 1994 08:49:37 UTC', 'Sun, 6 Nov 1994 08:49:37 GMT',\n"
        "  'sun, 06 Nov 1994 08:49:37 GMT', 'Sun, 06 nov 1994 08:49:37 GMT',\n"
        "  'Sun, 06 Nov 1994 08:49:37 gmt', 'Sun, 31 Feb 1994 08:49:37 GMT',\n"
        "  'Thu, 29 Feb 1900 00:00:00 GMT', 'Sun, 00 Nov 1994 08:49:37 GMT',\n"
        "  'Sun, 06 Nov 1994 24:00:00 GMT', 'Sun, 06 Nov 1994 08:60:00 GMT',\n"
        "  'Sun, 06 Nov 1994 08:49:61 GMT', 'Sun, 06 Nov 1994 8:49:37 GMT',\n"
        "  'Sun, 06 Nov 1994 08:49:37 GMT ', ' Sun, 06 Nov 1994 08:49:37 GMT',\n"
        "  'Sun, 06 Nov 94 08:49:37 GMT', 'Sun, 06-Nov-1994 08:49:37 GMT',\n"
        "  'Sunday, 06-Nov-1994 08:49:37 GMT', 'Sund, 06-Nov-94 08:49:37 GMT',\n"
        "  'Sun, 06-Nov-94 08:49:37 GMT', 'Sunday, 06 Nov 94 08:49:37 GMT',\n"
        "  'Sunday, 06-Nov-94 08:49:37', 'Sun Nov 6 08:49:37 1994', 'Sun Nov  6 08:49:37 94',\n"
        "  'Sun Nov  6 08:49:37 1994 GMT', 'Sun Nov 31 08:49:37 1994', 'Sun Nov  0 08:49:37 "
        "1994',\n"
        "  'Sun, 06 Nov 1994 08:49:37 GMT\\0', 'Sun, 06 Nov +994 08:49:37 GMT',\n"
        "  'Sun, 06 Nov 1994 08:4a:37 GMT', 'Xyz, 06 Nov 1994 08:49:37 GMT',\n"
        "  'Sun, 06 Nov 1994 08-49-37 GMT' }\n"
        "for i, s in ipairs(bad) do\n"
        "  local v, e = pgw.time.parse_http_date(s)\n"
        "  if v ~= nil or e ~= 'invalid date' then\n"
        "    error(string.format('case %d %q: %s %s', i, s, tostring(v), tostring(e)))\n"
        "  end\n"
        "end\n"
        "raises('pgw.time.parse_http_date: bad argument #1 (string expected, got number)',\n"
        "  pgw.time.parse_http_date, 784111777)\n");

    /* The RFC 850 window in other centuries' halves than today's. */
    CHECK_INT(rfc850_year(75, 2025), 2075);
    CHECK_INT(rfc850_year(76, 2025), 1976);
    CHECK_INT(rfc850_year(25, 2025), 2025);
    CHECK_INT(rfc850_year(10, 2060), 2110);
    CHECK_INT(rfc850_year(11, 2060), 2011);
    CHECK_INT(rfc850_year(99, 2060), 2099);
    CHECK_INT(rfc850_year(0, 2099), 2100);
    CHECK_INT(rfc850_year(49, 2099), 2149);
    CHECK_INT(rfc850_year(50, 2099), 2050);

    /* With an event base, now() reads libevent's cached time. */
    fake_base = event_base_new();
    CHECK(fake_base != NULL);
    LUA(lua, "assert(math.abs(pgw.time.now() - os.time()) <= 2)");
    event_base_free(fake_base);
    fake_base = NULL;
}

/* ---- pgw.base64, pgw.crypto, pgw.const_eq ---- */

static void test_base64(void)
{
    LUA(lua,
        "local B = pgw.base64\n"
        "local v = { {'', ''}, {'f', 'Zg=='}, {'fo', 'Zm8='}, {'foo', 'Zm9v'},\n"
        "  {'foob', 'Zm9vYg=='}, {'fooba', 'Zm9vYmE='}, {'foobar', 'Zm9vYmFy'} }\n"
        "for _, c in ipairs(v) do\n"
        "  eq(B.encode(c[1]), c[2], 'encode ' .. c[1]); eq(B.decode(c[2]), c[1], 'decode ' .. "
        "c[2])\n"
        "  local u = c[2]:gsub('=', '')\n"
        "  eq(B.encode(c[1], true), u, 'url ' .. c[1]); eq(B.decode(u, true), c[1], 'url ' .. u)\n"
        "  eq(B.decode(c[2], true), c[1], 'url mode accepts padding')\n"
        "end\n"
        "eq(B.encode('\\251\\255\\191'), '+/+/'); eq(B.encode('\\251\\255\\191', true), '-_-_')\n"
        "eq(B.encode('\\251\\255'), '+/8='); eq(B.encode('\\251\\255', 1), '-_8')\n"
        "eq(B.decode('-_8', true), '\\251\\255'); eq(B.decode('+/8='), '\\251\\255')\n"
        "local all = {} for i = 0, 255 do all[#all + 1] = string.char(i) end\n"
        "local s = string.rep(table.concat(all), 400) .. 'xy'\n"
        "eq(B.decode(B.encode(s)), s, 'large'); eq(B.decode(B.encode(s, true), true), s, 'large "
        "url')\n"
        "eq(#B.encode(s), math.floor((#s + 2) / 3) * 4)\n");
    LUA(lua,
        "local B = pgw.base64\n"
        "local bad = { 'Zg', 'Zg=', 'Z===', '====', 'A', 'AB=C', 'Zm9v\\n', 'Zm 9v', ' Zm9v',\n"
        "  'Zh==', 'Zm9=', 'Zg==Zg==', 'Zm9v=', '-_8=', 'Zm9v\\0', 'Zm8==', '*m9v' }\n"
        "for _, s in ipairs(bad) do fails('invalid base64', B.decode, s) end\n"
        "for _, s in ipairs({ 'A', 'Zg=', '+/8', 'Zh', 'Zm9', 'Zg=a', 'Zm9v====' }) do\n"
        "  fails('invalid base64', B.decode, s, true)\n"
        "end\n"
        "raises('pgw.base64.decode: bad argument #1 (string expected, got nil)', B.decode, nil)\n"
        "raises('pgw.base64.encode: bad argument #1 (string expected, got table)', B.encode, "
        "{})\n");
}

static void test_crypto(void)
{
    LUA(lua,
        "local C = pgw.crypto\n"
        "eq(C.hex(C.sha256('abc')),\n"
        "  'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')\n"
        "eq(C.hex(C.sha256('')),\n"
        "  'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855')\n"
        "eq(#C.sha256('x'), 32)\n"
        /* RFC 4231 test cases 1 and 2, and an empty key. */
        "eq(C.hex(C.hmac_sha256(string.rep('\\11', 20), 'Hi There')),\n"
        "  'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7')\n"
        "eq(C.hex(C.hmac_sha256('Jefe', 'what do ya want for nothing?')),\n"
        "  '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843')\n"
        "eq(C.hex(C.hmac_sha256('', '')),\n"
        "  'b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad')\n"
        "eq(C.hex('\\0\\255ab'), '00ff6162'); eq(C.hex(''), '')\n"
        "eq(C.hex(string.rep('\\171', 1000)), string.rep('ab', 1000))\n"
        "raises('pgw.crypto.sha256: bad argument #1 (string expected, got number)', C.sha256, 1)\n"
        "raises('pgw.crypto.hmac_sha256: bad argument #2 (string expected, got no value)',\n"
        "  C.hmac_sha256, 'k')\n"
        "raises('pgw.crypto.hex: bad argument #1 (string expected, got boolean)', C.hex, true)\n");
    LUA(lua,
        "local eqc = pgw.const_eq\n"
        "eq(eqc('abc', 'abc'), true); eq(eqc('abc', 'abd'), false); eq(eqc('abc', 'ab'), false)\n"
        "eq(eqc('', ''), true); eq(eqc('', 'a'), false); eq(eqc('a\\0b', 'a\\0c'), false)\n"
        "eq(eqc('a\\0b', 'a\\0b'), true)\n"
        "raises('pgw.const_eq: bad argument #2 (string expected, got nil)', eqc, 'a', nil)\n"
        "raises('pgw.const_eq: bad argument #1 (string expected, got number)', eqc, 1, '1')\n");
}

/* ---- pgw.cache ---- */

/* The list, the chains and the counters agree. */
static void check_cache_invariants(void)
{
    size_t n = 0, bytes = 0, chained = 0;
    for (struct cache_entry *e = cache.head; e != NULL; e = e->next) {
        CHECK(e->next != NULL || e == cache.tail);
        CHECK(e->next == NULL || e->next->prev == e);
        n++;
        bytes += entry_size(e);
    }
    for (size_t i = 0; i < cache.nbuckets; i++)
        for (struct cache_entry *e = cache.buckets[i]; e != NULL; e = e->hnext) {
            CHECK((e->hash & (cache.nbuckets - 1)) == i);
            chained++;
        }
    CHECK_INT(n, cache.count);
    CHECK_INT(chained, cache.count);
    CHECK_INT(bytes, cache.bytes);
    CHECK(cache.count <= cache.max_entries && cache.bytes <= cache.max_bytes);
}

static void cache_fresh(size_t max_entries, size_t max_bytes)
{
    pgw_lua_cache_reset();
    pgw_lua_cache_configure(max_entries, max_bytes);
    cache_clock_skew_ns = 0;
    fake_run.stage = PGW_STAGE_ACCESS;
    fake_run.policy = "alpha";
}

static void test_cache_basic(void)
{
    cache_fresh(CACHE_DEFAULT_ENTRIES, CACHE_DEFAULT_BYTES);
    LUA(lua, "local C = pgw.cache\n"
             "eq(C.get('k'), nil)\n"
             "eq(C.set('k', 'v', 10), true); eq(C.get('k'), 'v')\n"
             "eq(C.set('k', 'w'), true); eq(C.get('k'), 'w', 'replaced')\n"
             "C.set('n', 1.5); eq(C.get('n'), 1.5)\n"
             "C.set('i', -7); eq(C.get('i'), -7)\n"
             "C.set('f', false); eq(C.get('f'), false, 'false is a value')\n"
             "C.set('t', true); eq(C.get('t'), true)\n"
             "C.set('e', ''); eq(C.get('e'), '')\n"
             "C.set('a\\0b', 'x\\0y'); eq(C.get('a\\0b'), 'x\\0y'); eq(C.get('a'), nil)\n"
             "eq(select('#', C.delete('k')), 0); eq(C.get('k'), nil); C.delete('never')\n"
             "eq(C.get(''), nil); C.set('', 1); eq(C.get(''), 1)\n"
             "local big = string.rep('z', 100000); C.set('big', big); eq(C.get('big'), big)\n"
             "local kbig = string.rep('K', 1000); C.set(kbig, 'long key'); eq(C.get(kbig), 'long "
             "key')\n");
    check_cache_invariants();
    LUA(lua,
        "local C = pgw.cache\n"
        "raises('pgw.cache.set: bad argument #2 (string, number or boolean expected, got table)',\n"
        "  C.set, 'k', {})\n"
        "raises('pgw.cache.set: bad argument #2 (string, number or boolean expected, got nil)',\n"
        "  C.set, 'k', nil)\n"
        "raises('pgw.cache.set: bad argument #2 (string, number or boolean expected, got '\n"
        "  .. 'function)', C.set, 'k', print)\n"
        "raises('pgw.cache.set: bad argument #1 (string expected, got number)', C.set, 1, 'v')\n"
        "raises('pgw.cache.set: bad argument #3 (positive number or nil expected, got number)',\n"
        "  C.set, 'k', 'v', 0)\n"
        "raises('positive number or nil expected, got number', C.set, 'k', 'v', -1)\n"
        "raises('positive number or nil expected, got number', C.set, 'k', 'v', 0/0)\n"
        "raises('positive number or nil expected, got string', C.set, 'k', 'v', '10')\n"
        "raises('pgw.cache.get: bad argument #1 (string expected, got nil)', C.get, nil)\n"
        "raises('pgw.cache.get: bad argument #1 (string expected, got no value)', C.get)\n"
        "raises('pgw.cache.delete: bad argument #1 (string expected, got table)', C.delete, {})\n"
        "eq(C.get('k'), nil, 'failed sets stored nothing')\n");
    fake_run.stage = PGW_STAGE_LOAD;
    LUA(lua, "raises('pgw.cache.get: not allowed in stage load', pgw.cache.get, 'k')\n"
             "raises('pgw.cache.set: not allowed in stage load', pgw.cache.set, 'k', 1)\n"
             "raises('pgw.cache.delete: not allowed in stage load', pgw.cache.delete, 'k')\n"
             "eq(pgw.json.encode({1}), '[1]', 'the util functions run at load')\n"
             "eq(pgw.crypto.hex('a'), '61')\n");
    fake_run.stage = PGW_STAGE_TIMER;
    LUA(lua, "pgw.cache.set('timer', 1); eq(pgw.cache.get('timer'), 1)");
    fake_run.stage = PGW_STAGE_LOG;
    LUA(lua, "eq(pgw.cache.get('timer'), 1)");
    fake_run.stage = PGW_STAGE_INIT_WORKER;
    LUA(lua, "pgw.cache.delete('timer'); eq(pgw.cache.get('timer'), nil)");
    check_cache_invariants();
}

static void test_cache_ttl(void)
{
    cache_fresh(CACHE_DEFAULT_ENTRIES, CACHE_DEFAULT_BYTES);
    LUA(lua, "local C = pgw.cache\n"
             "C.set('short', 's', 1); C.set('long', 'l', 100); C.set('forever', 'f')\n"
             "C.set('huge', 'h', math.huge)\n"
             "eq(C.get('short'), 's')\n");
    cache_clock_skew_ns = 2000000000ull; /* +2 s */
    LUA(lua,
        "local C = pgw.cache\n"
        "eq(C.get('short'), nil, 'expired'); eq(C.get('long'), 'l'); eq(C.get('forever'), 'f')\n");
    cache_clock_skew_ns = 1000000ull * 1000000000ull; /* +11 days */
    LUA(lua, "local C = pgw.cache\n"
             "eq(C.get('long'), nil); eq(C.get('forever'), 'f'); eq(C.get('huge'), 'h')\n"
             "C.set('short', 'again', 0.5); eq(C.get('short'), 'again', 'ttl from now')\n");
    CHECK_INT(cache.count, 3);
    check_cache_invariants();

    /* Expired entries at the LRU end go at the next set, even unread. */
    cache_fresh(CACHE_DEFAULT_ENTRIES, CACHE_DEFAULT_BYTES);
    LUA(lua, "for i = 1, 3 do pgw.cache.set('e' .. i, i, 1) end");
    cache_clock_skew_ns = 5000000000ull;
    LUA(lua, "pgw.cache.set('fresh', 1)");
    CHECK_INT(cache.count, 1);
    check_cache_invariants();

    /* The real clock: a 50 ms ttl. */
    cache_fresh(CACHE_DEFAULT_ENTRIES, CACHE_DEFAULT_BYTES);
    LUA(lua, "pgw.cache.set('k', 'v', 0.05)");
    usleep(120 * 1000);
    LUA(lua, "eq(pgw.cache.get('k'), nil, 'expired after 120 ms')");
    check_cache_invariants();
}

static void test_cache_namespaces(void)
{
    cache_fresh(CACHE_DEFAULT_ENTRIES, CACHE_DEFAULT_BYTES);
    LUA(lua, "pgw.cache.set('k', 'alpha value')");
    fake_run.policy = "beta";
    LUA(lua, "eq(pgw.cache.get('k'), nil, 'other policy'); pgw.cache.set('k', 'beta value')");
    fake_run.policy = "alph";
    LUA(lua,
        "eq(pgw.cache.get('ak'), nil); eq(pgw.cache.get('a\\0k'), nil, 'no prefix confusion')");
    fake_run.policy = "alpha";
    LUA(lua, "eq(pgw.cache.get('k'), 'alpha value'); pgw.cache.delete('k')");
    fake_run.policy = "beta";
    LUA(lua, "eq(pgw.cache.get('k'), 'beta value', 'delete is per policy')");
    CHECK_INT(cache.count, 1);
    check_cache_invariants();
}

static void test_cache_lru(void)
{
    /* By entries: reading k1 makes k2 the least recently used. */
    cache_fresh(3, 1u << 20);
    LUA(lua, "local C = pgw.cache\n"
             "C.set('k1', 1); C.set('k2', 2); C.set('k3', 3)\n"
             "eq(C.get('k1'), 1)\n"
             "C.set('k4', 4)\n"
             "eq(C.get('k2'), nil, 'evicted'); eq(C.get('k1'), 1); eq(C.get('k3'), 3); "
             "eq(C.get('k4'), 4)\n"
             "C.set('k3', 33)\n"
             "C.set('k5', 5)\n"
             "eq(C.get('k1'), nil, 'k1 was the oldest use'); eq(C.get('k3'), 33)\n");
    CHECK_INT(cache.count, 3);
    check_cache_invariants();

    /* By bytes: ten 1000-byte values fit, the eleventh evicts the first. */
    size_t one = CACHE_ENTRY_OVERHEAD + strlen("alpha") + 1 + 3 + 1000;
    cache_fresh(1000, one * 10);
    LUA(lua, "local C = pgw.cache\n"
             "for i = 10, 19 do C.set('b' .. i, string.rep('x', 1000)) end\n"
             "for i = 10, 19 do assert(C.get('b' .. i), 'all ten fit') end\n"
             "C.set('b20', string.rep('y', 1000))\n"
             "eq(C.get('b10'), nil, 'oldest evicted by bytes'); assert(C.get('b11'))\n"
             "eq(C.set('b21', 1), true)\n");
    CHECK(cache.bytes <= one * 10);
    check_cache_invariants();

    /* One entry larger than max_bytes / 8 is refused, and the previous value stays. */
    cache_fresh(1000, 8000);
    LUA(lua, "local C = pgw.cache\n"
             "C.set('big', 'small')\n"
             "local v, e = C.set('big', string.rep('x', 1000))\n"
             "eq(v, nil); eq(e, 'too large'); eq(C.get('big'), 'small')\n"
             "local v2, e2 = C.set(string.rep('k', 1000), 1)\n"
             "eq(e2, 'too large', 'the key counts')\n");
    check_cache_invariants();

    /* Growth of the table, then shrinking the limits evicts the oldest at once. */
    cache_fresh(10000, 64u << 20);
    LUA(lua, "local C = pgw.cache\n"
             "for i = 1, 5000 do C.set('g' .. i, i) end\n"
             "for i = 1, 5000 do eq(C.get('g' .. i), i) end\n");
    CHECK_INT(cache.count, 5000);
    CHECK(cache.nbuckets >= 4096);
    check_cache_invariants();
    pgw_lua_cache_configure(100, 64u << 20);
    CHECK_INT(cache.count, 100);
    LUA(lua, "eq(pgw.cache.get('g4900'), nil); eq(pgw.cache.get('g4901'), 4901)\n"
             "eq(pgw.cache.get('g5000'), 5000)\n");
    check_cache_invariants();
    pgw_lua_cache_reset();
    CHECK_INT(cache.count, 0);
    CHECK_INT(cache.bytes, 0);
}

int main(void)
{
    lua = new_state(CAP);
    if (lua == NULL)
        return 1;
    lua_State *L = pgw_lua_state(lua);
    lua_getglobal(L, "cjson");
    CHECK(lua_isnil(L, -1)); /* the private instance is not a global */
    lua_settop(L, 0);

    RUN(test_json_decode);
    RUN(test_json_encode);
    RUN(test_json_memory_cap);
    RUN(test_time);
    RUN(test_base64);
    RUN(test_crypto);
    RUN(test_cache_basic);
    RUN(test_cache_ttl);
    RUN(test_cache_namespaces);
    RUN(test_cache_lru);

    pgw_lua_cache_reset();
    pgw_lua_free(lua);
    return TEST_REPORT("lua_util");
}
