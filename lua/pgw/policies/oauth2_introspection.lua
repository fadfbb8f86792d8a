-- oauth2_introspection: authenticates the caller by an opaque OAuth2 access token, asking the
-- authorization server whether it is active (RFC 7662), with the answer cached per worker
-- (docs/jwt.md).
--
-- In `access`:
--   1. removes the client's copies of the headers it sets; no token: as the jwt policy (earlier
--      identity kept, `anonymous`, or 401 `Bearer realm="..."`);
--   2. the cache (key: SHA-256 of the URL and the token, so no token sits in memory in clear):
--      an active answer is kept until the token's `exp`, at most `ttl`; an inactive one for
--      `negative_ttl`;
--   3. otherwise POSTs `token=...&token_type_hint=...` (form-encoded) to `url` with the client
--      credentials (HTTP Basic per RFC 6749 §2.3.1, or in the form with auth_method: post). The
--      credentials and the token are never logged;
--   4. the server cannot be reached, times out, or answers other than 200 with a JSON object:
--      503, nothing cached; `active` not true: 401 `error="invalid_token"`;
--   5. identity and scopes as the jwt policy; the answer goes to pgw.ctx()["oauth2.claims"].
--
-- Config: url, client_id, client_secret (required), auth_method (basic | post), token_type_hint
-- (default access_token; "" sends none), timeout (5s), ttl (5m), negative_ttl (10s),
-- consumer_claim (sub), require_consumer (false), allow_http (false), and the bearer keys
-- (header, query, cookie, hide_credentials, required_scopes, claims_to_headers,
-- consumer_header, anonymous, realm).
--
-- Example (route config):
--   policies:
--     - oauth2_introspection:
--         url: https://auth.example.com/oauth2/introspect
--         client_id: gateway
--         client_secret: s3cr3t
--         required_scopes: [orders:read]

local pgw = require "pgw"
local bearer = require "pgw.bearer"

local ctx, log, cache, json = pgw.ctx, pgw.log, pgw.cache, pgw.json
local format, byte, gsub, find, min = string.format, string.byte, string.gsub, string.find, math.min
local INACTIVE = "\0inactive"

local function urlencode(s)
    return (gsub(s, "[^%w%-%._~]", function(c) return format("%%%02X", byte(c)) end))
end

-- "http(s)://host[:port][/path]" -> scheme, host, port (nil without); nil when malformed: a host
-- name, an IPv4 address or a bracketed IPv6 address, then a path of visible ASCII without "#".
local function url_parts(url)
    local scheme, rest = url:match("^(https?)://(.+)$")
    if not scheme then return nil end
    local authority, path = rest:match("^([^/]+)(.*)$")
    if not authority or path:find("[^\33-\126]") or path:find("#", 1, true) then return nil end
    local host, port = authority:match("^(%[[%x:.]+%])(.*)$")
    if not host then host, port = authority:match("^([%w.-]+)(.*)$") end
    if not host then return nil end
    if port ~= "" then
        port = port:match("^:(%d+)$")
        if not port then return nil end
    else
        port = nil
    end
    return scheme, host, port
end

local function options(view)
    local o = bearer.options(view, pairs)
    if o.auth_method == "basic" and o.basic == nil then
        o.basic = "Basic " .. pgw.base64.encode(urlencode(o.client_id) .. ":" ..
                                                urlencode(o.client_secret))
    end
    return o
end

-- Asks the server. Returns the answer's text and its table, or nil and the reason (for the log,
-- without secrets), or false when the token is inactive.
local function introspect(conf, token)
    local body = "token=" .. urlencode(token)
    if conf.token_type_hint ~= "" then
        body = body .. "&token_type_hint=" .. urlencode(conf.token_type_hint)
    end
    local headers = { ["Content-Type"] = "application/x-www-form-urlencoded",
                      Accept = "application/json" }
    if conf.basic then
        headers.Authorization = conf.basic
    else
        body = body .. "&client_id=" .. urlencode(conf.client_id) ..
            "&client_secret=" .. urlencode(conf.client_secret)
    end
    local res, err = pgw.http.request{ url = conf.url, method = "POST", headers = headers,
                                       body = body, timeout = conf.timeout, max_body = "256k" }
    if not res then
        return nil, err
    end
    if res.status ~= 200 then
        return nil, "answered " .. res.status
    end
    local doc = find(res.body, "^%s*{") and json.decode(res.body)
    if type(doc) ~= "table" then
        return nil, "the answer is not a JSON object"
    end
    if doc.active ~= true then
        return false
    end
    return res.body, doc
end

-- One error line per URL per second at most while the server fails (an outage would otherwise
-- log every request); the line counts the failures it stands for.
local failures = {} -- url -> { at = monotonic seconds of the last line, n = failures since }

local function log_failure(url, reason)
    local f = failures[url] or { at = -1, n = 0 }
    failures[url] = f
    f.n = f.n + 1
    local now = pgw.time.monotonic()
    if now - f.at >= 1 then
        log.err("oauth2: introspection at ", url, " failed: ", reason,
                f.n > 1 and (" (" .. f.n .. " failures since the last line)") or "")
        f.at, f.n = now, 0
    end
end

local schema = bearer.schema()
schema.url = { type = "string", required = true, min = 1 }
schema.client_id = { type = "string", required = true, min = 1 }
schema.client_secret = { type = "string", required = true, min = 1 }
schema.auth_method = { type = "string", enum = { "basic", "post" }, default = "basic" }
schema.token_type_hint = { type = "string", default = "access_token" }
schema.timeout = { type = "duration", default = 5, min = 0.001, max = 60 }
schema.ttl = { type = "duration", default = 300, min = 0.001 }
schema.negative_ttl = { type = "duration", default = 10, min = 0.001 }
schema.consumer_claim = { type = "string", default = "sub", min = 1 }
schema.require_consumer = { type = "boolean", default = false }
schema.allow_http = { type = "boolean", default = false }

return {
    name = "oauth2_introspection",

    schema = schema,

    check_conf = function(conf)
        local scheme, host, port = url_parts(conf.url)
        if not scheme then
            return nil, "url: not an http(s)://host[:port]/path URL: " .. conf.url
        end
        if port and (tonumber(port) < 1 or tonumber(port) > 65535) then
            return nil, "url: port out of range: " .. port
        end
        if scheme == "http" and not conf.allow_http then
            return nil, "url: http:// sends tokens and credentials in clear: use https://, or " ..
                "allow_http: true for a server on the same host"
        end
        return host ~= nil
    end,

    access = function(view)
        local conf = options(view)
        local token = bearer.token(conf)
        if token == nil then return end
        local addr = pgw.req.get_client_addr()
        -- the answer depends on who asks (the server may scope introspection per client)
        local key = pgw.crypto.hex(pgw.crypto.sha256(conf.url .. "\0" .. conf.client_id .. "\0" ..
                                                     token))
        local now = pgw.time.now()
        local text = cache.get(key)
        local claims
        if text == INACTIVE then
            log.info("oauth2: refused ", addr, ": token inactive (cached)")
            return bearer.invalid(conf)
        elseif text then
            claims = json.decode(text)
        else
            local doc, err
            text, doc = introspect(conf, token)
            if text == nil then
                log_failure(conf.url, doc)
                return bearer.unavailable("token introspection unavailable")
            end
            if text == false then
                cache.set(key, INACTIVE, conf.negative_ttl)
                log.info("oauth2: refused ", addr, ": token inactive")
                return bearer.invalid(conf)
            end
            claims = doc
            local ttl = conf.ttl
            if type(doc.exp) == "number" then ttl = min(ttl, doc.exp - now) end
            if ttl > 0 then
                local ok
                ok, err = cache.set(key, text, ttl)
                if not ok then log.info("oauth2: answer not cached: ", err) end
            end
        end
        if type(claims.exp) == "number" and claims.exp <= now then
            log.info("oauth2: refused ", addr, ": token expired")
            return bearer.invalid(conf)
        end
        local ok, err = bearer.identify(conf, claims, conf.consumer_claim, conf.require_consumer)
        if not ok then
            log.info("oauth2: refused ", addr, ": ", err)
            return bearer.invalid(conf)
        end
        ctx()["oauth2.claims"] = claims
        if not bearer.has_scopes(ctx()["auth.scopes"], conf.required_scopes) then
            log.info("oauth2: refused ", addr, ": missing scope")
            return bearer.insufficient_scope(conf)
        end
    end,
}
