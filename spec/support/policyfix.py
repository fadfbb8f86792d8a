"""policyfix.py: what the policy e2e suites share.

no_worker_crash   autouse fixture (import it into a test module): fails a test whose gateway
                  lost a worker (crash, sanitizer abort, watchdog kill). The master replaces a
                  dead worker, so the harness's teardown check alone would not notice.
                  Register each gateway with track(g) (from the error-log mark it is at now).
write_policies(pdir, files)   writes {name: source} as <pdir>/<name>.lua (source dedented; bytes
                  written as they are).
route(path, policies=None, name=None, upstream="a", listeners=("public",), **extra)
                  a route dict named after its path.
"""
import re
import textwrap

import pytest

CRASH_RE = re.compile(
    r"\[error\] worker \d+ \(pid \d+\) (killed by signal|exited with status [1-9])")
_tracked = []   # (gateway, error-log line count when tracked) of the current test


# A Lua function for test policies that hand SDK tables back as JSON: a deep copy that sees
# through read-only views (the policy's own pairs).
LUA_COPY = """
local function copy(v)
    if type(v) ~= "table" then return v end
    local out = {}
    for k, x in pairs(v) do out[k] = copy(x) end
    return out
end
"""


def track(g):
    _tracked.append((g, len(g.error_lines())))
    return g


@pytest.fixture(autouse=True)
def no_worker_crash():
    del _tracked[:]
    yield
    crashes = [l for g, mark in _tracked for l in g.error_lines()[mark:] if CRASH_RE.search(l)]
    assert not crashes, "a worker died during the test:\n" + "\n".join(crashes)


def write_policies(pdir, files):
    pdir.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        path = pdir / ("%s.lua" % name)
        if isinstance(src, bytes):
            path.write_bytes(src)
        else:
            path.write_text(textwrap.dedent(src).lstrip("\n"))


def route(path, policies=None, name=None, upstream="a", listeners=("public",), **extra):
    r = {"name": name or re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_") or "root",
         "listeners": list(listeners), "match": {"path": path}, "upstream": upstream}
    if policies is not None:
        r["policies"] = policies
    r.update(extra)
    return r
