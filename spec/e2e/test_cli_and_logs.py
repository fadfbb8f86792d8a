"""The command line and the logs: `passerelle check -c FILE` (exit 0, or non-zero with
"FILE:LINE: message" for unknown keys, wrong types and broken references), `passerelle -c BAD`
exits without listening; one JSON access-log line per request with every documented field
(docs/logs.md), X-Request-Id equal to its request_id, `access_log: off`; the error-log line format
and a line naming the upstream for a 502; SIGTERM stops the gateway within 5 s with status 0.
"""
import datetime
import re
import signal
import socket
import subprocess
import time

import pytest

import gw as gwmod
from gw import BINARY, REPO, Client, Raw, build_request, config, free_port, listener
from harness import module_env
from stubs import RefusingPort, Upstream

FIELDS = ["time", "request_id", "listener", "route", "client", "method", "path", "status",
          "bytes_in", "bytes_out", "upstream", "upstream_status", "upstream_ms", "total_ms",
          "retries", "termination"]
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# ---- passerelle check ----

VALID = """\
listeners:
  - { name: public, address: "127.0.0.1:%(port)d" }
upstreams:
  app:
    targets: ["127.0.0.1:9"]
    retries: 1
routes:
  - name: all
    listeners: [public]
    match: { path: / }
    upstream: app
access_log: off
"""


def _variant(old, new):
    assert old in VALID
    return VALID.replace(old, new)


# Each bad config marks with "#!" the lines an error message may name.
BAD = {
    "unknown_top_level_key": (_variant("access_log: off\n", "access_log: off\ncolour: blue #!\n"),
                              ["colour"]),
    "unknown_upstream_key": (_variant("    retries: 1\n", "    retries: 1\n    retires: 2 #!\n"),
                             ["retires"]),
    "unknown_route_key": (_variant("    upstream: app\n",
                                   "    upstream: app\n    strip_prefx: true #!\n"),
                          ["strip_prefx"]),
    "unknown_match_key": (_variant("{ path: / }", "{ path: /, hots: a.example } #!"), ["hots"]),
    "wrong_type_integer": (_variant("    retries: 1\n", "    retries: many #!\n"), ["retries"]),
    "wrong_type_list": (_variant('    targets: ["127.0.0.1:9"]\n',
                                 "    targets: 127.0.0.1:9 #!\n"), ["targets"]),
    "wrong_type_mapping": (_variant("access_log: off\n", "access_log: off\ntimeouts: 5s #!\n"),
                           ["timeouts"]),
    "wrong_duration": (_variant("access_log: off\n",
                                "access_log: off\ntimeouts:\n  header: soon #!\n"),
                       ["header"]),
    "access_log_flush_over_60s": (_variant("access_log: off\n",
                                           "access_log: { path: x.log, flush: 61s } #!\n"),
                                  ["flush"]),
    "access_log_flush_word": (_variant("access_log: off\n",
                                       "access_log: { path: x.log, flush: often } #!\n"),
                              ["flush"]),
    "access_log_flush_negative": (_variant("access_log: off\n",
                                           "access_log: { path: x.log, flush: -1s } #!\n"),
                                  ["flush"]),
    "unknown_listener": (_variant("  - name: all\n    listeners: [public]\n",
                                  "  - name: all #!\n    listeners: [nowhere] #!\n"),
                         ["nowhere"]),
    "unknown_upstream": (_variant("  - name: all\n", "  - name: all #!\n")
                         .replace("    upstream: app\n", "    upstream: ghost #!\n"),
                         ["ghost"]),
}


def run_cli(*args, timeout=10):
    return subprocess.run([str(BINARY)] + list(args), cwd=str(REPO), capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_check_valid_config(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(VALID % {"port": free_port()})
    p = run_cli("check", "-c", str(path))
    assert p.returncode == 0, (p.stdout, p.stderr)


def test_check_missing_file(tmp_path):
    p = run_cli("check", "-c", str(tmp_path / "absent.yaml"))
    assert p.returncode != 0


@pytest.mark.parametrize("name", list(BAD))
def test_check_reports_file_and_line(tmp_path, name):
    text, words = BAD[name]
    text = text % {"port": free_port()}
    marked = {i + 1 for i, line in enumerate(text.split("\n")) if "#!" in line}
    path = tmp_path / ("%s.yaml" % name)
    path.write_text(text)
    p = run_cli("check", "-c", str(path))
    out = (p.stderr + p.stdout).decode(errors="replace")
    assert p.returncode != 0, "check accepted a bad config:\n%s\n%s" % (text, out)
    located = re.findall(r"^%s:(\d+): (.*)$" % re.escape(str(path)), out, re.M)
    assert located, "no '%s:LINE:' message in:\n%s" % (path, out)
    good = [(int(n), msg) for n, msg in located if int(n) in marked]
    assert good, "messages name lines %s, want one of %s:\n%s" % (
        [n for n, _ in located], sorted(marked), out)
    assert any(all(w in msg for w in words) for _, msg in good), (
        "no message at the right line names %r:\n%s" % (words, out))


def test_run_with_bad_config_exits_without_listening(tmp_path):
    port = free_port()
    path = tmp_path / "bad.yaml"
    path.write_text(BAD["unknown_upstream_key"][0] % {"port": port})
    proc = subprocess.Popen([str(BINARY), "-c", str(path)], cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    accepted = False
    try:
        deadline = time.monotonic() + 5.0
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                accepted = True
            except OSError:
                pass
            time.sleep(0.02)
        assert proc.poll() is not None, "`passerelle -c bad.yaml` still running after 5 s"
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=5)
    assert proc.returncode != 0, "exit status 0 with an invalid config"
    assert not accepted, "the gateway listened with an invalid config"
    assert re.search(r"%s:\d+: " % re.escape(str(path)), (err + out).decode(errors="replace"))


# ---- the access log ----

@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    def build():
        app = Upstream("app")
        down = RefusingPort()
        cfg = config(
            listeners=[listener("public")],
            timeouts={"header": "1s", "body": "1s", "keepalive": "3s", "send": "2s"},
            upstreams={"app": {"targets": [app.address], "connect_timeout": "300ms",
                               "read_timeout": "3s", "retries": 0},
                       "down": {"targets": [down.address], "connect_timeout": "300ms",
                                "read_timeout": "3s", "retries": 0}},
            routes=[{"name": "app", "listeners": ["public"], "match": {"path": "/app/"},
                     "upstream": "app"},
                    {"name": "down", "listeners": ["public"], "match": {"path": "/down/"},
                     "upstream": "down"}])
        return cfg, {"app": app, "down": down}
    return module_env(request, tmp_path_factory, build)


def roundtrip(env, data, method="GET"):
    with Client(env.port) as c:
        c.send(data)
        return c.read_response(method)


def entry_for(env, resp):
    rid = resp.header("x-request-id")
    assert rid, "no X-Request-Id in %r" % resp
    e = env.gw.access_for(rid)
    missing = [f for f in FIELDS if f not in e]
    assert not missing, "access-log line lacks %s: %r" % (missing, e)
    return e


def assert_times(e):
    assert TIME_RE.match(e["time"]), e["time"]
    t = datetime.datetime.strptime(e["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc)
    age = (datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()
    assert -5 < age < 60, "time %s is %.1f s away from now" % (e["time"], age)
    assert isinstance(e["total_ms"], (int, float)) and e["total_ms"] >= 0, e
    assert isinstance(e["upstream_ms"], (int, float)) and 0 <= e["upstream_ms"] <= e["total_ms"]


def test_access_log_proxied_request(env):
    sent = build_request("GET", "/app/x")
    r = roundtrip(env, sent)
    assert r.status == 200
    e = entry_for(env, r)
    assert_times(e)
    assert e["request_id"] == r.header("x-request-id")
    assert (e["listener"], e["route"], e["client"], e["method"], e["path"]) == (
        "public", "app", "127.0.0.1", "GET", "/app/x"), e
    assert (e["status"], e["upstream"], e["upstream_status"], e["retries"], e["termination"]) == (
        200, env.app.address, 200, 0, "ok"), e
    assert e["bytes_in"] == len(sent), (e["bytes_in"], len(sent))
    assert e["bytes_out"] == len(r.raw), (e["bytes_out"], len(r.raw))
    assert e["upstream_ms"] > 0, e


def test_access_log_request_body_and_client_id(env):
    body = b"b" * 1000
    sent = build_request("POST", "/app/p?echo=1", body=body,
                         headers=[("X-Request-Id", "client-id-7")])
    r = roundtrip(env, sent)
    assert r.status == 200 and r.header("x-request-id") == "client-id-7", r
    e = entry_for(env, r)
    assert e["request_id"] == "client-id-7"
    assert (e["method"], e["path"], e["status"]) == ("POST", "/app/p", 200), e
    assert e["bytes_in"] == len(sent) and e["bytes_out"] == len(r.raw), e


def test_access_log_404(env):
    sent = build_request("GET", "/nowhere")
    r = roundtrip(env, sent)
    assert r.status == 404
    e = entry_for(env, r)
    assert_times(e)
    assert (e["route"], e["path"], e["status"], e["upstream"], e["upstream_status"],
            e["retries"], e["termination"]) == ("", "/nowhere", 404, "", 0, 0, "no_route"), e
    assert e["bytes_in"] == len(sent) and e["bytes_out"] == len(r.raw), e


def test_access_log_502_refused_and_error_log(env):
    mark = env.gw.error_mark()
    r = roundtrip(env, build_request("GET", "/down/x"))
    assert r.status == 502
    e = entry_for(env, r)
    assert_times(e)
    assert (e["route"], e["status"], e["upstream"], e["upstream_status"], e["termination"]) == (
        "down", 502, env.down.address, 0, "upstream_refused"), e
    # the error log says which upstream failed, at warn or error level
    deadline = time.monotonic() + 2.0
    while True:
        lines = [l for l in env.gw.error_lines()[mark:]
                 if ("[warn]" in l or "[error]" in l)
                 and (env.down.address in l or "down" in l)]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines, "no [warn]/[error] line naming the upstream; log since:\n%s" % "\n".join(
        env.gw.error_lines()[mark:])


def test_access_log_408(env):
    partial = b"GET /app/late HTTP/1.1\r\nHost: a\r\n"
    with Client(env.port) as c:
        c.send(partial)
        r = c.read_response(timeout=4.0)
        assert r.status == 408, r
    e = entry_for(env, r)
    assert_times(e)
    assert (e["status"], e["termination"], e["upstream"]) == (408, "client_timeout", ""), e
    assert e["bytes_in"] == len(partial), e
    assert e["total_ms"] < 3000, e


def test_access_log_client_closed_mid_response(env):
    size = 5000000
    c = Client(env.port)
    c.request("GET", "/app/big?size=%d&slow=100" % size)  # 10 pieces, 100 ms apart
    head = c.reader.read_until(b"\r\n\r\n", time.monotonic() + 5.0)
    rid = re.search(rb"\r\nX-Request-Id: ([^\r]+)\r\n", head, re.I).group(1).decode()
    c.close()
    e = env.gw.access_for(rid, timeout=5.0)
    assert e["termination"] in ("client_closed", "client_reset"), e
    assert e["status"] in (200, 0) and e["upstream_status"] == 200, e
    assert e["bytes_out"] < size, e
    env.gw.assert_alive()


def test_error_log_format(env):
    lines = env.gw.error_lines()
    assert lines, "empty error log"
    bad = [l for l in lines if not gwmod.ERROR_LINE_RE.match(l)]
    assert not bad, "error-log lines not in the documented format:\n%s" % "\n".join(bad[:10])


def flush_gateway(tmp_path, flush):
    up = Upstream("app")
    cfg = config(listeners=[listener("public")],
                 upstreams={"app": {"targets": [up.address], "retries": 0}},
                 routes=[{"name": "app", "listeners": ["public"], "match": {"path": "/"},
                          "upstream": "app"}])
    if flush is not None:
        cfg["access_log"] = {"path": str(tmp_path / "gw" / "access.log"), "flush": flush}
    return gwmod.Gateway(cfg, tmp_path / "gw"), up


@pytest.mark.parametrize("flush", [None, "0", "200ms"])
def test_access_log_flush_writes_lines(tmp_path, flush):
    """The default 1 s, `flush: 0` (each line at once) and a short interval all get the line
    to the file without another request or a stop."""
    g, up = flush_gateway(tmp_path, flush)
    try:
        r = gwmod.get_ok(g.port, "/a")
        g.access_for(r.header("x-request-id"), timeout=3.0)
    finally:
        g.stop()
        up.stop()


def test_access_log_flush_interval_buffers_lines_until_it_passes(tmp_path):
    """With `flush: 30s`, a line waits in the worker's buffer (checked 1.5 s later, past the
    default interval), and a graceful stop writes it; a reload to `flush: 0` takes effect for
    the lines after it."""
    g, up = flush_gateway(tmp_path, "30s")
    try:
        rid = gwmod.get_ok(g.port, "/buffered").header("x-request-id")
        time.sleep(1.5)
        assert not [e for e in g.access_entries() if e.get("request_id") == rid], (
            "the line was written before the 30 s flush interval")
        g.cfg["access_log"]["flush"] = "0"
        cp = g.reload(g.cfg)
        assert cp.returncode == 0, cp.stderr
        rid2 = gwmod.get_ok(g.port, "/at-once").header("x-request-id")
        g.access_for(rid2, timeout=3.0)
        g.access_for(rid, timeout=0.1)  # written before it, with it
    finally:
        status = g.stop()
        up.stop()
    assert status == 0, status


def test_access_log_stop_writes_buffered_lines(tmp_path):
    g, up = flush_gateway(tmp_path, "60s")
    try:
        rid = gwmod.get_ok(g.port, "/x").header("x-request-id")
    finally:
        status = g.stop()
        up.stop()
    assert status == 0, status
    assert [e for e in g.access_entries() if e.get("request_id") == rid], (
        "the buffered line was lost at stop")


def test_access_log_off(tmp_path):
    up = Upstream("app")
    default_log = REPO / "logs" / "access.log"
    before = default_log.stat() if default_log.exists() else None
    g = gwmod.Gateway(config(
        listeners=[listener("public")],
        upstreams={"app": {"targets": [up.address], "retries": 0}},
        routes=[{"name": "app", "listeners": ["public"], "match": {"path": "/"},
                 "upstream": "app"}],
        access_log=Raw("off")), tmp_path / "gw")
    try:
        for target in ("/a", "/b"):
            r = gwmod.get_ok(g.port, target)
            assert r.status == 200
        time.sleep(1.3)  # past the access log's flush interval
        assert g.alive()
    finally:
        status = g.stop()
        up.stop()
    assert status == 0, status
    assert not (tmp_path / "gw" / "access.log").exists()
    after = default_log.stat() if default_log.exists() else None
    assert (before and (before.st_size, before.st_mtime)) == (after and (after.st_size,
                                                                          after.st_mtime)), (
        "logs/access.log was written with access_log: off")
    for out in ("stdout.log", "stderr.log"):
        text = (tmp_path / "gw" / out).read_text(errors="replace")
        assert '"request_id"' not in text, "access-log lines on %s: %r" % (out, text[:300])
    assert '"request_id"' not in g.error_text()


# ---- SIGTERM ----

@pytest.mark.parametrize("held", ["none", "idle_keepalive", "silent"])
def test_sigterm_stops_within_5s_with_status_0(tmp_path, held):
    """<held>: no client connection; one idle between keep-alive requests; one that never sent a
    byte. None of them carries a request: nothing to wait for."""
    up = Upstream("app")
    g = gwmod.Gateway(config(
        listeners=[listener("public")],
        timeouts={"header": "60s", "keepalive": "60s"},
        upstreams={"app": {"targets": [up.address], "retries": 0}},
        routes=[{"name": "app", "listeners": ["public"], "match": {"path": "/"},
                 "upstream": "app"}]), tmp_path / "gw")
    client = None
    try:
        r = gwmod.get_ok(g.port, "/before")
        assert r.status == 200
        if held != "none":
            client = Client(g.port)
            if held == "idle_keepalive":
                client.request("GET", "/idle")
                assert client.read_response().status == 200
            time.sleep(0.1)
        t0 = time.monotonic()
        g.proc.send_signal(signal.SIGTERM)
        try:
            status = g.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            pytest.fail("gateway still running 5 s after SIGTERM")
        assert status == 0, "exit status %s after SIGTERM" % status
        assert time.monotonic() - t0 < 5.0
        if client is not None:
            assert client.wait_closed(1.0)
        try:
            socket.create_connection(("127.0.0.1", g.port), timeout=0.5).close()
            pytest.fail("still accepting connections after exit")
        except OSError:
            pass
    finally:
        if client is not None:
            client.close()
        g.stop()
        up.stop()
    bad = [l for l in g.error_lines() if not gwmod.ERROR_LINE_RE.match(l)]
    assert not bad, bad
    assert not g.errors_since(0), g.errors_since(0)
