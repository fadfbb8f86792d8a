-- pgw: the SDK, reached from a policy with `local pgw = require "pgw"`.
--
-- Compiled to bytecode at build time (tools/luabc) and linked into ./passerelle: the gateway
-- never reads these files at run time. A policy sees every SDK table through a read-only view
-- (writing a field raises "attempt to modify a read-only table"; pairs() over a view sees
-- nothing, use the documented fields). See docs/lua.md for the sandbox.
--
-- Status: skeleton. The request API (pgw.req, pgw.resp, pgw.exit, pgw.ctx, pgw.log, ...) is
-- added by the bridge's lua_*.c files, each documented where it is registered.

local pgw = {}

-- pgw.version
-- Syntax: pgw.version
-- Stages: all, and at load time. Yields: no.
-- Returns: the SDK version string, "<major>.<minor>.<patch>".
-- Example: if pgw.version < "1" then ... end
pgw.version = "0.1.0"

-- pgw.policy: the policy file format and its checks (see lua/pgw/policy.lua).
pgw.policy = require "pgw.policy"

return pgw
