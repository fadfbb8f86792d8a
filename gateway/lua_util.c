/* lua_util.c: the pure helpers of the SDK (docs/sdk.md): pgw.json, pgw.time, pgw.base64,
 * pgw.crypto and pgw.const_eq, registered into pgw.core by pgw_lua_open_util(). None yields,
 * none needs a request; all run in every stage, including load.
 *
 * Memory: every result is built in memory Lua owns (a scratch userdata or a luaL_Buffer), so
 * the state's cap applies and an error raised half-way leaks nothing. The one exception is
 * pgw.json.encode: lua-cjson builds its output in its own malloc'ed buffer, which belongs to the
 * private cjson instance (encode_keep_buffer on, so an error inside cjson leaves it owned, and
 * lua_close() frees it through the instance's __gc); a buffer grown past JSON_KEEP_MAX is handed
 * back to malloc after the call.
 *
 * JSON decoding is done here, not by lua-cjson: cjson's decode keeps a malloc'ed scratch buffer
 * the size of its input on the C stack while it allocates Lua values, so hitting the memory cap
 * mid-decode (a large body of small arrays) would leak that buffer on every such request.
 * This decoder is strict RFC 8259 with cjson's results (null is the lightuserdata NULL, numbers
 * are doubles, duplicate keys: the last wins) and allocates nothing outside Lua.
 */
#include "lua_bridge.h"

#include <lua5.1/lua-cjson.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

#define JSON_MAX_BYTES (16u << 20) /* input of decode, output of encode */
#define JSON_MAX_DEPTH 64
#define JSON_KEEP_MAX (1u << 20) /* cjson's encode buffer is released when it grew past this */
#define JSON_NUMBER_MAX 400      /* longest number text accepted (digits, sign, exponent) */
#define JSON_GUARD_EVERY 4096    /* values decoded between two CPU-guard polls */

#define SCRATCH_STACK 512 /* results up to this size are built on the C stack */

/* ---- Argument checks: errors name the pgw function ---- */

static int arg_error(lua_State *L, const char *fname, int arg, const char *expected)
{
    return luaL_error(L, "%s: bad argument #%d (%s expected, got %s)", fname, arg, expected,
                      luaL_typename(L, arg));
}

/* A string argument; no conversion from numbers (a number here is a bug in the policy). */
static const char *check_bytes(lua_State *L, int arg, const char *fname, size_t *len)
{
    if (lua_type(L, arg) != LUA_TSTRING)
        arg_error(L, fname, arg, "string");
    return lua_tolstring(L, arg, len);
}

static double check_number(lua_State *L, int arg, const char *fname)
{
    if (lua_type(L, arg) != LUA_TNUMBER)
        arg_error(L, fname, arg, "number");
    return lua_tonumber(L, arg);
}

/* <len> bytes to build a result in: <stackbuf> (SCRATCH_STACK bytes) when it is big enough,
 * else a userdata pushed on the stack (Lua owns it: an error later leaks nothing; may raise
 * "not enough memory" itself). */
static unsigned char *scratch(lua_State *L, unsigned char *stackbuf, size_t len)
{
    if (len <= SCRATCH_STACK)
        return stackbuf;
    return lua_newuserdata(L, len);
}

static int push_fail(lua_State *L, const char *reason)
{
    lua_pushnil(L);
    lua_pushstring(L, reason);
    return 2;
}

/* ---- pgw.json.decode ---- */

struct jdec {
    lua_State *L;
    const char *start, *p, *end;
    int depth;
    unsigned count;     /* values decoded, for the CPU-guard poll */
    const char *reason; /* set on failure; d->p is where it happened */
};

static int jdec_value(struct jdec *d);

static int jdec_fail(struct jdec *d, const char *reason)
{
    d->reason = reason;
    return -1;
}

static void jdec_ws(struct jdec *d)
{
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r'))
        d->p++;
}

static int is_digit(int c) { return c >= '0' && c <= '9'; }

static int hex_value(int c)
{
    if (is_digit(c))
        return c - '0';
    c |= 0x20;
    return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

static int jdec_literal(struct jdec *d, const char *word, size_t n)
{
    if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0)
        return jdec_fail(d, "invalid literal");
    d->p += n;
    return 0;
}

static locale_t c_locale;

/* RFC 8259 number grammar; strtod_l() in the C locale converts what the grammar accepted (on its
 * own, strtod would also take hex, "inf" and the locale's decimal comma). */
static int jdec_number(struct jdec *d)
{
    const char *q = d->p;
    if (q < d->end && *q == '-')
        q++;
    if (q == d->end || !is_digit(*q))
        return jdec_fail(d, "invalid number");
    if (*q++ != '0')
        while (q < d->end && is_digit(*q))
            q++;
    if (q < d->end && *q == '.') {
        if (++q == d->end || !is_digit(*q))
            return jdec_fail(d, "invalid number");
        while (q < d->end && is_digit(*q))
            q++;
    }
    if (q < d->end && (*q == 'e' || *q == 'E')) {
        if (++q < d->end && (*q == '+' || *q == '-'))
            q++;
        if (q == d->end || !is_digit(*q))
            return jdec_fail(d, "invalid number");
        while (q < d->end && is_digit(*q))
            q++;
    }
    char buf[JSON_NUMBER_MAX + 1];
    size_t n = (size_t)(q - d->p);
    if (n > JSON_NUMBER_MAX)
        return jdec_fail(d, "number too long");
    memcpy(buf, d->p, n);
    buf[n] = '\0';
    double v = strtod_l(buf, NULL, c_locale);
    if (!isfinite(v))
        return jdec_fail(d, "number out of range");
    lua_pushnumber(d->L, v);
    d->p = q;
    return 0;
}

static void utf8_add(luaL_Buffer *b, unsigned cp)
{
    if (cp < 0x80) {
        luaL_addchar(b, (char)cp);
    } else if (cp < 0x800) {
        luaL_addchar(b, (char)(0xC0 | cp >> 6));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        luaL_addchar(b, (char)(0xE0 | cp >> 12));
        luaL_addchar(b, (char)(0x80 | (cp >> 6 & 0x3F)));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
    } else {
        luaL_addchar(b, (char)(0xF0 | cp >> 18));
        luaL_addchar(b, (char)(0x80 | (cp >> 12 & 0x3F)));
        luaL_addchar(b, (char)(0x80 | (cp >> 6 & 0x3F)));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
    }
}

/* Four hex digits after "\u" at <p>; -1 if malformed. */
static long hex4(const char *p, const char *end)
{
    if (end - p < 6 || p[0] != '\\' || p[1] != 'u')
        return -1;
    long v = 0;
    for (int i = 2; i < 6; i++) {
        int h = hex_value((unsigned char)p[i]);
        if (h < 0)
            return -1;
        v = v << 4 | h;
    }
    return v;
}

/* d->p at the backslash of "\uXXXX"; a surrogate must come as a high-low pair. */
static int jdec_unicode(struct jdec *d, luaL_Buffer *b)
{
    long cp = hex4(d->p, d->end);
    if (cp < 0)
        return jdec_fail(d, "invalid \\u escape");
    if (cp >= 0xDC00 && cp <= 0xDFFF)
        return jdec_fail(d, "invalid surrogate pair");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        long lo = hex4(d->p + 6, d->end);
        if (lo < 0xDC00 || lo > 0xDFFF)
            return jdec_fail(d, "invalid surrogate pair");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        d->p += 6;
    }
    d->p += 6;
    utf8_add(b, (unsigned)cp);
    return 0;
}

static int jdec_escape(struct jdec *d, luaL_Buffer *b)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    if (d->end - d->p < 2)
        return jdec_fail(d, "unterminated string");
    if (d->p[1] == 'u')
        return jdec_unicode(d, b);
    const char *c = d->p[1] != '\0' ? strchr(from, d->p[1]) : NULL;
    if (c == NULL)
        return jdec_fail(d, "invalid escape");
    luaL_addchar(b, to[c - from]);
    d->p += 2;
    return 0;
}

/* A string with escapes, d->p at the first one; <run> is the escape-free text before it. */
static int jdec_string_escaped(struct jdec *d, const char *run)
{
    luaL_Buffer b;
    luaL_buffinit(d->L, &b);
    luaL_addlstring(&b, run, (size_t)(d->p - run));
    for (;;) {
        if (d->p == d->end)
            return jdec_fail(d, "unterminated string");
        unsigned char c = (unsigned char)*d->p;
        if (c == '"')
            break;
        if (c < 0x20)
            return jdec_fail(d, "control character in string");
        if (c == '\\') {
            if (jdec_escape(d, &b) != 0)
                return -1;
            continue;
        }
        luaL_addchar(&b, (char)c);
        d->p++;
    }
    d->p++;
    luaL_pushresult(&b);
    return 0;
}

/* Bytes >= 0x80 are taken as they are (no UTF-8 validation, like cjson). */
static int jdec_string(struct jdec *d)
{
    const char *run = ++d->p;
    while (d->p < d->end && *d->p != '"' && *d->p != '\\' && (unsigned char)*d->p >= 0x20)
        d->p++;
    if (d->p < d->end && *d->p == '"') {
        lua_pushlstring(d->L, run, (size_t)(d->p - run));
        d->p++;
        return 0;
    }
    return jdec_string_escaped(d, run);
}

static int jdec_open(struct jdec *d)
{
    if (++d->depth > JSON_MAX_DEPTH)
        return jdec_fail(d, "nested too deeply (limit 64)");
    luaL_checkstack(d->L, 4, "JSON nesting");
    lua_newtable(d->L);
    d->p++;
    jdec_ws(d);
    return 0;
}

/* After a member: 1 at the closing <close>, 0 after a comma, -1 on error. */
static int jdec_next(struct jdec *d, char close, const char *reason)
{
    jdec_ws(d);
    if (d->p == d->end)
        return jdec_fail(d, "unexpected end of input");
    if (*d->p != ',' && *d->p != close)
        return jdec_fail(d, reason);
    d->depth -= *d->p == close;
    return *d->p++ == close;
}

static int jdec_array(struct jdec *d)
{
    if (jdec_open(d) != 0)
        return -1;
    if (d->p < d->end && *d->p == ']') {
        d->p++;
        d->depth--;
        return 0;
    }
    for (int i = 1;; i++) {
        if (jdec_value(d) != 0)
            return -1;
        lua_rawseti(d->L, -2, i); /* array */
        int rc = jdec_next(d, ']', "expected ',' or ']'");
        if (rc != 0)
            return rc > 0 ? 0 : -1;
    }
}

static int jdec_object(struct jdec *d)
{
    if (jdec_open(d) != 0)
        return -1;
    if (d->p < d->end && *d->p == '}') {
        d->p++;
        d->depth--;
        return 0;
    }
    for (;;) {
        jdec_ws(d);
        if (d->p == d->end || *d->p != '"')
            return jdec_fail(d,
                             d->p == d->end ? "unexpected end of input" : "expected a string key");
        if (jdec_string(d) != 0)
            return -1;
        jdec_ws(d);
        if (d->p == d->end || *d->p != ':')
            return jdec_fail(d, "expected ':'");
        d->p++;
        if (jdec_value(d) != 0)
            return -1;
        lua_rawset(d->L, -3); /* object */
        int rc = jdec_next(d, '}', "expected ',' or '}'");
        if (rc != 0)
            return rc > 0 ? 0 : -1;
    }
}

static int jdec_value(struct jdec *d)
{
    if ((++d->count % JSON_GUARD_EVERY) == 0)
        pgw_lua_guard_check(d->L); /* may raise: nothing to release here */
    jdec_ws(d);
    if (d->p == d->end)
        return jdec_fail(d, "unexpected end of input");
    switch (*d->p) {
    case '{':
        return jdec_object(d);
    case '[':
        return jdec_array(d);
    case '"':
        return jdec_string(d);
    case 't':
        lua_pushboolean(d->L, 1);
        return jdec_literal(d, "true", 4);
    case 'f':
        lua_pushboolean(d->L, 0);
        return jdec_literal(d, "false", 5);
    case 'n':
        lua_pushlightuserdata(d->L, NULL); /* cjson.null */
        return jdec_literal(d, "null", 4);
    default:
        if (*d->p == '-' || is_digit(*d->p))
            return jdec_number(d);
        return jdec_fail(d, "unexpected character");
    }
}

/* pgw.json.decode(s) -> value | nil, "invalid JSON: <reason> at byte <n>" | nil, "too large" */
static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = check_bytes(L, 1, "pgw.json.decode", &len);
    if (len > JSON_MAX_BYTES)
        return push_fail(L, "too large");
    lua_settop(L, 1);
    struct jdec d = {.L = L, .start = s, .p = s, .end = s + len};
    if (jdec_value(&d) == 0) {
        jdec_ws(&d);
        if (d.p == d.end)
            return 1;
        d.reason = "unexpected data after the value";
    }
    lua_settop(L, 1);
    lua_pushnil(L);
    lua_pushfstring(L, "invalid JSON: %s at byte %d", d.reason, (int)(d.p - d.start) + 1);
    return 2;
}

int pgw_lua_json_push(lua_State *L, const char *s, size_t len)
{
    int top = lua_gettop(L);
    struct jdec d = {.L = L, .start = s, .p = s, .end = s + len};
    if (jdec_value(&d) == 0) {
        jdec_ws(&d);
        if (d.p == d.end)
            return PGW_OK;
    }
    lua_settop(L, top);
    return PGW_ERR;
}

/* ---- pgw.json.encode (lua-cjson) ---- */

/* Hands cjson's encode buffer back to malloc: encode_keep_buffer(false) frees it, (true) starts
 * a small one. Keep must end up on again (off, an error in cjson would leak its local buffer),
 * so the stack room is checked first: with it, calling a C function cannot fail. Raises nothing;
 * leaves the stack as it was. */
static void json_release_buffer(lua_State *L)
{
    if (!lua_checkstack(L, LUA_MINSTACK + 4))
        return;
    int top = lua_gettop(L);
    for (int keep = 0; keep <= 1; keep++) {
        lua_pushvalue(L, lua_upvalueindex(2));
        lua_pushboolean(L, keep);
        int rc = lua_pcall(L, 1, 0, 0);
        lua_settop(L, top);
        if (rc != 0)
            return;
    }
}

/* pgw.json.encode(v) -> string | nil, reason. Upvalues: cjson's encode, encode_keep_buffer. */
static int l_json_encode(lua_State *L)
{
    lua_settop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1); /* v encode v */
    int rc = lua_pcall(L, 1, 1, 0);
    size_t len = rc == 0 ? lua_objlen(L, -1) : 0; /* v json|err */
    if (rc == LUA_ERRMEM || len > JSON_KEEP_MAX)
        json_release_buffer(L);
    if (rc == LUA_ERRMEM)
        return lua_error(L); /* the cap: raises, like any allocation */
    if (rc != 0)
        return push_fail(L, lua_isstring(L, -1) ? lua_tostring(L, -1) : "cannot encode");
    if (len > JSON_MAX_BYTES)
        return push_fail(L, "too large");
    return 1;
}

static void cjson_configure(lua_State *L, const char *option, int value, int is_bool)
{
    lua_getfield(L, -1, option); /* cjson fn */
    if (is_bool)
        lua_pushboolean(L, value);
    else
        lua_pushinteger(L, value);
    lua_call(L, 1, 0); /* cjson's own C function, at setup: an error here is a panic */
}

/* Pushes a table { decode, encode, null } backed by a private cjson instance. */
static void push_json(lua_State *L)
{
    lua_pushcfunction(L, luaopen_cjson);
    lua_call(L, 0, 1); /* cjson: a new instance (own config, own buffer), not registered */
    cjson_configure(L, "encode_max_depth", JSON_MAX_DEPTH, 0);
    cjson_configure(L, "decode_max_depth", JSON_MAX_DEPTH, 0);
    cjson_configure(L, "encode_sparse_array", 0, 1); /* excessively sparse: error, not object */
    cjson_configure(L, "encode_invalid_numbers", 0, 1);
    cjson_configure(L, "decode_invalid_numbers", 0, 1);
    cjson_configure(L, "encode_keep_buffer", 1, 1);

    lua_createtable(L, 0, 3); /* cjson json */
    lua_pushcfunction(L, l_json_decode);
    lua_setfield(L, -2, "decode");
    lua_getfield(L, -2, "encode");
    lua_getfield(L, -3, "encode_keep_buffer");
    lua_pushcclosure(L, l_json_encode, 2);
    lua_setfield(L, -2, "encode");
    lua_getfield(L, -2, "null");
    lua_setfield(L, -2, "null");
    lua_remove(L, -2); /* json */
}

/* ---- pgw.time ---- */

#define TIME_MIN (-62167219200.0) /* 0000-01-01T00:00:00Z */
#define TIME_MAX 253402300799.0   /* 9999-12-31T23:59:59Z */

static const char *const day_names[7] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const day_names_long[7] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                              "Thursday", "Friday", "Saturday"};
static const char *const month_names[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* pgw.time.now() -> seconds since the epoch, ms precision (the event loop's cached time) */
static int l_time_now(lua_State *L)
{
    struct timeval tv;
    struct event_base *base = pgw_bridge_base();
    if (base == NULL || event_base_gettimeofday_cached(base, &tv) != 0)
        gettimeofday(&tv, NULL);
    lua_pushnumber(L, (double)tv.tv_sec + (double)(tv.tv_usec / 1000) / 1000.0);
    return 1;
}

/* pgw.time.monotonic() -> seconds from CLOCK_MONOTONIC */
static int l_time_monotonic(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    return 1;
}

/* pgw.time.http_date(t) -> "Sun, 06 Nov 1994 08:49:37 GMT" (IMF-fixdate; t floored) */
static int l_time_http_date(lua_State *L)
{
    double t = floor(check_number(L, 1, "pgw.time.http_date"));
    if (!(t >= TIME_MIN && t <= TIME_MAX))
        return luaL_error(L, "pgw.time.http_date: bad argument #1 (time out of range)");
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    char buf[64];
    int n = snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d GMT", day_names[tm.tm_wday],
                     tm.tm_mday, month_names[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                     tm.tm_sec);
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

/* Exactly <n> ASCII digits at <p>; -1 otherwise. */
static int digits(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(p[i]))
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static int find_name(const char *p, size_t n, const char *const *names, int count)
{
    for (int i = 0; i < count; i++)
        if (strlen(names[i]) == n && memcmp(p, names[i], n) == 0)
            return i;
    return -1;
}

/* "HH:MM:SS" at <p>. */
static int parse_clock(const char *p, struct tm *tm)
{
    if (p[2] != ':' || p[5] != ':')
        return -1;
    tm->tm_hour = digits(p, 2);
    tm->tm_min = digits(p + 3, 2);
    tm->tm_sec = digits(p + 6, 2);
    if (tm->tm_hour < 0 || tm->tm_hour > 23 || tm->tm_min < 0 || tm->tm_min > 59 ||
        tm->tm_sec < 0 || tm->tm_sec > 60) /* 60: a leap second */
        return -1;
    return 0;
}

/* "Sun, 06 Nov 1994 08:49:37 GMT" */
static int parse_imf(const char *s, size_t n, struct tm *tm)
{
    if (n != 29 || find_name(s, 3, day_names, 7) < 0 || memcmp(s + 3, ", ", 2) != 0 ||
        s[7] != ' ' || s[11] != ' ' || s[16] != ' ' || memcmp(s + 25, " GMT", 4) != 0)
        return -1;
    tm->tm_mday = digits(s + 5, 2);
    tm->tm_mon = find_name(s + 8, 3, month_names, 12);
    tm->tm_year = digits(s + 12, 4);
    return parse_clock(s + 17, tm);
}

/* The year of a two-digit RFC 850 year <yy> in year <current> (RFC 9110 §5.6.7): a year more
 * than 50 years in the future is the most recent past year with the same last two digits. */
static int rfc850_year(int yy, int current)
{
    int year = current - current % 100 + yy;
    if (year > current + 50)
        year -= 100;
    else if (year + 100 <= current + 50)
        year += 100;
    return year;
}

static int current_year(void)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    return tm.tm_year + 1900;
}

/* "Sunday, 06-Nov-94 08:49:37 GMT" */
static int parse_rfc850(const char *s, size_t n, struct tm *tm)
{
    const char *comma = memchr(s, ',', n);
    if (comma == NULL || find_name(s, (size_t)(comma - s), day_names_long, 7) < 0)
        return -1;
    const char *p = comma + 1;
    if ((size_t)(s + n - p) != 23 || p[0] != ' ' || p[3] != '-' || p[7] != '-' || p[10] != ' ' ||
        memcmp(p + 19, " GMT", 4) != 0)
        return -1;
    int yy = digits(p + 8, 2);
    tm->tm_mday = digits(p + 1, 2);
    tm->tm_mon = find_name(p + 4, 3, month_names, 12);
    tm->tm_year = yy < 0 ? -1 : rfc850_year(yy, current_year());
    return parse_clock(p + 11, tm);
}

/* "Sun Nov  6 08:49:37 1994" */
static int parse_asctime(const char *s, size_t n, struct tm *tm)
{
    if (n != 24 || find_name(s, 3, day_names, 7) < 0 || s[3] != ' ' || s[7] != ' ' ||
        s[10] != ' ' || s[19] != ' ')
        return -1;
    tm->tm_mon = find_name(s + 4, 3, month_names, 12);
    tm->tm_mday = s[8] == ' ' ? digits(s + 9, 1) : digits(s + 8, 2);
    tm->tm_year = digits(s + 20, 4);
    return parse_clock(s + 11, tm);
}

static int days_in_month(int mon, int year)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return days[mon] + (mon == 1 && leap);
}

/* pgw.time.parse_http_date(s) -> seconds | nil, "invalid date". The day name must be one of
 * the grammar's but is not checked against the date (as in other HTTP implementations). */
static int l_time_parse_http_date(lua_State *L)
{
    size_t n;
    const char *s = check_bytes(L, 1, "pgw.time.parse_http_date", &n);
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    tm.tm_mday = tm.tm_mon = tm.tm_year = -1;
    if (parse_imf(s, n, &tm) != 0 && parse_rfc850(s, n, &tm) != 0 && parse_asctime(s, n, &tm) != 0)
        return push_fail(L, "invalid date");
    if (tm.tm_year < 0 || tm.tm_mon < 0 || tm.tm_mday < 1 ||
        tm.tm_mday > days_in_month(tm.tm_mon, tm.tm_year))
        return push_fail(L, "invalid date");
    tm.tm_year -= 1900;
    lua_pushnumber(L, (double)timegm(&tm));
    return 1;
}

/* ---- pgw.base64 ---- */

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t b64_encode(unsigned char *out, const unsigned char *in, size_t n, int url)
{
    const char *a = url ? b64_url : b64_std;
    unsigned char *o = out;
    for (; n >= 3; n -= 3, in += 3) {
        uint32_t v = (uint32_t)in[0] << 16 | (uint32_t)in[1] << 8 | in[2];
        *o++ = a[v >> 18];
        *o++ = a[v >> 12 & 63];
        *o++ = a[v >> 6 & 63];
        *o++ = a[v & 63];
    }
    if (n > 0) {
        uint32_t v = (uint32_t)in[0] << 16 | (n == 2 ? (uint32_t)in[1] << 8 : 0);
        *o++ = a[v >> 18];
        *o++ = a[v >> 12 & 63];
        if (n == 2)
            *o++ = a[v >> 6 & 63];
        if (!url) {
            if (n == 1)
                *o++ = '=';
            *o++ = '=';
        }
    }
    return (size_t)(o - out);
}

static int b64_value(unsigned char c, int url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

/* Strict: only the alphabet, padding only at the end and only as much as the length needs
 * (optional in url mode), and the unused bits of the last character zero (one encoding per
 * value). Returns the decoded length, or -1. */
static long b64_decode(unsigned char *out, const unsigned char *in, size_t n, int url)
{
    size_t pad = 0;
    if (n % 4 == 0 && n > 0 && in[n - 1] == '=')
        pad = in[n - 2] == '=' ? 2 : 1;
    else if (!url && n % 4 != 0)
        return -1;
    n -= pad;
    if (n % 4 == 1)
        return -1;
    unsigned char *o = out;
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int c = b64_value(in[i], url);
        if (c < 0)
            return -1;
        v = v << 6 | (uint32_t)c;
        if (i % 4 == 3) {
            *o++ = (unsigned char)(v >> 16);
            *o++ = (unsigned char)(v >> 8);
            *o++ = (unsigned char)v;
            v = 0;
        }
    }
    if (n % 4 == 2) {
        if (v & 0xF)
            return -1;
        *o++ = (unsigned char)(v >> 4);
    } else if (n % 4 == 3) {
        if (v & 0x3)
            return -1;
        *o++ = (unsigned char)(v >> 10);
        *o++ = (unsigned char)(v >> 2);
    }
    return (long)(o - out);
}

/* pgw.base64.encode(s[, url]) -> string */
static int l_base64_encode(lua_State *L)
{
    size_t n;
    const unsigned char *s = (const unsigned char *)check_bytes(L, 1, "pgw.base64.encode", &n);
    int url = lua_toboolean(L, 2);
    if (n > ((size_t)INT32_MAX / 4) * 3)
        return luaL_error(L, "pgw.base64.encode: input too large");
    unsigned char stackbuf[SCRATCH_STACK];
    unsigned char *out = scratch(L, stackbuf, (n + 2) / 3 * 4);
    lua_pushlstring(L, (const char *)out, b64_encode(out, s, n, url));
    return 1;
}

/* pgw.base64.decode(s[, url]) -> bytes | nil, "invalid base64" */
static int l_base64_decode(lua_State *L)
{
    size_t n;
    const unsigned char *s = (const unsigned char *)check_bytes(L, 1, "pgw.base64.decode", &n);
    int url = lua_toboolean(L, 2);
    unsigned char stackbuf[SCRATCH_STACK];
    unsigned char *out = scratch(L, stackbuf, n / 4 * 3 + 2);
    long len = b64_decode(out, s, n, url);
    if (len < 0)
        return push_fail(L, "invalid base64");
    lua_pushlstring(L, (const char *)out, (size_t)len);
    return 1;
}

/* ---- pgw.crypto, pgw.const_eq ---- */

/* pgw.crypto.sha256(s) -> 32 bytes */
static int l_crypto_sha256(lua_State *L)
{
    size_t n;
    const char *s = check_bytes(L, 1, "pgw.crypto.sha256", &n);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(s, n, md, &mdlen, EVP_sha256(), NULL) != 1) {
        ERR_clear_error();
        return luaL_error(L, "pgw.crypto.sha256: OpenSSL failed");
    }
    lua_pushlstring(L, (const char *)md, mdlen);
    return 1;
}

/* pgw.crypto.hmac_sha256(key, s) -> 32 bytes */
static int l_crypto_hmac_sha256(lua_State *L)
{
    size_t klen, n;
    const char *key = check_bytes(L, 1, "pgw.crypto.hmac_sha256", &klen);
    const char *s = check_bytes(L, 2, "pgw.crypto.hmac_sha256", &n);
    if (klen > INT32_MAX)
        return luaL_error(L, "pgw.crypto.hmac_sha256: key too large");
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)s, n, md, &mdlen) == NULL) {
        ERR_clear_error();
        return luaL_error(L, "pgw.crypto.hmac_sha256: OpenSSL failed");
    }
    lua_pushlstring(L, (const char *)md, mdlen);
    return 1;
}

/* pgw.crypto.hex(s) -> lower-case hex */
static int l_crypto_hex(lua_State *L)
{
    static const char digits16[] = "0123456789abcdef";
    size_t n;
    const unsigned char *s = (const unsigned char *)check_bytes(L, 1, "pgw.crypto.hex", &n);
    if (n > (size_t)INT32_MAX / 2)
        return luaL_error(L, "pgw.crypto.hex: input too large");
    unsigned char stackbuf[SCRATCH_STACK];
    unsigned char *out = scratch(L, stackbuf, n * 2);
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = (unsigned char)digits16[s[i] >> 4];
        out[2 * i + 1] = (unsigned char)digits16[s[i] & 15];
    }
    lua_pushlstring(L, (const char *)out, n * 2);
    return 1;
}

/* pgw.const_eq(a, b) -> boolean. With different lengths the shorter length is still compared,
 * so the time depends on the lengths only, never on the contents. */
static int l_const_eq(lua_State *L)
{
    size_t alen, blen;
    const char *a = check_bytes(L, 1, "pgw.const_eq", &alen);
    const char *b = check_bytes(L, 2, "pgw.const_eq", &blen);
    int differ = CRYPTO_memcmp(a, b, PGW_MIN(alen, blen)) != 0;
    lua_pushboolean(L, !differ && alen == blen);
    return 1;
}

/* ---- Registration ---- */

static void set_funcs(lua_State *L, const char *name, const luaL_Reg *funcs)
{
    lua_newtable(L);
    for (; funcs->name != NULL; funcs++) {
        lua_pushcfunction(L, funcs->func);
        lua_setfield(L, -2, funcs->name);
    }
    lua_setfield(L, -2, name);
}

/* Sets json, time, base64, crypto and const_eq on the table at the top of the stack (pgw.core).
 * Call once per state, at setup (an error here is an allocation failure: a panic). */
void pgw_lua_open_util(lua_State *L)
{
    static const luaL_Reg time_funcs[] = {{"now", l_time_now},
                                          {"monotonic", l_time_monotonic},
                                          {"http_date", l_time_http_date},
                                          {"parse_http_date", l_time_parse_http_date},
                                          {NULL, NULL}};
    static const luaL_Reg base64_funcs[] = {
        {"encode", l_base64_encode}, {"decode", l_base64_decode}, {NULL, NULL}};
    static const luaL_Reg crypto_funcs[] = {{"sha256", l_crypto_sha256},
                                            {"hmac_sha256", l_crypto_hmac_sha256},
                                            {"hex", l_crypto_hex},
                                            {NULL, NULL}};
    if (c_locale == (locale_t)0)
        c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    pgw_assert(c_locale != (locale_t)0);

    push_json(L);
    lua_setfield(L, -2, "json");
    set_funcs(L, "time", time_funcs);
    set_funcs(L, "base64", base64_funcs);
    set_funcs(L, "crypto", crypto_funcs);
    lua_pushcfunction(L, l_const_eq);
    lua_setfield(L, -2, "const_eq");
}
