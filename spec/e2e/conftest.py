"""Fixtures for the end-to-end suites (helpers live in spec/support: gw.py, stubs.py, cases.py).

  make_gateway(cfg)   function-scoped factory: starts ./passerelle with <cfg> in a fresh temp dir;
                      stopped by PID at the end of the test.
  make_stub(...)      function-scoped factory of stubs.Upstream (and refusing/blackhole ports).
  harness.module_env(...)  for module-scoped fixtures: a gateway stopped when the module ends.

Every gateway is checked at teardown: it must still be running (no crash) and must stop within
5 s of SIGTERM.
"""
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))

import gw as gwmod  # noqa: E402
import stubs as stubsmod  # noqa: E402
from harness import stop_checked  # noqa: E402


def pytest_configure(config):
    if not gwmod.BINARY.exists():
        sys.stderr.write("\n!! %s is missing: run `make passerelle` first; every e2e test "
                         "will fail.\n" % gwmod.BINARY)


@pytest.fixture
def make_gateway(tmp_path):
    started = []

    def start(cfg, name=None, **kw):
        d = tmp_path / (name or "gw%d" % len(started))
        g = gwmod.Gateway(cfg, d, start=False, **kw)
        started.append(g)
        g.start()
        return g

    yield start
    problems = []
    for g in started:
        if g.proc is not None:
            problems += stop_checked(g)
    assert not problems, "\n".join(problems)


@pytest.fixture
def make_stub():
    made = []

    def make(name="up", kind="upstream", **kw):
        if kind == "upstream":
            s = stubsmod.Upstream(name, **kw)
        elif kind == "refuse":
            s = stubsmod.RefusingPort()
        elif kind == "blackhole":
            s = stubsmod.Blackhole()
        else:
            raise ValueError(kind)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()
