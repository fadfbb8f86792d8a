/* lua_pattern.c: Lua 5.1 pattern matching (find, match, gmatch, gsub) for
 * policy code, with the semantics of LuaJIT's string library (docs/lua.md) and
 * two limits the builtin lacks for the CPU guard: a step budget that looks at
 * the current run's deadline every PATTERN_STEPS steps (so a backtracking
 * pattern fails with the guard's budget error instead of running for minutes
 * inside one C call), and a recursion cap (PATTERN_MAXDEPTH, "pattern too
 * complex"). Installed in the sandbox's string table and the string metatable;
 * trusted code calling string.* keeps the builtin functions. */
#include "lua.h"

#include <stddef.h>
#include <string.h>

#define PATTERN_MAXCAPTURES LUA_MAXCAPTURES
/* Nested match() calls; LuaJIT's own limit (LJ_MAX_XLEVEL), so both raise at
 * the same point. */
#define PATTERN_MAXDEPTH 200
/* Matching steps (pattern items tried, subject bytes scanned) between two looks
 * at the guard's deadline: one clock read per ~50-100 us of matching. */
#define PATTERN_STEPS 16384
#define PATTERN_ESC '%'
#define PATTERN_SPECIALS "^$*+?.([%-"

#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)

struct match_state {
  const char *src_init; /* the subject */
  const char *src_end;
  lua_State *L;
  int level; /* captures opened so far (finished or not) */
  int depth;
  long steps; /* left before the next deadline check */
  struct {
    const char *init;
    ptrdiff_t len; /* or CAP_UNFINISHED / CAP_POSITION */
  } capture[PATTERN_MAXCAPTURES];
};

static void ms_init(struct match_state *ms, lua_State *L, const char *s,
                    size_t len) {
  ms->L = L;
  ms->src_init = s;
  ms->src_end = s + len;
  ms->level = 0;
  ms->depth = 0;
  ms->steps = PATTERN_STEPS;
}

/* Charges <n> steps; may raise the budget error. */
static inline void spend(struct match_state *ms, ptrdiff_t n) {
  ms->steps -= (long)n;
  if (ms->steps <= 0) {
    ms->steps = PATTERN_STEPS;
    pgw_lua_guard_check(ms->L);
  }
}

/* ---- Character classes (ASCII, as LuaJIT: no locale) ---- */

static int is_lower(int c) { return c >= 'a' && c <= 'z'; }
static int is_upper(int c) { return c >= 'A' && c <= 'Z'; }
static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int is_alpha(int c) { return is_lower(c) || is_upper(c); }
static int is_alnum(int c) { return is_alpha(c) || is_digit(c); }
static int is_graph(int c) { return c > 32 && c < 127; }

/* Whether <c> belongs to class letter <cl> (%a, %A...); a non-class <cl> stands
 * for itself. */
static int match_class(int c, int cl) {
  int res;
  switch (cl | 0x20) {
  case 'a':
    res = is_alpha(c);
    break;
  case 'c':
    res = c < 32 || c == 127;
    break;
  case 'd':
    res = is_digit(c);
    break;
  case 'g':
    res = is_graph(c);
    break; /* LuaJIT has %g (Lua 5.2), plain Lua 5.1 does not */
  case 'l':
    res = is_lower(c);
    break;
  case 'p':
    res = is_graph(c) && !is_alnum(c);
    break;
  case 's':
    res = c == ' ' || (c >= '\t' && c <= '\r');
    break;
  case 'u':
    res = is_upper(c);
    break;
  case 'w':
    res = is_alnum(c);
    break;
  case 'x':
    res = is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
    break;
  case 'z':
    res = c == 0;
    break;
  default:
    return cl == c; /* not a class letter: itself */
  }
  return is_lower(cl) ? res : !res;
}

/* [set]: <p> at '[', <ec> at the closing ']'. */
static int match_set(int c, const char *p, const char *ec) {
  int found = 1;
  if (p[1] == '^') {
    found = 0;
    p++;
  }
  while (++p < ec) {
    if (*p == PATTERN_ESC) {
      p++;
      if (match_class(c, (unsigned char)*p))
        return found;
    } else if (p[1] == '-' && p + 2 < ec) {
      p += 2;
      if ((unsigned char)p[-2] <= c && c <= (unsigned char)*p)
        return found;
    } else if ((unsigned char)*p == c) {
      return found;
    }
  }
  return !found;
}

/* ---- The matcher ---- */

/* End of the single-character class starting at <p>. */
static const char *class_end(struct match_state *ms, const char *p) {
  switch (*p++) {
  case PATTERN_ESC:
    if (*p == '\0')
      luaL_error(ms->L, "malformed pattern (ends with '%%')");
    return p + 1;
  case '[':
    if (*p == '^')
      p++;
    do { /* a ']' right after '[' or '[^' is a member */
      if (*p == '\0')
        luaL_error(ms->L, "malformed pattern (missing ']')");
      if (*p++ == PATTERN_ESC && *p != '\0')
        p++;
    } while (*p != ']');
    return p + 1;
  default:
    return p;
  }
}

static int single_match(int c, const char *p, const char *ep) {
  switch (*p) {
  case '.':
    return 1;
  case PATTERN_ESC:
    return match_class(c, (unsigned char)p[1]);
  case '[':
    return match_set(c, p, ep - 1);
  default:
    return (unsigned char)*p == c;
  }
}

static const char *do_match(struct match_state *ms, const char *s,
                            const char *p);

static const char *match_balance(struct match_state *ms, const char *s,
                                 const char *p) {
  if (p[0] == '\0' || p[1] == '\0')
    luaL_error(ms->L, "unbalanced pattern");
  if (s >= ms->src_end || *s != *p)
    return NULL;
  int open = *p, close = p[1], depth = 1;
  const char *start = s;
  while (++s < ms->src_end) {
    if (*s == close) {
      if (--depth == 0) {
        spend(ms, s - start);
        return s + 1;
      }
    } else if (*s == open) {
      depth++;
    }
  }
  spend(ms, s - start);
  return NULL;
}

static const char *max_expand(struct match_state *ms, const char *s,
                              const char *p, const char *ep) {
  ptrdiff_t i = 0;
  while (s + i < ms->src_end && single_match((unsigned char)s[i], p, ep))
    i++;
  spend(ms, i);
  for (; i >= 0; i--) { /* longest first, then give back one at a time */
    const char *res = do_match(ms, s + i, ep + 1);
    if (res != NULL)
      return res;
  }
  return NULL;
}

static const char *min_expand(struct match_state *ms, const char *s,
                              const char *p, const char *ep) {
  for (;;) {
    const char *res = do_match(ms, s, ep + 1);
    if (res != NULL)
      return res;
    if (s < ms->src_end && single_match((unsigned char)*s, p, ep))
      s++;
    else
      return NULL;
  }
}

static const char *start_capture(struct match_state *ms, const char *s,
                                 const char *p, int what) {
  if (ms->level >= PATTERN_MAXCAPTURES)
    luaL_error(ms->L, "too many captures");
  ms->capture[ms->level].init = s;
  ms->capture[ms->level].len = what;
  ms->level++;
  const char *res = do_match(ms, s, p);
  if (res == NULL)
    ms->level--;
  return res;
}

static const char *end_capture(struct match_state *ms, const char *s,
                               const char *p) {
  int l = ms->level - 1;
  while (l >= 0 && ms->capture[l].len != CAP_UNFINISHED)
    l--;
  if (l < 0)
    luaL_error(ms->L, "invalid pattern capture");
  ms->capture[l].len = s - ms->capture[l].init;
  const char *res = do_match(ms, s, p);
  if (res == NULL)
    ms->capture[l].len = CAP_UNFINISHED;
  return res;
}

/* %1-%9 inside a pattern: the text of an earlier, closed capture again. */
static const char *match_capture(struct match_state *ms, const char *s,
                                 int digit) {
  int l = digit - '1';
  if (l < 0 || l >= ms->level || ms->capture[l].len == CAP_UNFINISHED)
    luaL_error(ms->L, "invalid capture index");
  size_t len = (size_t)ms->capture[l]
                   .len; /* a position capture is huge here: no match */
  if ((size_t)(ms->src_end - s) < len)
    return NULL;
  spend(ms, (ptrdiff_t)(len < PATTERN_STEPS ? len : PATTERN_STEPS));
  return memcmp(ms->capture[l].init, s, len) == 0 ? s + len : NULL;
}

/* Matches pattern <p> (NUL-terminated, as in Lua 5.1) at <s>; the end of the
 * match or NULL. Single-item continuations loop instead of recursing; depth
 * counts the rest. */
static const char *do_match(struct match_state *ms, const char *s,
                            const char *p) {
  if (++ms->depth > PATTERN_MAXDEPTH)
    luaL_error(ms->L, "pattern too complex");
again:
  spend(ms, 1);
  switch (*p) {
  case '(':
    if (p[1] == ')')
      s = start_capture(ms, s, p + 2, CAP_POSITION);
    else
      s = start_capture(ms, s, p + 1, CAP_UNFINISHED);
    break;
  case ')':
    s = end_capture(ms, s, p + 1);
    break;
  case '\0':
    break; /* end of pattern: matched */
  case '$':
    if (p[1] != '\0')
      goto item; /* a '$' elsewhere is a literal */
    if (s != ms->src_end)
      s = NULL;
    break;
  case PATTERN_ESC:
    if (p[1] == 'b') {
      s = match_balance(ms, s, p + 2);
      if (s == NULL)
        break;
      p += 4;
      goto again;
    }
    if (p[1] == 'f') {
      p += 2;
      if (*p != '[')
        luaL_error(ms->L, "missing '[' after '%%f' in pattern");
      const char *ep = class_end(ms, p);
      int prev = s == ms->src_init ? '\0' : (unsigned char)s[-1];
      int cur = s < ms->src_end ? (unsigned char)*s : '\0';
      if (match_set(prev, p, ep - 1) || !match_set(cur, p, ep - 1)) {
        s = NULL;
        break;
      }
      p = ep;
      goto again;
    }
    if (is_digit((unsigned char)p[1])) {
      s = match_capture(ms, s, (unsigned char)p[1]);
      if (s == NULL)
        break;
      p += 2;
      goto again;
    }
    goto item;
  default:
  item : {
    const char *ep = class_end(ms, p);
    int m = s < ms->src_end && single_match((unsigned char)*s, p, ep);
    switch (*ep) {
    case '?': {
      const char *res;
      if (m && (res = do_match(ms, s + 1, ep + 1)) != NULL) {
        s = res;
        break;
      }
      p = ep + 1;
      goto again;
    }
    case '*':
      s = max_expand(ms, s, p, ep);
      break;
    case '+':
      s = m ? max_expand(ms, s + 1, p, ep) : NULL;
      break;
    case '-':
      s = min_expand(ms, s, p, ep);
      break;
    default:
      if (m) {
        s++;
        p = ep;
        goto again;
      }
      s = NULL;
      break;
    }
    break;
  }
  }
  ms->depth--;
  return s;
}

/* ---- Results ---- */

static void push_capture(struct match_state *ms, int i, const char *s,
                         const char *e) {
  if (i >= ms->level) {
    if (i != 0)
      luaL_error(ms->L, "invalid capture index");
    lua_pushlstring(ms->L, s,
                    (size_t)(e - s)); /* no captures: the whole match */
    return;
  }
  ptrdiff_t len = ms->capture[i].len;
  if (len == CAP_UNFINISHED)
    luaL_error(ms->L, "unfinished capture");
  if (len == CAP_POSITION)
    lua_pushinteger(ms->L, ms->capture[i].init - ms->src_init + 1);
  else
    lua_pushlstring(ms->L, ms->capture[i].init, (size_t)len);
}

/* <s> NULL: only the explicit captures (find). */
static int push_captures(struct match_state *ms, const char *s, const char *e) {
  int n = (ms->level == 0 && s != NULL) ? 1 : ms->level;
  luaL_checkstack(ms->L, n, "too many captures");
  for (int i = 0; i < n; i++)
    push_capture(ms, i, s, e);
  return n;
}

/* ---- find, match ---- */

/* Whether find must run the matcher: LuaJIT looks at the whole pattern (past a
 * NUL too). */
static int has_specials(const char *p, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (p[i] != '\0' && strchr(PATTERN_SPECIALS, p[i]) != NULL)
      return 1;
  return 0;
}

/* Plain search, charged per candidate compared so a huge needle cannot stall
 * the guard. */
static const char *plain_find(struct match_state *ms, const char *s,
                              size_t slen, const char *p, size_t plen) {
  if (plen == 0)
    return s;
  if (plen > slen)
    return NULL;
  const char *last = s + (slen - plen); /* last possible start */
  while (s <= last) {
    const char *c = memchr(s, p[0], (size_t)(last - s) + 1);
    if (c == NULL)
      return NULL;
    spend(ms, (ptrdiff_t)(plen < PATTERN_STEPS ? plen : PATTERN_STEPS) +
                  (c - s) / 64);
    if (memcmp(c + 1, p + 1, plen - 1) == 0)
      return c;
    s = c + 1;
  }
  return NULL;
}

static int find_aux(lua_State *L, int is_find) {
  size_t slen, plen;
  const char *s = luaL_checklstring(L, 1, &slen);
  const char *p = luaL_checklstring(L, 2, &plen);
  lua_Integer init = luaL_optinteger(L, 3, 1);
  if (init < 0)
    init += (lua_Integer)slen + 1;
  init = init > 0 ? init - 1 : 0;
  if ((size_t)init > slen)
    init = (lua_Integer)slen; /* Lua 5.1 (LuaJIT without 5.2 mode) clamps */

  struct match_state ms;
  ms_init(&ms, L, s, slen);
  if (is_find && (lua_toboolean(L, 4) || !has_specials(p, plen))) {
    const char *at = plain_find(&ms, s + init, slen - (size_t)init, p, plen);
    if (at != NULL) {
      lua_pushinteger(L, at - s + 1);
      lua_pushinteger(L, at - s + (lua_Integer)plen);
      return 2;
    }
    lua_pushnil(L);
    return 1;
  }
  int anchor = *p == '^';
  if (anchor)
    p++;
  const char *s1 = s + init;
  do {
    ms.level = 0;
    ms.depth = 0;
    const char *e = do_match(&ms, s1, p);
    if (e != NULL) {
      if (!is_find)
        return push_captures(&ms, s1, e);
      lua_pushinteger(L, s1 - s + 1);
      lua_pushinteger(L, e - s);
      return push_captures(&ms, NULL, NULL) + 2;
    }
  } while (s1++ < ms.src_end && !anchor);
  lua_pushnil(L);
  return 1;
}

static int l_pattern_find(lua_State *L) { return find_aux(L, 1); }
static int l_pattern_match(lua_State *L) { return find_aux(L, 0); }

/* ---- gmatch ---- */

/* Upvalues: subject, pattern, next start offset. A '^' is a literal here, as in
 * Lua 5.1. */
static int l_pattern_gmatch_next(lua_State *L) {
  size_t slen;
  const char *s = lua_tolstring(L, lua_upvalueindex(1), &slen);
  const char *p = lua_tostring(L, lua_upvalueindex(2));
  lua_Integer pos = lua_tointeger(L, lua_upvalueindex(3));
  struct match_state ms;
  ms_init(&ms, L, s, slen);
  for (const char *src = s + pos; src <= ms.src_end; src++) {
    ms.level = 0;
    ms.depth = 0;
    const char *e = do_match(&ms, src, p);
    if (e != NULL) {
      lua_Integer next = e - s;
      if (e == src)
        next++; /* an empty match: move on one byte */
      lua_pushinteger(L, next);
      lua_replace(L, lua_upvalueindex(3));
      return push_captures(&ms, src, e);
    }
  }
  lua_pushinteger(L, (lua_Integer)slen +
                         1); /* exhausted: later calls return nothing at once */
  lua_replace(L, lua_upvalueindex(3));
  return 0;
}

static int l_pattern_gmatch(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  lua_settop(L, 2);
  lua_pushinteger(L, 0);
  lua_pushcclosure(L, l_pattern_gmatch_next, 3);
  return 1;
}

/* ---- gsub ---- */

static void add_string_repl(struct match_state *ms, luaL_Buffer *b,
                            const char *s, const char *e) {
  size_t len;
  const char *r = lua_tolstring(ms->L, 3, &len);
  for (size_t i = 0; i < len; i++) {
    if (r[i] != PATTERN_ESC) {
      luaL_addchar(b, r[i]);
      continue;
    }
    i++; /* a '%' at the very end reads the string's NUL terminator, as in
            Lua 5.1 */
    int c = (unsigned char)r[i];
    if (!is_digit(c)) {
      luaL_addchar(b, r[i]);
    } else if (c == '0') {
      luaL_addlstring(b, s, (size_t)(e - s));
    } else {
      push_capture(ms, c - '1', s, e);
      luaL_addvalue(b);
    }
  }
}

static void add_repl(struct match_state *ms, luaL_Buffer *b, const char *s,
                     const char *e) {
  lua_State *L = ms->L;
  switch (lua_type(L, 3)) {
  case LUA_TNUMBER:
  case LUA_TSTRING:
    add_string_repl(ms, b, s, e);
    return;
  case LUA_TFUNCTION: {
    lua_pushvalue(L, 3);
    int n = push_captures(ms, s, e);
    lua_call(L, n, 1); /* policy code: the guard's hook watches it */
    break;
  }
  default: /* LUA_TTABLE, checked by the caller */
    push_capture(ms, 0, s, e);
    lua_gettable(L, 3);
    break;
  }
  if (!lua_toboolean(L, -1)) { /* nil or false: keep the original text */
    lua_pop(L, 1);
    lua_pushlstring(L, s, (size_t)(e - s));
  } else if (!lua_isstring(L, -1)) {
    luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  }
  luaL_addvalue(b);
}

static int l_pattern_gsub(lua_State *L) {
  size_t slen;
  const char *src = luaL_checklstring(L, 1, &slen);
  const char *p = luaL_checkstring(L, 2);
  int tr = lua_type(L, 3);
  lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)slen + 1);
  luaL_argcheck(L,
                tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION ||
                    tr == LUA_TTABLE,
                3, "string/function/table expected");
  int anchor = *p == '^';
  if (anchor)
    p++;
  struct match_state ms;
  ms_init(&ms, L, src, slen);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  lua_Integer n = 0;
  while (n < max_n) {
    ms.level = 0;
    ms.depth = 0;
    const char *e = do_match(&ms, src, p);
    if (e != NULL) {
      n++;
      add_repl(&ms, &b, src, e);
    }
    if (e != NULL && e > src)
      src = e;
    else if (src < ms.src_end)
      luaL_addchar(&b, *src++);
    else
      break;
    if (anchor)
      break;
  }
  luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
  luaL_pushresult(&b);
  lua_pushinteger(L, n);
  return 2;
}

/* ---- Registration ---- */

void pgw_lua_pattern_push(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"find", l_pattern_find},
      {"match", l_pattern_match},
      {"gmatch", l_pattern_gmatch},
      {"gsub", l_pattern_gsub},
      {NULL, NULL},
  };
  lua_createtable(L, 0, 4);
  for (const luaL_Reg *r = fns; r->name != NULL; r++) {
    lua_pushcfunction(L, r->func);
    lua_setfield(L, -2, r->name);
  }
}
