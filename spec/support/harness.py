"""harness.py: gateway lifetime helpers shared by conftest.py and module-scoped fixtures."""
import signal
import sys

import gw as gwmod


def stop_checked(g):
    was_alive = g.alive()
    status = g.stop()
    problems = []
    if getattr(g, "exited_expected", False) and not was_alive:
        pass  # the test stopped it (and checked how) itself
    elif not was_alive:
        problems.append("gateway had exited (status %s) before teardown" % status)
    elif status not in (0, -signal.SIGTERM):
        problems.append("gateway ended with status %s after SIGTERM (not stopped within 5 s, "
                        "or crashed)" % status)
    if getattr(g, "leftover_workers", None):
        problems.append("worker(s) %s still running 1 s after the master (pid %s) exited; "
                        "killed" % (g.leftover_workers, g.pid))
    stderr = g.stderr_text()
    if "AddressSanitizer" in stderr or "runtime error:" in stderr:
        problems.append("sanitizer report on stderr:\n" + stderr[-3000:])
    return problems


class ModuleEnv:
    """What a module-scoped fixture hands to its tests: the gateway and its stubs by name."""

    def __init__(self, gateway, stubs):
        self.gw = gateway
        self.stubs = stubs

    def add_consumer_key(self, consumer):
        """Adds <consumer> and a new API key for it to the gateway's store; returns the key."""
        for args in (("consumers", "add", consumer), ("keys", "add", "--consumer", consumer)):
            cp = self.gw.cli(*args)
            assert cp.returncode == 0, cp.stderr
        return cp.stdout.strip().split("\n")[0]

    def __getattr__(self, name):
        try:
            return self.__dict__["stubs"][name]
        except KeyError:
            raise AttributeError(name)

    @property
    def port(self):
        return self.gw.port


def module_env(request, tmp_path_factory, build):
    """Runs <build>() -> (config dict, {name: stub}) and starts the gateway for the module.
    Use inside a module-scoped fixture: `return module_env(request, tmp_path_factory, build)`."""
    cfg, stubs = build()
    d = tmp_path_factory.mktemp(request.module.__name__.split(".")[-1])
    g = gwmod.Gateway(cfg, d, start=False)

    def fin():
        problems = stop_checked(g) if g.proc is not None else []
        for s in stubs.values():
            s.stop()
        if problems:
            sys.stderr.write("\n!! %s: %s\n" % (request.module.__name__, "\n".join(problems)))
            raise AssertionError("\n".join(problems))

    request.addfinalizer(fin)
    g.start()
    return ModuleEnv(g, stubs)
