-- response_transformer: changes the response sent to the client: removes, sets and adds
-- headers, and removes, sets and adds top-level fields of a JSON object body.
--
-- Headers are changed in `header_filter`, in this order: remove, then set (replaces every value
-- of that name), then add (one more value); within each, names in sorted order. The SDK checks
-- names and values (pgw.resp.set_header raises on an invalid one); framing headers
-- (Content-Length, Transfer-Encoding, Connection...) cannot be changed.
--
-- JSON body fields (any of remove.json, set.json, add.json non-empty) use a bounded whole-body
-- mode: for a response whose Content-Type is application/json or */*+json, that is not
-- compressed (Content-Encoding absent or identity), not to a HEAD request and not a 204 or 304,
-- `header_filter` clears Content-Length (the gateway then frames the body itself) and
-- `body_filter` holds the chunks back until the end of the body, decodes it with pgw.json, and
-- applies remove (delete the key), set (create or replace) and add (create only if absent). A
-- body that is not a JSON object, does not decode, or grows past json_max_body is sent
-- unchanged (past the bound, what was held back is released and the rest streams through), with
-- a warning in the log. Key order in the re-encoded object is not preserved; values in set and
-- add are sent as the JSON value the config gives (string, number, boolean, list, map).
--
-- Config (every key optional):
--   remove = { headers = [ names ], json = [ keys ] }
--   set    = { headers = { name: value }, json = { key: value } }
--   add    = { headers = { name: value }, json = { key: value } }
--   json_max_body   largest body transformed (size); default "1m"
--
-- Example (route config):
--   policies:
--     - response_transformer:
--         remove: { headers: [ Server, X-Powered-By ], json: [ internal_id ] }
--         set:    { headers: { Cache-Control: no-store } }
--         add:    { json: { api_version: "2" } }

local pgw = require "pgw"

local ipairs, pairs, type, sort, concat, lower, find, match =
    ipairs, pairs, type, table.sort, table.concat, string.lower, string.find, string.match

local STATE = "pgw.response_transformer" -- pgw.ctx() key: { parts = {...}, size = n } or false

local function names_list()
    return { type = "array", items = { type = "string", min = 1 }, default = {} }
end
local function values_map(values)
    return { type = "map", values = values, default = {} }
end

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do
        keys[#keys + 1] = k
    end
    sort(keys)
    return keys
end

local function has_json_ops(conf)
    for _ in ipairs(conf.remove.json) do
        return true
    end
    for _ in pairs(conf.set.json) do
        return true
    end
    for _ in pairs(conf.add.json) do
        return true
    end
    return false
end

local function is_json(ctype)
    if ctype == nil then
        return false
    end
    local mime = lower(match(ctype, "^%s*([^;%s]+)") or "")
    return mime == "application/json" or find(mime, "^[%w!#$&^_.+-]+/[%w!#$&^_.+-]*%+json$") ~= nil
end

local function transform(conf, body)
    if not find(body, "^%s*{") then
        return nil, "not a JSON object"
    end
    local obj, err = pgw.json.decode(body)
    if type(obj) ~= "table" then
        return nil, err or "not a JSON object"
    end
    for _, k in ipairs(conf.remove.json) do
        obj[k] = nil
    end
    for k, v in pairs(conf.set.json) do
        obj[k] = v
    end
    for k, v in pairs(conf.add.json) do
        if obj[k] == nil then
            obj[k] = v
        end
    end
    return pgw.json.encode(obj)
end

return {
    name = "response_transformer",

    schema = {
        remove = { type = "map", default = {},
                   fields = { headers = names_list(), json = names_list() } },
        set = { type = "map", default = {},
                fields = { headers = values_map({ type = "string" }), json = values_map(nil) } },
        add = { type = "map", default = {},
                fields = { headers = values_map({ type = "string" }), json = values_map(nil) } },
        json_max_body = { type = "size", default = "1m" },
    },

    header_filter = function(conf)
        for _, name in ipairs(conf.remove.headers) do
            pgw.resp.clear_header(name)
        end
        local set, add = conf.set, conf.add
        for _, name in ipairs(sorted_keys(set.headers)) do
            pgw.resp.set_header(name, set.headers[name])
        end
        for _, name in ipairs(sorted_keys(add.headers)) do
            pgw.resp.add_header(name, add.headers[name])
        end

        if not has_json_ops(conf) then
            return
        end
        local status = pgw.resp.get_status()
        local encoding = pgw.resp.get_header("Content-Encoding")
        if pgw.req.get_method() == "HEAD" or status == 204 or status == 304 or
           not is_json(pgw.resp.get_header("Content-Type")) or
           (encoding ~= nil and lower(encoding) ~= "identity") then
            return
        end
        pgw.resp.clear_header("Content-Length")
        pgw.ctx()[STATE] = { parts = {}, size = 0 }
    end,

    body_filter = function(conf, _, chunk, eof)
        local ctx = pgw.ctx()
        local st = ctx[STATE]
        if not st then
            return nil
        end
        st.size = st.size + #chunk
        st.parts[#st.parts + 1] = chunk
        if st.size > conf.json_max_body then
            ctx[STATE] = false
            pgw.log.warn("response_transformer: body larger than json_max_body (",
                         conf.json_max_body, " bytes), sent unchanged")
            return concat(st.parts)
        end
        if not eof then
            return ""
        end
        ctx[STATE] = false
        local body = concat(st.parts)
        local out, err = transform(conf, body)
        if out == nil then
            pgw.log.warn("response_transformer: body sent unchanged: ", err)
            return body
        end
        return out
    end,
}
