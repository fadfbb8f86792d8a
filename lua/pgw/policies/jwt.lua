-- jwt: authenticates the caller by a JSON Web Token verified against a provider of the
-- configuration's `jwt:` section (docs/jwt.md): static PEM keys, shared secrets, or a JWKS URL.
-- The signature, the algorithm pinned per key, `exp`/`nbf`/`iat`, `iss`, `aud` and the required
-- claims are checked in C (gateway/jwt.c) by pgw.jwt.verify; this policy reads the token,
-- refreshes the JWKS, and turns the claims into an identity.
--
-- In `access`:
--   1. removes the client's copies of the headers it sets (claims_to_headers, consumer_header);
--   2. no token: passes if an earlier policy identified the caller, runs as `anonymous` if set,
--      else 401 `Bearer realm="..."`;
--   3. a token whose kid no key has (or with no key loaded yet): fetches the provider's JWKS at
--      once (at most once per jwks.min_refresh per worker; a fetch already in flight is waited
--      for), then verifies again;
--   4. an invalid token: 401 `error="invalid_token"`, whatever failed (the log says what);
--      no usable key at all (the JWKS cannot be fetched): 503;
--   5. identity: the provider's consumer_claim names the consumer (require_consumer: it must
--      exist in the store); the claims go to pgw.ctx()["jwt.claims"];
--   6. required_scopes missing from `scope`/`scp`: 403 `error="insufficient_scope"`.
-- In `init_worker`: one refresh timer per provider with a JWKS URL (every jwks.refresh), and a
-- first fetch unless a reload handed the keys over.
--
-- Config: provider (required), header, query, cookie, hide_credentials, required_scopes,
-- claims_to_headers, consumer_header, anonymous, realm (pgw.bearer.schema, docs/jwt.md).
--
-- Example (route config):
--   policies:
--     - jwt: { provider: corp, required_scopes: [orders:read], claims_to_headers: { sub: X-User } }
--     - rate_limit: { by: consumer, limit: 100, window: 1m }

local pgw = require "pgw"
local bearer = require "pgw.bearer"

local jwt, ctx, log = pgw.jwt, pgw.ctx, pgw.log
local verify, provider, claim = jwt.verify, jwt.provider, jwt.jwks_claim

-- Fetches the JWKS of provider <name> (the caller claimed the fetch). Waits.
local function fetch(name)
    local p = provider(name)
    local url = p.jwks.url
    local res, err = pgw.http.request{ url = url, timeout = p.jwks.timeout, max_body = "1m",
                                       headers = { Accept = "application/json" } }
    local body
    if not res then
        log.err("jwt: provider ", name, ": JWKS fetch from ", url, " failed: ", err)
    elseif res.status ~= 200 then
        log.err("jwt: provider ", name, ": JWKS fetch from ", url, " answered ", res.status)
    else
        body = res.body
    end
    local n, skipped = jwt.jwks_done(name, body)
    if body and not n then
        log.err("jwt: provider ", name, ": JWKS from ", url, " refused: ", skipped)
    elseif n then
        local level = n > 0 and log.info or log.warn
        level("jwt: provider ", name, ": ", n, " key(s) from the JWKS",
              skipped > 0 and (", " .. skipped .. " skipped") or "")
    end
    return n ~= nil
end

-- After an unknown kid: fetch now, or wait for the fetch in flight. Returns whether the keys may
-- have changed.
local function refresh(name)
    local go, busy = claim(name, true) -- never for a provider without a JWKS URL
    if go then
        return fetch(name)
    end
    if not busy then
        return false -- fetched less than min_refresh ago
    end
    local version = provider(name).jwks_version
    local deadline = pgw.time.monotonic() + provider(name).jwks.timeout + 1
    repeat
        pgw.sleep(0.01)
    until provider(name).jwks_version ~= version or pgw.time.monotonic() > deadline
    return true
end

local function on_timer(premature, name, first)
    if premature then return end
    if first and (provider(name).jwks_keys or 0) > 0 then
        return -- a reload handed the keys over
    end
    if claim(name, false) then
        fetch(name)
    end
end

local schema = bearer.schema()
schema.provider = { type = "string", required = true, min = 1 }

return {
    name = "jwt",

    schema = schema,

    check_conf = function(conf)
        if not provider(conf.provider) then
            return nil, "provider: no provider \"" .. conf.provider .. "\" in the jwt section"
        end
        return true
    end,

    init_worker = function(conf)
        local name = conf.provider
        if jwt.claim_refresher(name) then
            local p = provider(name)
            pgw.timer.at(0, on_timer, name, true)
            pgw.timer.every(p.jwks.refresh, on_timer, name, false)
        end
    end,

    access = function(view)
        local conf = bearer.options(view, pairs)
        local token = bearer.token(conf)
        if token == nil then return end
        local name = conf.provider
        local claims, why, code = verify(name, token)
        if not claims and (code == "unknown_kid" or code == "no_keys") and refresh(name) then
            claims, why, code = verify(name, token)
        end
        local addr = pgw.req.get_client_addr()
        if not claims then
            if code == "no_keys" then
                log.err("jwt: ", addr, ": provider ", name, " has no usable key (no JWKS fetched ",
                        "yet, or none of its keys is usable)")
                return bearer.unavailable("token keys unavailable")
            end
            log.info("jwt: refused ", addr, ": provider ", name, ": ", why)
            return bearer.invalid(conf)
        end
        local p = conf.provider_settings -- fixed for the generation, like conf
        if p == nil then
            p = provider(name)
            conf.provider_settings = p
        end
        local ok, err = bearer.identify(conf, claims, p.consumer_claim, p.require_consumer)
        if not ok then
            log.info("jwt: refused ", addr, ": provider ", name, ": ", err)
            return bearer.invalid(conf)
        end
        local c = ctx()
        c["jwt.claims"] = claims
        c["jwt.provider"] = name
        if not bearer.has_scopes(c["auth.scopes"], conf.required_scopes) then
            log.info("jwt: refused ", addr, ": provider ", name, ": missing scope")
            return bearer.insufficient_scope(conf)
        end
    end,
}
