"""The process model (issue 4): a master and N workers, `passerelle status`, crash containment,
stopping.

- `workers: N` starts N worker processes, children of the master; the workers (not the master)
  serve the connections; `workers: auto` is one per CPU; bad values are FILE:LINE errors.
- `passerelle status` (-c FILE or -s SOCKET) prints one JSON object: master_pid, generation,
  config, workers [{slot, pid, generation, connections, requests}], last_reload_error, reloads;
  with no master answering it exits 1 with a message on stderr. The control socket is mode
  0600 and the master answers only root or its own uid.
- A worker killed with SIGKILL under load is replaced within 1 s by a new pid; only the
  connections it was serving see failures (at most one each); the other worker's traffic is
  untouched; the master's error log names the pid and the signal.
- QUIT: stop accepting, close idle keep-alive connections at once, let in-flight requests
  finish (up to timeouts.drain), then exit 0 as soon as they are done (at once when nothing
  is in flight); a second QUIT does not restart the drain.
  TERM/INT: exit promptly with status 0 even with a request in flight.

Timing asserts allow about 2x the promised figure (1 s respawn -> 2 s).
"""
import os
import re
import signal
import socket
import shutil
import stat
import subprocess
import tempfile
import time
from collections import Counter

import pytest

from gw import BINARY, REPO, Client, config, listener, socket_owner, to_yaml, wait_for
from httpio import Closed, ProtocolError, Timeout, pattern_body
from load import Load


def gw_config(up, workers=2, **extra):
    return config(
        listeners=[listener("public")],
        upstreams={"app": {"targets": [up.address], "retries": 0}},
        routes=[{"name": "all", "listeners": ["public"], "match": {"path": "/"},
                 "upstream": "app"}],
        workers=workers, **extra)


def owner(g, client, pids=None):
    """The gateway process holding the server side of <client>'s connection."""
    return socket_owner(g.port, client.sock.getsockname()[1],
                        (pids or g.worker_pids()) + [g.pid])


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# ---- workers ----

def test_workers_are_children_of_the_master_and_serve(make_gateway, make_stub):
    up = make_stub("app")
    g = make_gateway(gw_config(up, workers=2))
    pids = g.wait_workers(2)
    assert g.pid not in pids
    served_by = set()
    held = []
    try:
        for i in range(6):
            c = Client(g.port)
            held.append(c)
            c.request(target="/w%d" % i)
            r = c.read_response()
            assert r.status == 200 and r.header("x-stub") == "app", r
            served_by.add(owner(g, c, pids))
        assert served_by <= set(pids), (
            "connections held by %r, not only by the workers %r (master %d)"
            % (served_by, pids, g.pid))
    finally:
        for c in held:
            c.close()
    time.sleep(0.3)
    assert g.worker_pids() == pids, "workers changed while idle (respawn loop?)"


def test_workers_auto_is_one_per_cpu(make_gateway, make_stub):
    up = make_stub("app")
    g = make_gateway(gw_config(up, workers="auto"))
    cpus = {os.cpu_count(), len(os.sched_getaffinity(0))}
    time.sleep(0.3)
    wait_for(lambda: len(g.worker_pids()) in cpus, 5.0,
             "workers: auto gives one worker per CPU (%s)" % sorted(cpus))
    st = g.status()
    assert len(st["workers"]) in cpus, st


BAD_PROCESS_SETTINGS = {
    "workers_zero": ("workers: 0", "workers"),
    "workers_over_256": ("workers: 257", "workers"),
    "workers_negative": ("workers: -1", "workers"),
    "workers_word": ("workers: many", "workers"),
    "workers_quoted": ('workers: "2"', "workers"),
    "drain_bad_duration": ("timeouts: { drain: 5x }", "drain"),
    "control_unknown_key": ("control: { sokcet: /tmp/x.sock }", "sokcet"),
    "control_socket_not_string": ("control: { socket: [a, b] }", "socket"),
}


@pytest.mark.parametrize("name", sorted(BAD_PROCESS_SETTINGS))
def test_bad_process_settings_are_file_line_errors(tmp_path, name):
    line_text, word = BAD_PROCESS_SETTINGS[name]
    text = ('listeners:\n  - { name: public, address: "127.0.0.1:%d" }\naccess_log: off\n%s\n'
            % (9, line_text))
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    cp = subprocess.run([str(BINARY), "check", "-c", str(path)], cwd=str(REPO),
                        capture_output=True, text=True, timeout=10)
    assert cp.returncode != 0, "%s accepted: %r" % (line_text, cp.stdout)
    assert re.search(r"gw\.yaml:4: .*%s" % re.escape(word), cp.stderr), (
        "want gw.yaml:4: naming %r, got %r" % (word, cp.stderr))


GOOD_PROCESS_SETTINGS = ["workers: 1", "workers: 256", "workers: auto",
                         "timeouts: { drain: 250ms }", 'control: { socket: "/tmp/x.sock" }']


@pytest.mark.parametrize("line_text", GOOD_PROCESS_SETTINGS)
def test_good_process_settings_are_accepted(tmp_path, line_text):
    path = tmp_path / "gw.yaml"
    path.write_text('listeners:\n  - { name: public, address: "127.0.0.1:9" }\n%s\n' % line_text)
    cp = subprocess.run([str(BINARY), "check", "-c", str(path)], cwd=str(REPO),
                        capture_output=True, text=True, timeout=10)
    assert cp.returncode == 0, "%r rejected: %r" % (line_text, cp.stderr)


# ---- passerelle status ----

STATUS_KEYS = {"master_pid", "generation", "config", "workers", "last_reload_error", "reloads"}
WORKER_KEYS = {"slot", "pid", "generation", "connections", "requests"}


def test_status_output(make_gateway, make_stub):
    up = make_stub("app")
    g = make_gateway(gw_config(up, workers=2))
    pids = g.wait_workers(2)

    mode = os.stat(g.control_path).st_mode
    assert stat.S_ISSOCK(mode), "%s is not a socket" % g.control_path
    assert stat.S_IMODE(mode) == 0o600, "control socket mode %o, want 600" % stat.S_IMODE(mode)

    held = []
    try:
        for i in range(3):
            c = Client(g.port)
            held.append(c)
            c.request(target="/s%d" % i)
            assert c.read_response().status == 200
        per_worker = Counter(owner(g, c, pids) for c in held)

        def counted():
            s = g.status()
            n = sum(w.get("connections", 0) for w in s.get("workers", []))
            return s if n == 3 else None
        st = wait_for(counted, 2.0, "status counts the 3 open client connections")

        assert STATUS_KEYS <= set(st), "status lacks %s: %r" % (STATUS_KEYS - set(st), st)
        assert st["master_pid"] == g.pid, st
        assert st["generation"] == 1, st
        assert os.path.realpath(st["config"]) == os.path.realpath(g.config_path), st
        assert st["last_reload_error"] is None, st
        assert st["reloads"] == 0, st
        ws = st["workers"]
        assert isinstance(ws, list) and len(ws) == 2, st
        for w in ws:
            assert WORKER_KEYS <= set(w), "worker entry lacks %s: %r" % (WORKER_KEYS - set(w), w)
            assert all(is_int(w[k]) for k in WORKER_KEYS), "non-integer field in %r" % w
            assert w["generation"] == 1, w
            assert w["connections"] == per_worker.get(w["pid"], 0), (
                "worker %d reports %d connections; /proc shows it holds %d of ours"
                % (w["pid"], w["connections"], per_worker.get(w["pid"], 0)))
        assert sorted(w["pid"] for w in ws) == pids, (ws, pids)
        assert len({w["slot"] for w in ws}) == 2, "slots not distinct: %r" % ws
        assert sum(w["requests"] for w in ws) >= 3, ws

        by_socket = g.status(socket_path=g.control_path)
        assert by_socket["master_pid"] == g.pid, by_socket
        assert sorted(w["pid"] for w in by_socket["workers"]) == pids, by_socket
    finally:
        for c in held:
            c.close()
    wait_for(lambda: sum(w["connections"] for w in g.status()["workers"]) == 0, 2.0,
             "connections back to 0 after the clients closed")


@pytest.mark.parametrize("how", ["no_socket_file", "stale_socket_file", "config_not_running"])
def test_status_without_master_exits_1(tmp_path, how):
    sock = tmp_path / "control.sock"
    if how == "stale_socket_file":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(sock))
        s.close()  # the file stays, nobody listens
    if how == "config_not_running":
        cfgp = tmp_path / "gw.yaml"
        cfgp.write_text(to_yaml(config(listeners=[listener("public")],
                                       control={"socket": str(sock)}, workers=1,
                                       error_log={"path": str(tmp_path / "error.log")})) + "\n")
        args = ["-c", str(cfgp)]
    else:
        args = ["-s", str(sock)]
    t0 = time.monotonic()
    cp = subprocess.run([str(BINARY), "status"] + args, cwd=str(REPO), capture_output=True,
                        text=True, timeout=10)
    assert cp.returncode == 1, (cp.returncode, cp.stdout, cp.stderr)
    assert cp.stderr.strip(), "no message on stderr"
    assert "master_pid" not in cp.stdout, cp.stdout
    assert time.monotonic() - t0 < 3.0, "status took %.1f s to give up" % (time.monotonic() - t0)
    cp = subprocess.run([str(BINARY), "reload"] + args, cwd=str(REPO), capture_output=True,
                        text=True, timeout=10)
    assert cp.returncode != 0 and cp.stderr.strip(), ("reload with no master", cp)
    assert "reloaded" not in cp.stdout, cp.stdout


def test_control_socket_refuses_other_users(make_gateway, make_stub):
    """Only root or the master's uid may use the control socket, even when the file mode would
    let others connect (the master checks the peer's credentials)."""
    up = make_stub("app")
    d = tempfile.mkdtemp(prefix="pgwctl-")
    try:
        os.chmod(d, 0o755)
        sock = os.path.join(d, "control.sock")
        g = make_gateway(gw_config(up, workers=1, control={"socket": sock}))
        g.wait_workers(1)
        assert g.status(socket_path=sock)["generation"] == 1
        os.chmod(sock, 0o666)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        # controls: nobody can run the binary and connect to the socket file itself, so a
        # refusal below comes from the master's check of the peer
        cp = subprocess.run(as_nobody + [str(BINARY), "version"], cwd="/", capture_output=True,
                            text=True, timeout=10)
        assert cp.returncode == 0, cp
        cp = subprocess.run(as_nobody + ["/usr/bin/python3", "-c",
                                         "import socket; s = socket.socket(socket.AF_UNIX); "
                                         "s.connect(%r)" % sock],
                            cwd="/", capture_output=True, text=True, timeout=10)
        assert cp.returncode == 0, "nobody cannot connect to a 0666 socket: %r" % cp.stderr
        for cmd in ("status", "reload"):
            cp = subprocess.run(as_nobody + [str(BINARY), cmd, "-s", sock], cwd="/",
                                capture_output=True, text=True, timeout=10)
            assert cp.returncode != 0, "`%s` as nobody succeeded: %r" % (cmd, cp.stdout)
            assert "master_pid" not in cp.stdout and "reloaded" not in cp.stdout, cp.stdout
        st = g.status(socket_path=sock)
        assert st["generation"] == 1 and st["reloads"] == 0, st
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- crash containment ----

def test_sigkill_of_a_worker_under_load(make_gateway, make_stub):
    up = make_stub("app")
    g = make_gateway(gw_config(up, workers=2))
    pids = g.wait_workers(2)
    mark = g.error_mark()
    threads = 6
    load = Load(g.port, threads=threads)
    with load:
        load.wait_ok(100)
        owners = load.owners(g)
        known = {i: pid for i, (_, pid) in owners.items() if pid is not None}
        assert known, "could not map any load connection to a gateway process: %r" % owners
        assert set(known.values()) <= set(pids), (
            "load connections held by %r, not by the workers %r" % (known, pids))
        spread = Counter(known.values())
        victim = max(pids, key=lambda p: spread.get(p, 0))
        survivor = [p for p in pids if p != victim][0]
        on_victim = {i for i, p in known.items() if p == victim}
        on_survivor = {i for i, p in known.items() if p == survivor}
        failed_before = list(load.failures)
        ok_at_kill = load.total_ok
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        new = g.wait_workers(2, timeout=5.0, exclude=[victim])
        replaced_in = time.monotonic() - t0
        time.sleep(1.5)
    after = [f for f in load.failures if f not in failed_before]
    assert not failed_before, "failures before the kill: %r" % failed_before
    assert replaced_in <= 2.0, "worker %d replaced after %.2f s (promised: 1 s)" % (
        victim, replaced_in)
    assert survivor in new, "the surviving worker %d disappeared: %r" % (survivor, new)
    hit_survivor = [f for f in after if f.thread in on_survivor]
    assert not hit_survivor, (
        "connections served by the surviving worker %d failed: %r (threads on it: %r, on the "
        "killed %d: %r)" % (survivor, hit_survivor, sorted(on_survivor), victim,
                             sorted(on_victim)))
    assert len(after) <= len(on_victim), (
        "%d failures after the kill, more than the %d connections the killed worker held: %r"
        % (len(after), len(on_victim), after))
    per_thread = Counter(f.thread for f in after)
    assert all(n <= 1 for n in per_thread.values()), (
        "a connection failed more than once: %r" % after)
    assert load.total_ok - ok_at_kill >= 100, "traffic did not go on after the kill: %s" % (
        load.summary())

    st = g.status()
    assert sorted(w["pid"] for w in st["workers"]) == new, (st, new)
    replacement = [w for w in st["workers"] if w["pid"] not in pids]
    assert len(replacement) == 1 and replacement[0]["generation"] == 1, st

    def logged():
        return [l for l in g.error_lines()[mark:]
                if re.search(r"\b%d\b" % victim, l)
                and re.search(r"(?i)\bsig ?kill\b|\bkill(ed)?\b.*\b9\b|signal\D{0,3}9\b", l)]
    wait_for(logged, 2.0, "an error-log line naming worker %d and signal 9" % victim)
    g.assert_alive()


# ---- stopping ----

def _not_served(port):
    """None when a new connection is refused or gets no answer; else what happened."""
    try:
        c = Client(port, timeout=1.0)
    except OSError:
        return None
    with c:
        try:
            c.request(target="/after-quit")
            r = c.read_response(timeout=1.0)
        except (OSError, Closed, Timeout, ProtocolError):
            return None
        return r


def test_sigquit_finishes_in_flight_request_and_exits_0(make_gateway, make_stub):
    up = make_stub("app")
    drain = 6.0
    g = make_gateway(gw_config(up, workers=2, timeouts={"drain": "6s", "keepalive": "60s"}))
    workers = g.wait_workers(2)
    size = 100000
    idle = Client(g.port)
    idle.request(target="/idle")
    assert idle.read_response().status == 200
    slow = Client(g.port, timeout=10.0)
    snap = up.snapshot()
    # the upstream answers after 500 ms (so the head is written during the drain), then sends
    # the body in 10 pieces 100 ms apart
    slow.request(target="/slow?size=%d&delay=500&slow=100" % size)
    assert [r for r in up.wait_requests(1, 3.0, snap) if "slow=" in r.target], (
        "the slow request never reached the upstream")
    time.sleep(0.1)
    t0 = time.monotonic()
    g.signal(signal.SIGQUIT)
    g.exited_expected = True  # from here on the teardown does not expect it running
    try:
        assert idle.wait_closed(1.0), "idle keep-alive connection still open 1 s after QUIT"
        time.sleep(0.2)
        served = _not_served(g.port)
        assert served is None, "a new connection after QUIT was served: %r" % served
        r = slow.read_response(timeout=drain)
        done = time.monotonic()
        assert r.status == 200 and r.complete, r
        assert r.body == pattern_body(size), "in-flight body damaged (%d bytes)" % len(r.body)
        assert r.has_close(), (   # docs/operations.md, Stopping
            "a response whose head was written during the drain lacks Connection: close")
    finally:
        idle.close()
        slow.close()
    status = g.wait_exit(drain + 2.0)
    assert status is not None, "still running %.1f s after QUIT" % (time.monotonic() - t0)
    exited = time.monotonic()
    assert status == 0, "exit status %s after QUIT" % status
    assert exited - done < 2.0, (
        "exited %.1f s after the last in-flight request ended (should not wait out the drain)"
        % (exited - done))
    assert not g.surviving_workers(1.0), "workers outlived the master: %r" % workers
    try:
        socket.create_connection(("127.0.0.1", g.port), timeout=0.5).close()
        pytest.fail("port still accepting after exit")
    except OSError:
        pass


def test_sigquit_with_nothing_in_flight_exits_at_once(make_gateway, make_stub):
    """Idle connections (between keep-alive requests, or never sent a byte) are not in flight:
    QUIT closes them and exits without waiting for the drain."""
    up = make_stub("app")
    g = make_gateway(gw_config(up, workers=2, timeouts={"drain": "10s", "keepalive": "60s",
                                                         "header": "60s"}))
    g.wait_workers(2)
    idle, silent = Client(g.port), Client(g.port)
    try:
        idle.request(target="/idle")
        assert idle.read_response().status == 200
        time.sleep(0.1)
        t0 = time.monotonic()
        g.signal(signal.SIGQUIT)
        g.exited_expected = True
        status = g.wait_exit(5.0)
        elapsed = time.monotonic() - t0
        assert status is not None, "still running 5 s after QUIT with nothing in flight"
        assert status == 0, status
        assert elapsed < 2.0, "QUIT with nothing in flight took %.1f s" % elapsed
        assert idle.wait_closed(1.0) and silent.wait_closed(1.0)
    finally:
        idle.close()
        silent.close()


def test_second_sigquit_does_not_restart_the_drain(make_gateway, make_stub):
    up = make_stub("app")
    g = make_gateway(gw_config(up, workers=2, timeouts={"drain": "2s"}))
    g.wait_workers(2)
    slow = Client(g.port, timeout=10.0)
    snap = up.snapshot()
    slow.request(target="/slow?size=100000&slow=600")  # ~6 s: longer than the drain
    assert up.wait_requests(1, 3.0, snap), "the slow request never reached the upstream"
    time.sleep(0.1)
    try:
        t0 = time.monotonic()
        g.signal(signal.SIGQUIT)
        g.exited_expected = True
        time.sleep(1.5)
        assert g.alive(), "exited 1.5 s into a 2 s drain with a request in flight"
        g.signal(signal.SIGQUIT)
        status = g.wait_exit(6.0)
        elapsed = time.monotonic() - t0
        assert status is not None, "still running 7.5 s after the first QUIT (drain: 2 s)"
        assert status == 0, "exit status %s" % status
        # the first drain ends at 2 s; a restarted one would end at 3.5 s
        assert elapsed < 3.2, "exited %.1f s after the first QUIT: the drain restarted" % elapsed
        r = slow.read_response(timeout=2.0, allow_incomplete=True)
        assert not r.complete, "a 6 s download completed within a 2 s drain: %r" % r
    finally:
        slow.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_fast_stop_with_a_request_in_flight(make_gateway, make_stub, sig):
    up = make_stub("app")
    g = make_gateway(gw_config(up, workers=2, timeouts={"drain": "30s"}))
    workers = g.wait_workers(2)
    slow = Client(g.port, timeout=10.0)
    snap = up.snapshot()
    slow.request(target="/slow?size=100000&slow=1000")  # ~10 s
    try:
        assert up.wait_requests(1, 3.0, snap), "the slow request never reached the upstream"
        time.sleep(0.2)
        t0 = time.monotonic()
        g.signal(sig)
        g.exited_expected = True
        status = g.wait_exit(5.0)
        elapsed = time.monotonic() - t0
        assert status is not None, "still running 5 s after %s" % sig.name
        assert status == 0, "exit status %s after %s" % (status, sig.name)
        assert elapsed < 2.0, "%s took %.1f s" % (sig.name, elapsed)
        assert slow.closed_at(2.0) is not None, "client connection still open after exit"
    finally:
        slow.close()
    assert not g.surviving_workers(1.0), "workers outlived the master: %r" % workers


def test_watchdog_replaces_a_worker_that_stops_answering(make_gateway, make_stub):
    """A worker whose event loop is stuck (here: SIGSTOP) is killed after timeouts.watchdog and
    replaced; the other worker keeps serving meanwhile."""
    up = make_stub("app")
    g = make_gateway(gw_config(up, workers=2, timeouts={"watchdog": "1s"}))
    pids = g.wait_workers(2)
    stuck = pids[0]
    os.kill(stuck, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        new = g.wait_workers(2, timeout=6.0, exclude=[stuck])
        elapsed = time.monotonic() - t0
        assert pids[1] in new and stuck not in new, (pids, new)
        assert elapsed < 4.0, "replaced after %.1f s with a 1 s watchdog" % elapsed
    finally:
        try:
            os.kill(stuck, signal.SIGCONT)
        except ProcessLookupError:
            pass
    text = g.error_text()
    assert re.search(r"\[error\] worker \d \(pid %d\) has not answered for \d+ ms: killed" % stuck,
                     text), text[-2000:]
    assert re.search(r"worker \d \(pid %d\) killed by signal 9" % stuck, text), text[-2000:]
    with Client(g.port) as c:
        c.request(target="/after")
        assert c.read_response().status == 200


def test_watchdog_leaves_busy_but_healthy_workers_alone(make_gateway, make_stub):
    up = make_stub("app")
    g = make_gateway(gw_config(up, workers=1, timeouts={"watchdog": "500ms"}))
    pids = g.wait_workers(1)
    load = Load(g.port, threads=4, keepalive=[True, False, True, False])
    with load:
        time.sleep(2.0)
    assert not load.failures, load.summary()
    assert g.worker_pids() == pids
    assert "has not answered" not in g.error_text()
