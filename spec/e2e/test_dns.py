"""Upstream host names: resolved without blocking through the configured name servers, re-resolved
when the TTL expires (new connections go to the new address and pooled ones to the old address are
dropped), and a name that does not resolve answers 502 with a log line."""
import time

import pytest

from dnsstub import DnsStub
from gw import Client, build_request, config, listener
from stubs import Upstream


def twin_stubs():
    """Two stubs on the same port, on 127.0.0.1 and 127.0.0.2 (a moved service)."""
    for _ in range(20):
        b = Upstream("new", host="127.0.0.2")
        try:
            a = Upstream("old", host="127.0.0.1", port=b.port)
            return a, b
        except OSError:
            b.stop()
    raise RuntimeError("no common free port on 127.0.0.1 and 127.0.0.2")


@pytest.fixture
def dns():
    d = DnsStub()
    yield d
    d.stop()


def get(gw, target="/x"):
    with Client(gw.port) as c:
        c.send(build_request("GET", target))
        return c.read_response()


def gw_config(dns, port, name="svc.test", keepalive=16):
    return config(
        listeners=[listener("public")],
        resolver={"nameservers": [dns.address], "timeout": "500ms"},
        upstreams={"svc": {"targets": ["%s:%d" % (name, port)], "connect_timeout": "500ms",
                           "read_timeout": "2s", "retries": 0, "keepalive": keepalive}},
        routes=[{"name": "all", "listeners": ["public"], "match": {"path": "/"},
                 "upstream": "svc"}])


def test_name_resolved_and_re_resolved_after_ttl(make_gateway, dns):
    old, new = twin_stubs()
    try:
        dns.set("svc.test", "127.0.0.1", ttl=1)
        gw = make_gateway(gw_config(dns, old.port))
        for _ in range(3):
            r = get(gw)
            assert r.status == 200 and r.header("x-stub") == "old", r
        assert dns.count("svc.test") == 1, "resolved once while the TTL holds"
        dns.set("svc.test", "127.0.0.2", ttl=1)
        deadline = time.monotonic() + 6
        seen = []
        while time.monotonic() < deadline:
            r = get(gw)
            assert r.status == 200, r
            seen.append(r.header("x-stub"))
            if seen[-3:] == ["new"] * 3:
                break
            time.sleep(0.2)
        assert seen[-3:] == ["new"] * 3, "never moved to the new address: %r" % seen
        assert dns.count("svc.test") >= 2
        assert "[error]" not in gw.error_text()
    finally:
        old.stop()
        new.stop()


def test_unresolvable_name_is_502(make_gateway, dns):
    up = Upstream("up")
    try:
        gw = make_gateway(gw_config(dns, up.port, name="missing.test"))
        for _ in range(2):
            r = get(gw)
            assert r.status == 502, r
        assert up.connections == 0
        assert "cannot resolve missing.test" in gw.error_text()
    finally:
        up.stop()


def test_resolver_must_be_ip_literal(tmp_path):
    import subprocess
    from gw import BINARY, to_yaml
    cfg = config(listeners=[listener("public")], resolver={"nameservers": ["dns.example:53"]})
    p = tmp_path / "r.yaml"
    p.write_text(to_yaml(cfg) + "\n")
    r = subprocess.run([str(BINARY), "check", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode != 0 and "r.yaml:" in r.stderr and "nameservers" in r.stderr, r.stderr
