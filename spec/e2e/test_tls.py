"""TLS end to end (docs/tls.md): ./passerelle with TLS listeners, TLS upstreams and pgw.http over
HTTPS, against python's ssl module, `openssl s_client` and HTTPS stub upstreams. Certificates are
made once per session by spec/support/tlsfix.py (a root CA, an intermediate, a client CA, a
rogue CA; RSA and ECDSA leaves).

- Listener certificates: chosen by SNI (exact, wildcard of one label, CN when there is no SAN,
  the first one as default), unknown_sni reject, RSA or ECDSA by what the client supports, the
  whole chain sent.
- Protocols and suites: TLS 1.2 and 1.3 only, `protocols: [TLSv1.3]`, ALPN http/1.1 only, the
  server's suite order, forbidden suites removed.
- Session tickets shared by the workers; `session_tickets: false`; new keys at restart.
- Hostile clients: a stalled handshake (handshake_timeout), plain HTTP on a TLS port (400,
  plain_http_on_tls), garbage and mutated ClientHellos (closed, the worker survives, the log
  stays rate-limited).
- Truncation: an HTTPS upstream that closes without close_notify aborts a close-delimited
  response (upstream_truncated); with close_notify it completes.
- Reload: new certificates for new handshakes, established connections and downloads go on; a
  bad certificate refuses the reload and keeps the old one.
- https_only (308 / 426), upstreams over TLS (CA, name, server_name, verify: false, mTLS,
  pooling, retries), pgw.http over HTTPS, client certificates (required, optional, get_tls),
  access-log tls fields, `passerelle check` on bad tls settings, sslscan when installed.
"""
import random
import re
import selectors
import shutil
import socket
import ssl
import subprocess
import time
from collections import Counter

import pytest

import tlsfix
from gw import BINARY, REPO, Client, config, listener, socket_owner, to_yaml, wait_for
from httpio import Closed, pattern_body
from policyfix import LUA_COPY, no_worker_crash, track, write_policies  # noqa: F401
from tlsfix import TLSClient, handshake_error, https_get, s_client

API = "api.example.com"


# ---- fixtures and helpers ----

@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return tlsfix.CertStore.create(tmp_path_factory.mktemp("tls-certs"))


@pytest.fixture
def https_stub(certs):
    """Factory of tlsfix.HTTPSUpstream stubs (stopped at the end of the test):
    https_stub(name, cert="localhost", client_ca=None, **Upstream kwargs)."""
    made = []

    def make(name="tls", cert="localhost", client_ca=None, **kw):
        s = tlsfix.HTTPSUpstream(name, certs.cert(cert), certs.key(cert),
                                 client_ca=certs.cert(client_ca) if client_ca else None, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def tls_listener(certs, names, name="public", port=None, **tls):
    """A listener with a tls section serving the certificates <names> (the first is the
    default); <tls> adds other keys (unknown_sni, protocols, ...)."""
    l = listener(name, port)
    l["tls"] = dict({"certificates": [certs.pair(n) for n in names]}, **tls)
    return l


def start(make_gateway, stub, listeners, routes=None, upstreams=None, **extra):
    """A gateway with <listeners>, upstream "a" = <stub> and a route "/" to it on every
    listener (unless <routes>)."""
    ups = {"a": {"targets": [stub.address], "retries": 0}}
    ups.update(upstreams or {})
    names = [l["name"] for l in listeners]
    routes = routes or [{"name": "all", "listeners": names, "match": {"path": "/"},
                         "upstream": "a"}]
    g = make_gateway(config(listeners=listeners, upstreams=ups, routes=routes, **extra))
    track(g)
    return g


def presented(port, sni, certs, **kw):
    """The name (in certs) of the certificate the gateway presents to a client sending <sni>;
    a request is made on the connection and must succeed."""
    with TLSClient(port, sni=sni, **kw) as c:
        r = c.get("/")
        assert r.status == 200, (sni, r)
        return certs.name_of(c.peer_der)


def alert_text(err):
    """An SSL error's text, upper case, with _ as spaces (OpenSSL spells alerts both ways)."""
    return re.sub(r"[\s_]+", " ", str(err).upper())


def wait_log(g, pattern, mark=0, timeout=3.0):
    rx = re.compile(pattern)
    return wait_for(lambda: [l for l in g.error_lines()[mark:] if rx.search(l)], timeout,
                    "error-log line matching %r (last lines: %r)" % (pattern,
                                                                      g.error_lines()[-5:]))[0]


def plain_get(port, target="/", **kw):
    with Client(port) as c:
        c.request(target=target, **kw)
        return c.read_response(kw.get("method", "GET"))


def check_config(tmp_path, cfg, name="check.yaml"):
    """`passerelle check -c FILE` on <cfg> (a dict); returns the CompletedProcess."""
    path = tmp_path / name
    path.write_text(to_yaml(cfg) + "\n")
    return subprocess.run([str(BINARY), "check", "-c", str(path)], cwd=str(REPO),
                          capture_output=True, text=True, timeout=20)


def fire(port, payloads, half_close, timeout=5.0):
    """Opens one connection per payload (all at once), sends it (then shuts the write side when
    <half_close>), and waits until the gateway closes each. Returns [(closed, bytes received)]
    in payload order; closed is False for a connection still open at the deadline."""
    sel = selectors.DefaultSelector()
    socks = []
    for i, data in enumerate(payloads):
        s = socket.create_connection(("127.0.0.1", port), timeout=2.0)
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        s.setblocking(False)
        socks.append([s, False, bytearray()])
        sel.register(s, selectors.EVENT_READ, i)
    deadline = time.monotonic() + timeout
    pending = len(socks)
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
            entry = socks[key.data]
            try:
                data = entry[0].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                entry[2] += data
            else:
                entry[1] = True
                sel.unregister(entry[0])
                pending -= 1
    for s, _, _ in socks:
        s.close()
    sel.close()
    return [(closed, bytes(got)) for _, closed, got in socks]


def mutated_hellos(hello, n, seed):
    """<n> damaged copies of a real ClientHello: bytes flipped, truncated, record/handshake/
    cipher-suite/extension lengths set to wrong values (fixed seed)."""
    rng = random.Random(seed)
    out = []
    # offsets in a TLS 1.x ClientHello record: 3-4 record length, 6-8 handshake length,
    # 43 session id length, then cipher suites length, ...
    sid_len = hello[43]
    cs_off = 44 + sid_len
    cs_len = int.from_bytes(hello[cs_off:cs_off + 2], "big")
    comp_off = cs_off + 2 + cs_len
    ext_off = comp_off + 1 + hello[comp_off]
    length_fields = [(3, 2), (6, 3), (43, 1), (cs_off, 2), (comp_off, 1), (ext_off, 2)]
    for i in range(n):
        b = bytearray(hello)
        kind = i % 4
        if kind == 0:      # flip a few bytes anywhere
            for _ in range(rng.randint(1, 6)):
                b[rng.randrange(len(b))] ^= rng.randint(1, 255)
        elif kind == 1:    # truncate
            b = b[: rng.randrange(1, len(b))]
        elif kind == 2:    # a length field set to a wrong value
            off, size = rng.choice(length_fields)
            v = rng.choice([0, 1, (1 << (8 * size)) - 1, rng.randrange(1 << (8 * size))])
            b[off:off + size] = v.to_bytes(size, "big")
        else:              # flip bytes in the first 60 (headers, random, session id)
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(min(60, len(b)))] ^= rng.randint(1, 255)
        out.append(bytes(b))
    return out


# ---- 1. certificate selection ----

SNI_CERTS = ["default", "api", "api_ecdsa", "wildcard", "www_net", "cn_only"]


def test_sni_selects_exact_wildcard_cn_or_default(make_gateway, make_stub, certs):
    """Each SNI gets the certificate that covers it: an exact name, a wildcard of exactly one
    label (an exact name winning even when listed after the wildcard), a CN when there is no
    SAN; anything else, and no SNI at all, gets the first certificate (unknown_sni: default)."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, SNI_CERTS, unknown_sni="default")])
    port = g.ports["public"]
    cases = [
        (API, {"api", "api_ecdsa"}),
        ("a.example.net", {"wildcard"}),
        ("zz-9.example.net", {"wildcard"}),
        ("www.example.net", {"www_net"}),          # exact beats *.example.net
        ("legacy.example.org", {"cn_only"}),        # no SAN: the CN
        ("default.example.org", {"default"}),
        ("a.b.example.net", {"default"}),           # a wildcard covers one label only
        ("example.net", {"default"}),
        ("unknown.test", {"default"}),
        (None, {"default"}),
    ]
    for sni, want in cases:
        got = presented(port, sni, certs)
        assert got in want, "SNI %r: got certificate %r, want %s" % (sni, got, sorted(want))


def test_unknown_sni_reject(make_gateway, make_stub, certs):
    """unknown_sni: reject ends the handshake with an unrecognized_name alert for a name no
    certificate covers and for a client without SNI; covered names are served."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api", "wildcard"],
                                                unknown_sni="reject")])
    port = g.ports["public"]
    assert presented(port, API, certs) == "api"
    assert presented(port, "x.example.net", certs) == "wildcard"
    for sni in ("unknown.test", "a.b.example.net", "example.net", None):
        err = handshake_error(port, sni=sni)
        assert err is not None, "SNI %r: served with unknown_sni: reject" % sni
        assert "UNRECOGNIZED NAME" in alert_text(err), (
            "SNI %r: want an unrecognized_name alert, got %r" % (sni, err))
    assert [q.target for q in stub.requests] == ["/", "/"]   # the two served above


@pytest.mark.parametrize("order", ["rsa_first", "ecdsa_first"])
def test_rsa_and_ecdsa_certificates_for_one_name(make_gateway, make_stub, certs, order):
    """With an RSA and an ECDSA certificate for the same name, a client that only supports
    ECDSA gets the ECDSA one and a client that only supports RSA gets the RSA one, whatever
    their order in the list: TLS 1.2 with a single suite, TLS 1.3 with a single signature
    algorithm (s_client -sigalgs)."""
    names = ["api", "api_ecdsa"] if order == "rsa_first" else ["api_ecdsa", "api"]
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, names)])
    port = g.ports["public"]
    ecdsa = presented(port, API, certs, max_version="TLSv1.2",
                      ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    rsa = presented(port, API, certs, max_version="TLSv1.2",
                    ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    assert (ecdsa, rsa) == ("api_ecdsa", "api"), "TLS 1.2: ECDSA-only client got %r, " \
        "RSA-only client got %r" % (ecdsa, rsa)
    for sigalgs, want in (("ECDSA+SHA256", "api_ecdsa"), ("rsa_pss_rsae_sha256", "api")):
        sc = s_client(port, ["-tls1_3", "-sigalgs", sigalgs], sni=API)
        assert sc.completed, sc
        assert sc.certs and certs.name_of(sc.certs[0]) == want, (
            "TLS 1.3 with sigalgs %s: got %r, want %s" % (
                sigalgs, certs.name_of(sc.certs[0]) if sc.certs else None, want))


# ---- 2. chain ----

def test_whole_chain_is_sent(make_gateway, make_stub, certs):
    """A leaf signed by an intermediate, its file holding leaf then intermediate: a client
    that trusts only the root verifies it (so the intermediate was sent), and s_client
    -showcerts sees both certificates in order."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["chain"])])
    port = g.ports["public"]
    with TLSClient(port, sni="chain.example.com", ca=certs.cert("ca"),
                   check_hostname=True) as c:
        assert c.get("/").status == 200
        assert certs.name_of(c.peer_der) == "chain"
    sc = s_client(port, ["-showcerts", "-CAfile", certs.cert("ca"), "-verify_return_error"],
                  sni="chain.example.com")
    assert sc.completed, sc
    assert [certs.name_of(d) for d in sc.certs] == ["chain", "inter"], sc
    assert "Verify return code: 0 (ok)" in sc.out, sc


# ---- 3. protocols, suites, ALPN ----

def test_tls12_and_tls13_only(make_gateway, make_stub, certs):
    """TLS 1.2 and 1.3 complete; TLS 1.0 and 1.1 never complete a handshake (python and
    s_client, with OpenSSL's security level lowered so that the client offers them), and the
    failure is logged at info with OpenSSL's reason."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api"])])
    port = g.ports["public"]
    for ver in ("TLSv1.2", "TLSv1.3"):
        with TLSClient(port, sni=API, min_version=ver, max_version=ver) as c:
            assert c.version == ver
            assert c.get("/").status == 200
    mark = g.error_mark()
    for ver in ("TLSv1", "TLSv1.1"):
        err = handshake_error(port, sni=API, min_version=ver, max_version=ver)
        assert err is not None, "%s handshake completed" % ver
    # logged at info with OpenSSL's reason (once: at most one line per second per worker)
    wait_log(g, r"\[info\] .*unsupported protocol", mark)
    for flag in ("-tls1", "-tls1_1"):
        sc = s_client(port, [flag, "-cipher", "DEFAULT:@SECLEVEL=0"], sni=API)
        assert not sc.completed, "%s completed a handshake: %r" % (flag, sc)
    assert stub.requests and all(r.path == "/" for r in stub.requests)
    g.assert_alive()


def test_protocols_tls13_only(make_gateway, make_stub, certs):
    """protocols: [TLSv1.3] refuses a TLS 1.2 client."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api"], protocols=["TLSv1.3"])])
    port = g.ports["public"]
    with TLSClient(port, sni=API) as c:
        assert c.version == "TLSv1.3"
        assert c.get("/").status == 200
    err = handshake_error(port, sni=API, max_version="TLSv1.2")
    assert err is not None, "a TLS 1.2 client was served by a [TLSv1.3] listener"
    sc = s_client(port, ["-tls1_2"], sni=API)
    assert not sc.completed, sc


def test_alpn_offers_http11_only(make_gateway, make_stub, certs):
    """ALPN: http/1.1 is selected when offered; a client offering only h2 never gets h2 (the
    handshake fails with no_application_protocol, or nothing is selected); no ALPN is fine."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api"])])
    port = g.ports["public"]
    for offer in (["http/1.1"], ["h2", "http/1.1"]):
        with TLSClient(port, sni=API, alpn=offer) as c:
            assert c.alpn == "http/1.1", (offer, c.alpn)
            assert c.get("/").status == 200
    with TLSClient(port, sni=API) as c:
        assert c.alpn is None
        assert c.get("/").status == 200
    try:
        c = TLSClient(port, sni=API, alpn=["h2"])
    except (ssl.SSLError, OSError) as e:
        assert "NO APPLICATION PROTOCOL" in alert_text(e), e
    else:
        with c:
            assert c.alpn != "h2", "h2 selected by a gateway that speaks only HTTP/1.1"


def test_tls12_suites_server_order_and_forbidden_suites(make_gateway, make_stub, certs):
    """TLS 1.2: the server's order wins (the default list prefers AES-GCM over ChaCha20 even
    when the client lists ChaCha20 first), and 3DES/RC4/NULL/anonymous suites are removed from
    a configured list."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [
        tls_listener(certs, ["api"]),
        tls_listener(certs, ["api"], name="weak",
                     ciphers="ECDHE+AESGCM:3DES:RC4:NULL:aNULL:eNULL:EXPORT")])
    port = g.ports["public"]
    with TLSClient(port, sni=API, max_version="TLSv1.2",
                   ciphers="ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256") as c:
        assert c.cipher == "ECDHE-RSA-AES128-GCM-SHA256", (
            "client order won over the server's: %s" % c.cipher)
    weak = g.ports["weak"]
    with TLSClient(weak, sni=API, max_version="TLSv1.2") as c:
        assert "GCM" in c.cipher, c.cipher
    tried = []
    for suite in ("DES-CBC3-SHA", "ECDHE-RSA-DES-CBC3-SHA", "AECDH-AES128-SHA",
                  "ADH-AES128-GCM-SHA256", "NULL-SHA256", "ECDHE-RSA-NULL-SHA", "RC4-SHA"):
        try:   # only the suites this OpenSSL can still offer
            tlsfix.make_context(max_version="TLSv1.2", ciphers=suite + ":@SECLEVEL=0")
        except ssl.SSLError:
            continue
        tried.append(suite)
        err = handshake_error(weak, sni=API, max_version="TLSv1.2",
                              ciphers=suite + ":@SECLEVEL=0")
        assert err is not None, "forbidden suite %s negotiated" % suite
    assert tried, "the client could offer none of the forbidden suites"


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_records_are_up_to_16k_not_one_per_small_buffer(make_gateway, make_stub, certs,
                                                        version):
    """A 300,000-byte download arrives in application-data records of at most 16 KiB (plus
    the cipher's overhead), and not many more of them than 16 KiB records would need."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api"])])
    size = 300000
    plain, records = tlsfix.records_of_response(
        g.ports["public"], b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size, sni=API,
        max_version=version)
    assert plain.endswith(pattern_body(size)), "download incomplete (%d bytes)" % len(plain)
    app = [n for kind, n in records if kind == 23]
    assert max(app) <= 16384 + 256, "a record of %d bytes" % max(app)
    assert len(app) <= (size // 16384 + 1) * 3 // 2 + 10, (
        "%d application-data records for %d bytes (sizes: %s)" % (len(app), size, app))


# ---- 4. session resumption ----

def resume_many(g, port, first, n):
    """<n> connections resuming <first>'s session; returns {worker pid: count} of those that
    resumed and the list of those that did not."""
    owners = Counter()
    failed = []
    pids = g.worker_pids()
    for i in range(n):
        with TLSClient(port, sni=API, resume=first) as c:
            owner = socket_owner(port, c.local_port, pids)
            assert c.get("/r%d" % i).status == 200
            if c.session_reused:
                owners[owner] += 1
            else:
                failed.append(i)
    return owners, failed


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_session_tickets_resume_on_any_worker(make_gateway, make_stub, certs, version):
    """With two workers, 30 connections resuming the first connection's session all resume,
    whichever worker accepts them (the master gives every worker the same ticket keys)."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api"])], workers=2)
    pids = g.wait_workers(2)
    port = g.ports["public"]
    with TLSClient(port, sni=API, max_version=version) as first:
        assert not first.session_reused
        assert first.get("/first").status == 200
        first_owner = socket_owner(port, first.local_port, pids)
    owners, failed = resume_many(g, port, first, 30)
    assert not failed, "connections %s (of 30) did not resume a %s session; resumed on %r " \
        "(first handshake on %s)" % (failed, version, dict(owners), first_owner)
    assert set(owners) <= set(pids), owners
    if len(owners) == 2:
        return   # resumed on both workers: the keys are shared
    # the kernel gave them all to one worker: look for the other one explicitly
    other = [p for p in pids if p not in owners]
    for i in range(60):
        with TLSClient(port, sni=API, resume=first) as c:
            owner = socket_owner(port, c.local_port, pids)
            assert c.get("/x%d" % i).status == 200
            assert c.session_reused, "connection %d on worker %s did not resume" % (i, owner)
            if owner in other:
                return
    pytest.skip("every connection went to worker %s; the other worker's resumption was not "
                "exercised" % list(owners))


def test_tls13_resumed_handshakes_get_a_new_ticket(make_gateway, make_stub, certs):
    """A client that resumes with the newest ticket it holds (as wrk, or a browser using each
    TLS 1.3 ticket once) resumes every time: a resumed handshake gets a new ticket. Without it,
    every other connection fell back to a full handshake."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api"])])
    port = g.ports["public"]
    prev = TLSClient(port, sni=API, max_version="TLSv1.3")
    assert prev.get("/0").status == 200
    resumed, renewed = [], []
    for i in range(1, 7):
        used = prev.session
        c = TLSClient(port, sni=API, resume=prev)
        assert c.get("/%d" % i).status == 200
        resumed.append(c.session_reused)
        renewed.append(c.session is not None and c.session.id != used.id)  # a new ticket came
        prev.close()
        prev = c  # the next one resumes this connection's (new) session
    prev.close()
    assert resumed == [True] * 6, resumed
    assert renewed == [True] * 6, "resumed handshakes without a new ticket: %r" % renewed
    lines = g.wait_access(lambda e: "tls_resumed" in e, count=7)
    assert sorted(l["path"] for l in lines) == ["/%d" % i for i in range(7)], lines
    assert [l["tls_resumed"] for l in sorted(lines, key=lambda l: l["path"])] == \
        [False] + [True] * 6, lines


def test_session_tickets_false_turns_resumption_off(make_gateway, make_stub, certs):
    """session_tickets: false: a client offering its previous session never resumes, with
    TLS 1.3 or 1.2 (no session-ID cache either)."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api"], session_tickets=False)],
              workers=2)
    g.wait_workers(2)
    port = g.ports["public"]
    for version in ("TLSv1.3", "TLSv1.2"):
        with TLSClient(port, sni=API, max_version=version) as first:
            assert first.get("/").status == 200
        for i in range(5):
            with TLSClient(port, sni=API, resume=first) as c:
                assert c.get("/").status == 200
                assert not c.session_reused, "%s session resumed with session_tickets: false" \
                    % version


def test_restart_makes_new_ticket_keys(make_gateway, make_stub, certs):
    """Ticket keys live in memory only: after a restart a session from before does not
    resume (and the connection is served with a full handshake)."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api"])])
    port = g.ports["public"]
    with TLSClient(port, sni=API) as first:
        assert first.get("/").status == 200
    with TLSClient(port, sni=API, resume=first) as c:
        assert c.get("/").status == 200 and c.session_reused
    g.stop()
    g.start()
    with TLSClient(port, sni=API, resume=first) as c:
        assert c.get("/").status == 200
        assert not c.session_reused, "a ticket from before the restart was accepted"


# ---- 5. handshake timeout ----

def test_stalled_handshake_is_closed_after_handshake_timeout(make_gateway, make_stub, certs):
    """handshake_timeout: 1s: a client that sent half a ClientHello, and one that sent nothing,
    are closed about a second later; meanwhile the (only) worker serves another client."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api"], handshake_timeout="1s")])
    port = g.ports["public"]
    hello = tlsfix.client_hello(API)
    half = Client(port)
    silent = Client(port)
    t0 = time.monotonic()
    half.send(hello[:20])
    try:
        try:
            r, c = https_get(port, "/during", sni=API)
        except Exception as e:  # noqa: BLE001
            raise AssertionError("while a handshake stalled, another client was not served "
                                 "(%r after %.1f s)" % (e, time.monotonic() - t0))
        assert r.status == 200
        assert time.monotonic() - t0 < 0.8, "the other client waited for the stalled ones"
        for what, cl in (("half a ClientHello", half), ("nothing", silent)):
            at = cl.closed_at(5.0)
            assert at is not None, "a client that sent %s is still open after 5 s" % what
            assert 0.8 <= at - t0 <= 3.0, "a client that sent %s closed after %.2f s (want " \
                "about 1 s)" % (what, at - t0)
    finally:
        half.close()
        silent.close()
    r, _ = https_get(port, "/after", sni=API)
    assert r.status == 200


# ---- 6. plain HTTP and garbage ----

def test_plain_http_on_tls_port_gets_400(make_gateway, make_stub, certs):
    """Plain HTTP sent to a TLS port: 400, the connection closes, the access log says
    plain_http_on_tls; nothing reaches the upstream."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api"])])
    port = g.ports["public"]
    with Client(port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 400, r
        assert c.wait_closed(2.0), "connection still open after the 400"
    e = g.wait_access(lambda e: e.get("termination") == "plain_http_on_tls")[0]
    assert e["status"] == 400, e
    assert stub.requests == []
    r, _ = https_get(port, "/", sni=API)
    assert r.status == 200


def test_garbage_and_mutated_client_hellos(make_gateway, make_stub, certs):
    """Random bytes that are not a handshake are closed at once; 200 damaged ClientHellos
    (flipped bytes, truncations, wrong lengths; fixed seed) are closed; the worker survives
    (same pid), serves a normal TLS request after, and logs failed handshakes at most about
    once per second."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api"], handshake_timeout="5s")])
    port = g.ports["public"]
    pids = g.wait_workers(1)
    mark = g.error_mark()
    t0 = time.monotonic()
    rng = random.Random(20261130)
    letters = set(range(0x41, 0x5B)) | set(range(0x61, 0x7B))
    garbage = []
    for _ in range(40):
        first = rng.choice([b for b in range(256) if b != 0x16 and b not in letters])
        garbage.append(bytes([first]) + bytes(rng.randrange(256)
                                              for _ in range(rng.randint(0, 600))))
    results = fire(port, garbage, half_close=False, timeout=3.0)
    still_open = [i for i, (closed, _) in enumerate(results) if not closed]
    assert not still_open, "garbage connections %s not closed within 3 s (handshake_timeout " \
        "is 5 s): not closed at once" % still_open
    hello = tlsfix.client_hello(API)
    variants = mutated_hellos(hello, 200, seed=7)
    for i in range(0, len(variants), 50):
        results = fire(port, variants[i:i + 50], half_close=True, timeout=4.0)
        still_open = [i + j for j, (closed, _) in enumerate(results) if not closed]
        assert not still_open, "mutated ClientHellos %s: connection not closed after the " \
            "client's EOF" % still_open
        for j, (_, got) in enumerate(results):
            if variants[i + j][:1] == b"\x16":   # still a handshake record: never HTTP
                assert not got.startswith(b"HTTP/"), (i + j, got[:100])
    elapsed = time.monotonic() - t0
    g.assert_alive()
    assert g.worker_pids() == pids, "worker replaced: %r -> %r" % (pids, g.worker_pids())
    r, _ = https_get(port, "/after", sni=API)
    assert r.status == 200
    tls_lines = [l for l in g.error_lines()[mark:] if re.search(r"(?i)tls|ssl|handshake", l)]
    assert len(tls_lines) <= elapsed + 3, "%d TLS log lines in %.1f s: not rate-limited:\n%s" % (
        len(tls_lines), elapsed, "\n".join(tls_lines[:10]))
    assert tls_lines, "failed handshakes are not logged"
    assert all("[info]" in l for l in tls_lines), tls_lines[:5]


# ---- 7. truncation ----

def test_upstream_close_without_close_notify_aborts_the_response(make_gateway, make_stub,
                                                                 https_stub, certs):
    """A close-delimited response from a plain upstream, or from an HTTPS upstream that ends
    with close_notify, is complete. From an HTTPS upstream that closes the TCP connection
    without close_notify, it is truncated: the client never sees a clean end (no last chunk;
    or, when close-delimited, no clean close), and the access log says upstream_truncated."""
    plain = make_stub("plain")
    tls_up = https_stub("tls")
    routes = [{"name": "p", "listeners": ["plain", "public"], "match": {"path": "/plain/"},
               "upstream": "a"},
              {"name": "t", "listeners": ["plain", "public"], "match": {"path": "/tls/"},
               "upstream": "tlsup"}]
    g = start(make_gateway, plain, [listener("plain"), tls_listener(certs, ["api"])],
              routes=routes, upstreams={"tlsup": {"targets": ["localhost:%d" % tls_up.port],
                                                  "retries": 0,
                                                  "tls": {"ca": certs.cert("ca")}}})
    size = 20000
    body = pattern_body(size)

    def fetch(target, over_tls):
        c = (TLSClient(g.ports["public"], sni=API) if over_tls
             else Client(g.ports["plain"]))
        with c:
            c.request(target=target)
            r = c.read_response(allow_incomplete=True)
            clean_end = r.complete and (r.chunked or r.header("content-length") is not None)
            if r.complete and not clean_end:   # close-delimited: how did it close?
                clean_end = (c.eof == "close_notify") if over_tls else not c.reader.reset
            return r, clean_end

    expect = []   # (request id, termination)
    for over_tls in (False, True):
        for target in ("/plain/a?eof=1&size=%d" % size, "/tls/b?eof=1&size=%d" % size):
            r, clean = fetch(target, over_tls)
            assert r.status == 200 and clean and r.body == body, (target, over_tls, r)
            expect.append((r.header("x-request-id"), "ok"))
        r, clean = fetch("/tls/c?eof=1&ragged=1&size=%d" % size, over_tls)
        assert r.status == 200, r
        assert not clean, "a response cut by a close without close_notify reached the client " \
            "as complete (%s client, %d bytes, chunked=%s)" % (
                "TLS" if over_tls else "plain", len(r.body), r.chunked)
        expect.append((r.header("x-request-id"), "upstream_truncated"))
    for rid, termination in expect:
        e = g.access_for(rid)
        assert e["termination"] == termination, e


# ---- 8. reload ----

def site_listener(g_dir, certs, name="site"):
    """A listener whose certificate files are <g_dir>/site.pem and site.key (copied from
    <name>), so that a test can swap them."""
    shutil.copy(certs.cert(name), g_dir / "site.pem")
    shutil.copy(certs.key(name), g_dir / "site.key")
    l = listener("public")
    l["tls"] = {"certificates": [{"cert": str(g_dir / "site.pem"),
                                  "key": str(g_dir / "site.key")}]}
    return l


def test_reload_new_certificate_for_new_handshakes_only(make_gateway, make_stub, certs,
                                                        tmp_path):
    """After the certificate files change and a reload, new connections get the new
    certificate, while a keep-alive connection opened before goes on (another request on it
    works) and a slow download started before completes intact."""
    stub = make_stub("a")
    d = tmp_path / "site"
    d.mkdir()
    g = start(make_gateway, stub, [site_listener(d, certs, "api")], workers=2,
              timeouts={"keepalive": "30s"})
    g.wait_workers(2)
    port = g.ports["public"]
    size = 300000
    ka = TLSClient(port, sni=API, timeout=10.0)
    dl = TLSClient(port, sni=API, timeout=10.0)
    try:
        assert certs.name_of(ka.peer_der) == "api"
        assert ka.get("/ka1").status == 200
        dl.request(target="/dl?size=%d&slow=150" % size)    # 10 pieces, ~1.5 s
        stub.wait_requests(2, 3.0)
        shutil.copy(certs.cert("api_b"), d / "site.pem")
        shutil.copy(certs.key("api_b"), d / "site.key")
        cp = g.reload()
        assert cp.returncode == 0, (cp.returncode, cp.stdout, cp.stderr)
        for i in range(6):
            assert presented(port, API, certs) == "api_b", "connection %d after the reload" % i
        r = ka.get("/ka2")
        assert r.status == 200 and not r.has_close(), r
        r = dl.read_response(timeout=10.0)
        assert r.status == 200 and r.complete and r.body == pattern_body(size), (
            "download damaged across the reload (%d bytes)" % len(r.body))
    finally:
        ka.close()
        dl.close()


# Each breaks the files in <d> and returns (the phrase the error must contain or None, the
# other names the error may give instead of listeners.public.tls.certificates[0]).

def _break_mismatch(d, certs):
    shutil.copy(certs.cert("api_b"), d / "site.pem")
    shutil.copy(certs.key("wildcard"), d / "site.key")
    return "key does not match the certificate", []


def _break_missing(d, certs):
    (d / "site.key").unlink()
    return None, [str(d / "site.key")]


def _break_garbage(d, certs):
    (d / "site.pem").write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"
                                "-----END CERTIFICATE-----\n")
    return None, [str(d / "site.pem")]


def _break_not_pem(d, certs):
    (d / "site.pem").write_bytes(certs.der("api_b"))
    return None, [str(d / "site.pem")]


def _break_encrypted(d, certs):
    shutil.copy(certs.cert("api_b"), d / "site.pem")
    shutil.copy(certs.encrypted_key("api_b"), d / "site.key")
    return None, [str(d / "site.key")]


BAD_CERTS = {"key_mismatch": _break_mismatch, "missing_file": _break_missing,
             "garbage_pem": _break_garbage, "der_not_pem": _break_not_pem,
             "encrypted_key": _break_encrypted}


@pytest.mark.parametrize("how", sorted(BAD_CERTS))
def test_reload_with_a_bad_certificate_keeps_the_old_one(make_gateway, make_stub, certs,
                                                         tmp_path, how):
    """A reload whose certificate is broken (key mismatch, missing file, garbage or DER
    instead of PEM, an encrypted key) is refused: exit status non-zero, the error names the
    certificate (listeners.public.tls.certificates[0], or the file) on stderr, in
    `passerelle status` and in the error log, and the old certificate is still served (from
    memory: the files are broken)."""
    stub = make_stub("a")
    d = tmp_path / "site"
    d.mkdir()
    g = start(make_gateway, stub, [site_listener(d, certs, "api")])
    port = g.ports["public"]
    assert presented(port, API, certs) == "api"
    mark = g.error_mark()
    phrase, files = BAD_CERTS[how](d, certs)
    cp = g.reload()
    assert cp.returncode != 0, "reload with a bad certificate (%s) accepted: %r %r" % (
        how, cp.stdout, cp.stderr)
    where = "listeners.public.tls.certificates[0]"
    names = re.compile("|".join(re.escape(n) for n in [where] + files))
    assert names.search(cp.stderr), "want %s on stderr, got %r" % (
        " or ".join([where] + files), cp.stderr)
    if phrase:
        assert "%s: %s" % (where, phrase) in cp.stderr, cp.stderr
    st = g.status()
    assert st["generation"] == 1, st
    assert st["last_reload_error"] and names.search(st["last_reload_error"]), st
    wait_log(g, names.pattern, mark)
    for _ in range(3):
        assert presented(port, API, certs) == "api"


def test_reload_with_an_expired_certificate_warns(make_gateway, make_stub, certs, tmp_path):
    """An expired certificate is loaded by a reload (refusing it would take the listener down),
    with a warn line naming it; new handshakes get it."""
    stub = make_stub("a")
    d = tmp_path / "site"
    d.mkdir()
    g = start(make_gateway, stub, [site_listener(d, certs, "api")])
    port = g.ports["public"]
    mark = g.error_mark()
    shutil.copy(certs.cert("expired"), d / "site.pem")
    shutil.copy(certs.key("expired"), d / "site.key")
    cp = g.reload()
    assert cp.returncode == 0, (cp.returncode, cp.stdout, cp.stderr)
    line = wait_log(g, r"listeners\.public\.tls\.certificates\[0\]|%s" % re.escape(
        str(d / "site.pem")), mark)
    assert "[warn]" in line, line
    assert presented(port, API, certs) == "expired"


def test_reload_keeps_session_resumption(make_gateway, make_stub, certs):
    """Ticket keys are not part of a generation: a session from before a reload resumes after
    it (docs/operations.md), on either worker."""
    stub = make_stub("a")
    listeners = [tls_listener(certs, ["api"])]
    g = start(make_gateway, stub, listeners, workers=2)
    g.wait_workers(2)
    port = g.ports["public"]
    with TLSClient(port, sni=API) as first:
        assert first.get("/").status == 200
    routes = [{"name": "all", "listeners": ["public"], "match": {"path": "/"}, "upstream": "a"},
              {"name": "extra", "listeners": ["public"], "match": {"path": "/extra"},
               "upstream": "a"}]
    cp = g.reload(config(listeners=listeners, routes=routes, workers=2,
                         upstreams={"a": {"targets": [stub.address], "retries": 0}}))
    assert cp.returncode == 0, cp.stderr
    for i in range(6):
        with TLSClient(port, sni=API, resume=first) as c:
            assert c.get("/extra").status == 200   # served by the new generation
            assert c.session_reused, "connection %d after the reload did not resume" % i


def test_reload_turning_tls_on_closes_plain_keepalive(make_gateway, make_stub, certs):
    """A keep-alive connection whose listener turned TLS on is closed between requests; new
    connections speak TLS (and plain HTTP there gets the 400)."""
    stub = make_stub("a")
    plain = listener("public")
    g = start(make_gateway, stub, [plain], timeouts={"keepalive": "30s"})
    port = g.ports["public"]
    with Client(port) as c:
        c.request(target="/1")
        assert c.read_response().status == 200
        tls = dict(plain, tls={"certificates": [certs.pair("api")]})
        cp = g.reload(config(listeners=[tls], routes=[
            {"name": "all", "listeners": ["public"], "match": {"path": "/"}, "upstream": "a"}],
            upstreams={"a": {"targets": [stub.address], "retries": 0}}))
        assert cp.returncode == 0, cp.stderr
        try:
            c.request(target="/2")
            r = c.read_response(timeout=3.0)
        except (Closed, OSError):
            r = None
        assert r is None, "plain keep-alive connection still served after TLS was turned " \
            "on: %r" % r
    assert presented(port, API, certs) == "api"
    assert plain_get(port, "/3").status == 400
    assert [q.target for q in stub.requests] == ["/1", "/"]


# ---- 9. https_only ----

def test_https_only_redirects_or_refuses_plain_requests(make_gateway, make_stub, certs):
    """https_only: on the plain listener GET/HEAD get 308 to https://HOST:TLSPORT/path?query
    (HOST without its port), other methods and a request without Host get 426 with Upgrade:
    TLS/1.2, HTTP/1.1; nothing reaches the upstream; the access log says https_redirect or
    https_required. On the TLS listener the route is proxied; another route of the plain listener is unaffected."""
    stub = make_stub("a")
    listeners = [listener("plain"), tls_listener(certs, ["api"])]
    routes = [{"name": "account", "listeners": ["plain", "public"],
               "match": {"path": "/account/"}, "upstream": "a", "https_only": True},
              {"name": "open", "listeners": ["plain", "public"], "match": {"path": "/open"},
               "upstream": "a"}]
    g = start(make_gateway, stub, listeners, routes=routes)
    plain, tport = g.ports["plain"], g.ports["public"]
    target = "/account/orders?id=7&x=a%20b"
    for host, loc_host in (("shop.example:8080", "shop.example"),
                           ("shop.example", "shop.example"), ("[::1]:8080", "[::1]")):
        for method in ("GET", "HEAD"):
            r = plain_get(plain, target, method=method, host=host)
            assert r.status == 308, (method, host, r)
            assert r.header("location") == "https://%s:%d%s" % (loc_host, tport, target), (
                method, host, r.headers)
    for method in ("POST", "PUT", "DELETE"):
        r = plain_get(plain, target, method=method, host="shop.example",
                      body=b"x=1" if method != "DELETE" else None)
        assert r.status == 426, (method, r)
        assert r.header("upgrade") == "TLS/1.2, HTTP/1.1", r.headers
        assert "upgrade" in [t.strip().lower() for t in (r.header("connection") or "").split(",")
                             ], r.headers
    with Client(plain) as c:
        c.send(b"GET /account/x HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 426, r
        assert r.header("upgrade") == "TLS/1.2, HTTP/1.1", r.headers
    assert stub.requests == [], stub.requests
    r = plain_get(plain, "/account/t", headers=[("X-Request-Id", "redir-1")])
    r2 = plain_get(plain, "/account/t", method="POST", body=b"",
                   headers=[("X-Request-Id", "upgr-1")])
    assert (r.status, r2.status) == (308, 426)
    assert g.access_for("redir-1")["termination"] == "https_redirect"
    assert g.access_for("upgr-1")["termination"] == "https_required"
    assert plain_get(plain, "/open").status == 200
    with TLSClient(tport, sni=API) as c:
        r = c.get(target, host="shop.example")
        assert r.status == 200, r
    assert [q.target for q in stub.requests] == ["/open", target]


def test_https_only_leaves_out_port_443(make_gateway, make_stub, certs):
    """When the route's first TLS listener is on port 443, the 308 Location has no port.
    (Skipped when 127.0.0.1:443 cannot be bound here.)"""
    probe = socket.socket()
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", 443))
    except OSError as e:
        pytest.skip("cannot bind 127.0.0.1:443: %s" % e)
    finally:
        probe.close()
    stub = make_stub("a")
    listeners = [listener("plain"), tls_listener(certs, ["api"], port=443)]
    routes = [{"name": "account", "listeners": ["plain", "public"],
               "match": {"path": "/account/"}, "upstream": "a", "https_only": True}]
    g = start(make_gateway, stub, listeners, routes=routes)
    r = plain_get(g.ports["plain"], "/account/x?y=1", host="shop.example:8080")
    assert r.status == 308, r
    assert r.header("location") == "https://shop.example/account/x?y=1", r.headers


# ---- 10. upstreams over TLS ----

def up_gateway(make_gateway, make_stub, groups, **extra):
    """A gateway with one upstream group per entry of <groups> ({name: settings}, retries 0
    unless given), each reached through the route /<name>/."""
    dummy = make_stub("a")
    routes = [{"name": n, "listeners": ["public"], "match": {"path": "/%s/" % n},
               "upstream": n} for n in groups]
    return start(make_gateway, dummy, [listener("public")], routes=routes,
                 upstreams={n: dict({"retries": 0}, **c) for n, c in groups.items()}, **extra)


def test_upstream_tls_verified_and_pooled(make_gateway, make_stub, https_stub, certs):
    """tls: {ca} to localhost:PORT: verified, SNI = the target's host, answers relayed; two
    sequential requests share one pooled TLS connection; without pooling, new connections
    resume the TLS session. An IP target (127.0.0.1, in the certificate's IP SANs) sends no
    SNI and verifies."""
    up, fresh, byip = https_stub("secure"), https_stub("fresh"), https_stub("byip")
    ca = certs.cert("ca")
    g = up_gateway(make_gateway, make_stub, {
        "secure": {"targets": ["localhost:%d" % up.port], "tls": {"ca": ca}},
        "fresh": {"targets": ["localhost:%d" % fresh.port], "keepalive": 0, "tls": {"ca": ca}},
        "byip": {"targets": ["127.0.0.1:%d" % byip.port], "tls": {"ca": ca}}})
    for i in range(2):
        r = plain_get(g.port, "/secure/p%d" % i)
        assert r.status == 200 and r.body == b"hello from secure\n", r
    assert up.connections == 1, "two sequential requests used %d TLS connections" % (
        up.connections)
    assert up.snis == ["localhost"], up.snis
    assert [q.target for q in up.requests] == ["/secure/p0", "/secure/p1"]

    # without pooling (keepalive: 0) each request is a new connection, which resumes
    for i in range(3):
        assert plain_get(g.port, "/fresh/k%d" % i).status == 200
    assert fresh.connections == 3, fresh.connections
    assert fresh.resumed == [False, True, True], (
        "TLS sessions to the upstream not resumed: %r" % fresh.resumed)

    r = plain_get(g.port, "/byip/ip")
    assert r.status == 200 and r.body == b"hello from byip\n", r
    assert byip.snis in ([], [None]), "an IP target sent SNI %r" % byip.snis


def test_upstream_tls_refuses_unverified_certificates(make_gateway, make_stub, https_stub,
                                                      certs):
    """A certificate from another CA (or `tls: true`: the system store), or for another name
    (or without the IP of an IP target), is a connect failure: 502 (termination
    upstream_connect_error) and the error log gives OpenSSL's reason; server_name makes the
    other name acceptable; a failed handshake is retried on the next target like a refused
    connection."""
    rogue = https_stub("rogue", cert="rogue_localhost")
    other = https_stub("other", cert="other_name")
    good = https_stub("good")
    ca = certs.cert("ca")
    g = up_gateway(make_gateway, make_stub, {
        "retry": {"targets": ["localhost:%d" % rogue.port, "localhost:%d" % good.port],
                  "retries": 1, "tls": {"ca": ca}},
        "rogue": {"targets": ["localhost:%d" % rogue.port], "tls": {"ca": ca}},
        "system": {"targets": ["localhost:%d" % good.port], "tls": True},
        "other": {"targets": ["localhost:%d" % other.port], "tls": {"ca": ca}},
        "otherip": {"targets": ["127.0.0.1:%d" % other.port], "tls": {"ca": ca}},
        "othersn": {"targets": ["localhost:%d" % other.port],
                    "tls": {"ca": ca, "server_name": "other.example"}}})
    mark = g.error_mark()
    r = plain_get(g.port, "/rogue/x")
    assert r.status == 502, r
    wait_log(g, r"certificate verify failed", mark)
    assert rogue.requests == []
    # (upstream failures are logged at most once a second: no log checks below)
    r_retry = plain_get(g.port, "/retry/x")
    assert r_retry.status == 200 and r_retry.body == b"hello from good\n", r_retry
    assert [q.target for q in good.requests] == ["/retry/x"]
    # tls: true verifies against the system store, which does not know the test CA
    assert plain_get(g.port, "/system/x").status == 502
    assert len(good.requests) == 1

    assert plain_get(g.port, "/other/x").status == 502
    # an IP target is checked against the certificate's IP addresses (this one has none)
    assert plain_get(g.port, "/otherip/x").status == 502
    assert other.requests == []
    r2 = plain_get(g.port, "/othersn/x")
    assert r2.status == 200 and r2.body == b"hello from other\n", r2
    assert "other.example" in other.snis, other.snis

    e = g.access_for(r.header("x-request-id"))
    assert e["termination"] == "upstream_connect_error", e
    e = g.access_for(r_retry.header("x-request-id"))
    assert e["retries"] == 1, e


def test_upstream_tls_verify_false(make_gateway, make_stub, https_stub, certs):
    """verify: false accepts a certificate from an unknown CA for another name; a line of the
    error log says verification is off, at start and again at each reload."""
    rogue = https_stub("rogue", cert="rogue_localhost")
    g = up_gateway(make_gateway, make_stub, {"tlsup": {
        "targets": ["127.0.0.1:%d" % rogue.port],
        "tls": {"verify": False, "server_name": "nothing.example"}}})
    r = plain_get(g.port, "/tlsup/v")
    assert r.status == 200 and r.body == b"hello from rogue\n", r
    rx = r"(?i)(tlsup|127\.0\.0\.1:%d).*verif|verif.*(tlsup|127\.0\.0\.1:%d)" % (rogue.port,
                                                                              rogue.port)
    wait_log(g, rx)
    mark = g.error_mark()
    cp = g.reload()
    assert cp.returncode == 0, cp.stderr
    wait_log(g, rx, mark)


def test_upstream_mutual_tls(make_gateway, make_stub, https_stub, certs):
    """An upstream that requires a client certificate: with cert/key configured the gateway
    presents it (200); without, the handshake fails (502)."""
    up = https_stub("mtls", client_ca="ca")
    target = ["localhost:%d" % up.port]
    g = up_gateway(make_gateway, make_stub, {
        "with": {"targets": target, "tls": {"ca": certs.cert("ca"),
                                            "cert": certs.cert("gw_client"),
                                            "key": certs.key("gw_client")}},
        "without": {"targets": target, "tls": {"ca": certs.cert("ca")}}})
    r = plain_get(g.port, "/with/m")
    assert r.status == 200 and r.body == b"hello from mtls\n", r
    assert certs.name_of(up.client_certs[-1]) == "gw_client"
    assert plain_get(g.port, "/without/m").status == 502
    assert [q.target for q in up.requests] == ["/with/m"]


# ---- 11. pgw.http over HTTPS ----

FETCH = """
local pgw = require "pgw"
return {
    access = function(conf, req)
        local args = { timeout = 3 }
        local url = pgw.req.get_header("X-Url")
        if url then
            args.url = url
        else
            args.upstream = pgw.req.get_header("X-Upstream")
            args.path = "/via-upstream"
        end
        local res, err = pgw.http.request(args)
        if not res then
            return pgw.exit(502, "err=" .. tostring(err), { ["Content-Type"] = "text/plain" })
        end
        return pgw.exit(200, "status=" .. res.status .. " body=" .. res.body,
                        { ["Content-Type"] = "text/plain" })
    end,
}
"""


def test_pgw_http_over_https(make_gateway, make_stub, https_stub, certs, tmp_path):
    """pgw.http.request with an https URL verifies against policies.http_ca and checks the
    name: a good certificate gives the stub's answer; another CA or another name returns nil,
    "tls handshake failed" (the reason in the error log); upstream = "group" uses the group's
    tls settings (here server_name)."""
    good = https_stub("good")
    rogue = https_stub("rogue", cert="rogue_localhost")
    other = https_stub("other", cert="other_name")
    pdir = tmp_path / "policies"
    write_policies(pdir, {"fetch": FETCH})
    stub = make_stub("a")
    routes = [{"name": "f", "listeners": ["public"], "match": {"path": "/f"}, "upstream": "a",
               "policies": ["fetch"]}]
    g = start(make_gateway, stub, [listener("public")], routes=routes,
              upstreams={"tlsup": {"targets": ["localhost:%d" % other.port],
                                   "tls": {"ca": certs.cert("ca"),
                                           "server_name": "other.example"}}},
              policies={"dir": str(pdir), "http_ca": certs.cert("ca")})

    def fetch(**hdr):
        return plain_get(g.port, "/f", headers=[("X-" + k.capitalize(), v)
                                                for k, v in hdr.items()])

    r = fetch(url="https://localhost:%d/x" % good.port)
    assert (r.status, r.body) == (200, b"status=200 body=hello from good\n"), r
    assert [q.target for q in good.requests] == ["/x"]
    mark = g.error_mark()
    r = fetch(url="https://localhost:%d/x" % rogue.port)
    assert (r.status, r.body) == (502, b"err=tls handshake failed"), r
    wait_log(g, r"certificate verify failed", mark)
    r = fetch(url="https://localhost:%d/x" % other.port)
    assert (r.status, r.body) == (502, b"err=tls handshake failed"), r
    r = fetch(upstream="tlsup")
    assert (r.status, r.body) == (200, b"status=200 body=hello from other\n"), r
    assert [q.target for q in other.requests] == ["/via-upstream"]
    assert rogue.requests == [] and stub.requests == []


# ---- 12. client certificates ----

TLSINFO = """
local pgw = require "pgw"
""" + LUA_COPY + """return {
    access = function(conf, req)
        local t = pgw.req.get_tls()
        if t then t = copy(t) else t = { none = true } end
        t.scheme = pgw.req.get_scheme()
        return pgw.exit(200, pgw.json.encode(t), { ["Content-Type"] = "application/json" })
    end,
}
"""


def client_cert_gateway(make_gateway, make_stub, certs, tmp_path, mode):
    pdir = tmp_path / "policies"
    write_policies(pdir, {"tlsinfo": TLSINFO})
    stub = make_stub("a")
    routes = [{"name": "all", "listeners": ["public"], "match": {"path": "/"}, "upstream": "a"},
              {"name": "info", "listeners": ["public", "plain"], "match": {"path": "/info"},
               "upstream": "a", "policies": ["tlsinfo"]}]
    g = start(make_gateway, stub, [tls_listener(certs, ["api"], verify_client=mode,
                                                client_ca=certs.cert("client_ca")),
                                   listener("plain")],
              routes=routes, policies={"dir": str(pdir)})
    return g, stub


def client_kw(certs, name):
    return {"cert": certs.cert(name), "key": certs.key(name)} if name else {}


def test_client_certificate_required(make_gateway, make_stub, certs, tmp_path):
    """verify_client: required: a client certificate from client_ca is served; without one, or
    with one from another CA, the handshake fails and no response is sent."""
    g, stub = client_cert_gateway(make_gateway, make_stub, certs, tmp_path, "required")
    port = g.ports["public"]
    with TLSClient(port, sni=API, **client_kw(certs, "client")) as c:
        assert c.get("/ok").status == 200
    for who in (None, "client_rogue"):
        for version in ("TLSv1.3", "TLSv1.2"):
            err = handshake_error(port, sni=API, max_version=version, **client_kw(certs, who))
            assert err is not None, "%s client %s was served" % (version, who or "without a "
                                                                 "certificate")
    assert [q.target for q in stub.requests] == ["/ok"]


def test_client_certificate_optional(make_gateway, make_stub, certs, tmp_path):
    """verify_client: optional: without a certificate the client is served; with one that does
    not verify it gets 403 (access log: client_cert_invalid); a good one is served."""
    g, stub = client_cert_gateway(make_gateway, make_stub, certs, tmp_path, "optional")
    port = g.ports["public"]
    for who in (None, "client"):
        with TLSClient(port, sni=API, **client_kw(certs, who)) as c:
            assert c.get("/ok").status == 200, who
    with TLSClient(port, sni=API, **client_kw(certs, "client_rogue")) as c:
        r = c.get("/bad")
        assert r.status == 403, r
    e = g.access_for(r.header("x-request-id"))
    assert (e["status"], e["termination"]) == (403, "client_cert_invalid"), e
    assert [q.target for q in stub.requests] == ["/ok", "/ok"]


def test_get_tls_shows_the_connection_and_the_client_certificate(make_gateway, make_stub,
                                                                  certs, tmp_path):
    """pgw.req.get_tls() in a policy (docs/sdk.md): protocol, cipher, server_name (absent
    without SNI), resumed, and for a verified client certificate its subject and issuer (RFC
    2253), serial (upper-case hex), SHA-256 fingerprint (lower-case hex of the DER),
    not_before/not_after and verified = true; no client entry without a certificate; nil on a
    plain connection. get_scheme() is "https" on TLS, "http" on plain."""
    g, stub = client_cert_gateway(make_gateway, make_stub, certs, tmp_path, "optional")
    port = g.ports["public"]
    with TLSClient(port, sni=API, **client_kw(certs, "client")) as c:
        r = c.get("/info")
        assert r.status == 200, r
        t = r.json()
        assert t["protocol"] == c.version, t
        assert t["cipher"] == c.cipher, t
        assert t["scheme"] == "https", t
        assert t["server_name"] == API, t
        assert t["resumed"] is False, t
        cl = t["client"]
        assert cl["subject"] == "CN=alice", cl                       # RFC 2253
        assert cl["issuer"] == "CN=Passerelle Test Clients CA", cl
        assert cl["fingerprint"] == certs.fingerprint("client"), cl   # lower-case hex
        assert cl["serial"] == "%X" % certs.serial("client"), cl      # upper-case hex
        assert cl["verified"] is True, cl
        for k in ("not_before", "not_after"):
            assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", cl[k]), cl
        assert cl["not_before"] < cl["not_after"], cl
    with TLSClient(port, sni=API, resume=c) as c2:
        t = c2.get("/info").json()
        assert c2.session_reused and t["resumed"] is True, t
    with TLSClient(port, sni=API) as c3:
        t = c3.get("/info").json()
        assert t["server_name"] == API and t.get("client") is None, t
    with TLSClient(port) as c4:     # no SNI: no server_name
        t = c4.get("/info").json()
        assert t.get("server_name") is None and t["protocol"] == c4.version, t
    t = plain_get(g.ports["plain"], "/info").json()
    assert t == {"none": True, "scheme": "http"}, "get_tls() on a plain connection: %r" % t
    assert stub.requests == []


# ---- 13. access log ----

def test_access_log_tls_fields(make_gateway, make_stub, certs):
    """Every access-log line has tls_version and tls_cipher: the negotiated ones on a TLS
    connection (TLS 1.3 and 1.2), empty strings on a plain one."""
    stub = make_stub("a")
    g = start(make_gateway, stub, [listener("plain"), tls_listener(certs, ["api"])])
    with TLSClient(g.ports["public"], sni=API) as c:
        r13 = c.get("/13")
        v13, c13 = c.version, c.cipher
    with TLSClient(g.ports["public"], sni=API, max_version="TLSv1.2",
                   ciphers="ECDHE-RSA-AES128-GCM-SHA256") as c:
        r12 = c.get("/12")
    rp = plain_get(g.ports["plain"], "/plain")
    e = g.access_for(r13.header("x-request-id"))
    assert (e["tls_version"], e["tls_cipher"]) == (v13, c13), e
    e = g.access_for(r12.header("x-request-id"))
    assert e["tls_version"] == "TLSv1.2", e
    assert e["tls_cipher"] in ("ECDHE-RSA-AES128-GCM-SHA256",
                               "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"), e
    e = g.access_for(rp.header("x-request-id"))
    assert (e["tls_version"], e["tls_cipher"]) == ("", ""), e


# ---- 14. sslscan ----

def test_sslscan_finds_no_weak_protocol_or_suite(make_gateway, make_stub, certs):
    """sslscan (when installed) against a TLS listener: no SSLv2/SSLv3/TLSv1.0/TLSv1.1, no
    renegotiation, and no NULL, EXPORT, RC4, 3DES or anonymous suite accepted."""
    exe = shutil.which("sslscan")
    if not exe:
        pytest.skip("sslscan is not installed")
    stub = make_stub("a")
    g = start(make_gateway, stub, [tls_listener(certs, ["api", "api_ecdsa"])])
    cp = subprocess.run([exe, "--no-colour", "--sni-name=" + API,
                         "127.0.0.1:%d" % g.ports["public"]], capture_output=True, text=True,
                        timeout=60)
    out = cp.stdout
    for proto in ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"):
        assert not re.search(r"^\s*%s\s+enabled" % re.escape(proto), out, re.M), out
    assert not re.search(r"(?im)^\s*(in)?secure session renegotiation supported", out), out
    accepted = [l for l in out.splitlines() if re.match(r"^\s*(Preferred|Accepted)\s", l)]
    assert accepted, out
    for l in accepted:
        assert not re.search(r"NULL|EXP|RC4|DES-CBC3|3DES|ADH|AECDH|anon", l), l
        assert not re.search(r"\b(SSLv2|SSLv3|TLSv1\.0|TLSv1\.1)\b", l), l
    g.assert_alive()


# ---- 15. config errors ----

def _base_cfg(certs, tls=None, upstream_tls=None):
    l = listener("public")
    l["tls"] = dict({"certificates": [certs.pair("api")]}, **(tls or {}))
    up = {"targets": ["127.0.0.1:9"]}
    if upstream_tls is not None:
        up["tls"] = upstream_tls
    return config(listeners=[l], upstreams={"a": up},
                  routes=[{"name": "all", "listeners": ["public"], "match": {"path": "/"},
                           "upstream": "a"}])


def _bad_configs(certs, tmp_path):
    missing = str(tmp_path / "nope.pem")
    return {
        "missing_cert_file": _base_cfg(certs, {"certificates": [
            {"cert": missing, "key": certs.key("api")}]}),
        "key_mismatch": _base_cfg(certs, {"certificates": [
            {"cert": certs.cert("api"), "key": certs.key("wildcard")}]}),
        "encrypted_key": _base_cfg(certs, {"certificates": [
            {"cert": certs.cert("api"), "key": certs.encrypted_key("api")}]}),
        "rsa_1024": _base_cfg(certs, {"certificates": [certs.pair("rsa1024")]}),
        "no_certificates": _base_cfg(certs, {"certificates": []}),
        "required_without_client_ca": _base_cfg(certs, {"verify_client": "required"}),
        "unknown_key": _base_cfg(certs, {"colour": "blue"}),
        "tls11": _base_cfg(certs, {"protocols": ["TLSv1.1", "TLSv1.2"]}),
        "bad_unknown_sni": _base_cfg(certs, {"unknown_sni": "maybe"}),
        "bad_verify_client": _base_cfg(certs, {"verify_client": "sometimes",
                                               "client_ca": certs.cert("client_ca")}),
        "upstream_unknown_key": _base_cfg(certs, upstream_tls={"ca": certs.cert("ca"),
                                                               "colour": "blue"}),
        "upstream_missing_ca": _base_cfg(certs, upstream_tls={"ca": missing}),
        "upstream_cert_without_key": _base_cfg(certs, upstream_tls={
            "cert": certs.cert("gw_client")}),
    }


def test_check_accepts_good_tls_settings(certs, tmp_path):
    """The control case: `passerelle check` accepts listener and upstream tls sections using
    every documented key."""
    cfg = _base_cfg(certs, {"certificates": [certs.pair("api"), certs.pair("api_ecdsa"),
                                             certs.pair("chain")],
                            "unknown_sni": "reject", "protocols": ["TLSv1.2", "TLSv1.3"],
                            "ciphers": "ECDHE+AESGCM", "handshake_timeout": "5s",
                            "session_tickets": True, "verify_client": "optional",
                            "client_ca": certs.cert("client_ca"), "verify_depth": 3},
                    upstream_tls={"ca": certs.cert("ca"), "server_name": "x.example",
                                  "cert": certs.cert("gw_client"),
                                  "key": certs.key("gw_client"), "verify": True})
    cfg["tls"] = {"ticket_rotation": "30m"}
    cp = check_config(tmp_path, cfg)
    assert cp.returncode == 0, cp.stderr


def test_check_warns_about_an_expired_certificate(certs, tmp_path):
    """`passerelle check` accepts an expired certificate with a warn line naming it."""
    cp = check_config(tmp_path, _base_cfg(certs, {"certificates": [certs.pair("expired")]}))
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout + cp.stderr
    assert re.search(r"\[warn\].*(listeners\.public\.tls\.certificates\[0\]|%s)"
                     % re.escape(certs.cert("expired")), out), out


@pytest.mark.parametrize("case", ["missing_cert_file", "key_mismatch", "encrypted_key",
                                  "rsa_1024",
                                  "no_certificates", "required_without_client_ca",
                                  "unknown_key", "tls11", "bad_unknown_sni",
                                  "bad_verify_client", "upstream_unknown_key",
                                  "upstream_missing_ca", "upstream_cert_without_key"])
def test_check_refuses_bad_tls_settings(certs, tmp_path, case):
    """`passerelle check -c FILE` refuses each bad tls setting: exit status non-zero and a
    message naming the tls section."""
    cp = check_config(tmp_path, _bad_configs(certs, tmp_path)[case])
    assert cp.returncode != 0, "%s accepted: %r %r" % (case, cp.stdout, cp.stderr)
    assert "tls" in cp.stderr, "%s: the message does not name tls: %r" % (case, cp.stderr)
