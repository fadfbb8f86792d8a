-- request_transformer: changes the request sent to the upstream: removes, sets and adds headers
-- and query arguments.
--
-- Runs in `access`, so policies listed before it see the client's request as sent. The changes
-- are applied in this order: remove, then set (replaces every value of that name), then add
-- (one more value, after any existing ones); within each, in the order of the names sorted.
-- Header names and values are checked by the SDK (pgw.req.set_header raises on a name that is
-- not a token or a value with CR, LF or NUL; Content-Length, Transfer-Encoding, Connection and
-- the other framing headers cannot be changed). Query argument names and values are sent
-- percent-encoded by the gateway.
--
-- Config (every key optional):
--   remove = { headers = [ names ], query = [ names ] }
--   set    = { headers = { name: value }, query = { name: value } }
--   add    = { headers = { name: value }, query = { name: value } }
--
-- Example (route config):
--   policies:
--     - request_transformer:
--         remove: { headers: [ Cookie ], query: [ debug ] }
--         set:    { headers: { X-Api-Version: "2" } }
--         add:    { query: { source: gateway } }

local pgw = require "pgw"

local ipairs, pairs, sort = ipairs, pairs, table.sort

local function names_list()
    return { type = "array", items = { type = "string", min = 1 }, default = {} }
end
local function values_map()
    return { type = "map", values = { type = "string" }, default = {} }
end

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do
        keys[#keys + 1] = k
    end
    sort(keys)
    return keys
end

return {
    name = "request_transformer",

    schema = {
        remove = { type = "map", default = {},
                   fields = { headers = names_list(), query = names_list() } },
        set = { type = "map", default = {},
                fields = { headers = values_map(), query = values_map() } },
        add = { type = "map", default = {},
                fields = { headers = values_map(), query = values_map() } },
    },

    access = function(conf)
        for _, name in ipairs(conf.remove.headers) do
            pgw.req.clear_header(name)
        end
        for _, name in ipairs(conf.remove.query) do
            pgw.req.clear_query_arg(name)
        end
        local set, add = conf.set, conf.add
        for _, name in ipairs(sorted_keys(set.headers)) do
            pgw.req.set_header(name, set.headers[name])
        end
        for _, name in ipairs(sorted_keys(set.query)) do
            pgw.req.set_query_arg(name, set.query[name])
        end
        for _, name in ipairs(sorted_keys(add.headers)) do
            pgw.req.add_header(name, add.headers[name])
        end
        for _, name in ipairs(sorted_keys(add.query)) do
            pgw.req.add_query_arg(name, add.query[name])
        end
    end,
}
