"""tlsfix.py: what the TLS end-to-end suite (spec/e2e/test_tls.py) needs besides gw.py and stubs.py.

CertStore.create(dir)   generates, with the `openssl` CLI, the test PKI into <dir> (a few seconds:
                        use one store per test session). Names (see CERTS below):
                          ca, other_ca, client_ca: root CAs (other_ca signs the "rogue" certs)
                          inter: an intermediate CA under ca
                          default, api, api_ecdsa, wildcard, www_net, cn_only, localhost,
                          other_name, rogue_localhost, chain, expired, rsa1024: server leaves
                          client, client_rogue, gw_client: client leaves
                        store.cert(n) / store.key(n): PEM paths (the "chain" cert file holds the
                        leaf then the intermediate), store.der(n): the leaf's DER,
                        store.name_of(der): which cert a peer presented, store.fingerprint(n):
                        SHA-256 of the DER in lower-case hex, store.serial(n): an int,
                        store.encrypted_key(n): its key encrypted (passphrase "secret").
TLSClient(port, ...)    gw.Client over TLS (python's ssl): raw request bytes in, strictly parsed
                        responses out, plus what the handshake gave: .version, .cipher,
                        .peer_der, .alpn, .session_reused, .session, and .eof after the server
                        closed: "close_notify", "ragged" (TCP close without close_notify),
                        "reset" or "alert: ...".
handshake_error(...)    the exception a TLSClient handshake raised, or None.
client_hello(...)       the bytes of a real ClientHello (python ssl writing into a MemoryBIO).
HTTPSUpstream(...)      stubs.Upstream behind TLS (same query-controlled answers), recording the
                        handshakes (.handshakes, .handshake_errors, .client_certs, .snis).
                        ?ragged=1 makes its close (e.g. after ?eof=1) a bare TCP close without
                        close_notify; otherwise it sends close_notify first.
s_client(port, ...)     runs `openssl s_client` with a timeout; SClient.completed / .cipher /
                        .version / .certs (DER of the PEM blocks printed). SServer: `openssl
                        s_server -www`, to check these helpers by themselves.
records_of_response(port, request, ...)  a TLS exchange through MemoryBIOs over a plain socket:
                        the plaintext received and the (type, length) of every TLS record the
                        server sent.
"""
import base64
import hashlib
import re
import socket
import ssl
import subprocess
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gw
import stubs
from httpio import Reader

OPENSSL = "openssl"

# ---- certificates ----

# name: (kind, key type, issuer, CN, SAN entries, days)
#   kind: "ca" (self-signed root), "inter" (CA signed by issuer), "server", "client"
CERTS = {
    "ca": ("ca", "rsa", None, "Passerelle Test Root CA", [], 3650),
    "other_ca": ("ca", "rsa", None, "Some Other CA", [], 3650),
    "client_ca": ("ca", "rsa", None, "Passerelle Test Clients CA", [], 3650),
    "inter": ("inter", "rsa", "ca", "Passerelle Test Intermediate CA", [], 3650),
    "default": ("server", "rsa", "ca", "default.example.org", ["DNS:default.example.org"], 365),
    "api": ("server", "rsa", "ca", "api.example.com", ["DNS:api.example.com"], 365),
    "api_ecdsa": ("server", "ec", "ca", "api.example.com", ["DNS:api.example.com"], 365),
    "api_b": ("server", "rsa", "ca", "api.example.com (B)", ["DNS:api.example.com"], 365),
    "wildcard": ("server", "rsa", "ca", "*.example.net", ["DNS:*.example.net"], 365),
    "www_net": ("server", "ec", "ca", "www.example.net", ["DNS:www.example.net"], 365),
    "cn_only": ("server", "rsa", "ca", "legacy.example.org", [], 365),
    "localhost": ("server", "rsa", "ca", "localhost", ["DNS:localhost", "IP:127.0.0.1"], 365),
    "other_name": ("server", "ec", "ca", "other.example", ["DNS:other.example"], 365),
    "rogue_localhost": ("server", "rsa", "other_ca", "localhost",
                        ["DNS:localhost", "IP:127.0.0.1"], 365),
    "chain": ("server", "ec", "inter", "chain.example.com", ["DNS:chain.example.com"], 365),
    "expired": ("server", "rsa", "ca", "api.example.com (expired)", ["DNS:api.example.com"], -1),
    "rsa1024": ("server", "rsa1024", "ca", "api.example.com (1024)", ["DNS:api.example.com"],
                365),
    "client": ("client", "ec", "client_ca", "alice", [], 365),
    "client_rogue": ("client", "ec", "other_ca", "mallory", [], 365),
    "gw_client": ("client", "rsa", "ca", "passerelle gateway", [], 365),
}

_BASE_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_KEYOPTS = {
    "rsa": ["-newkey", "rsa:2048"],
    "rsa1024": ["-newkey", "rsa:1024"],
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
}


def _run(args, **kw):
    r = subprocess.run(args, capture_output=True, timeout=60, **kw)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(map(str, args)), r.returncode,
                                                   r.stderr.decode(errors="replace")[-2000:]))
    return r


def pem_to_der_list(text):
    """DER of every CERTIFICATE block in <text> (str or bytes)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return [base64.b64decode("".join(m.group(1).split()))
            for m in re.finditer(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----",
                                 text, re.S)]


class CertStore:
    def __init__(self, directory):
        self.dir = Path(directory)
        self.serials = {}

    @classmethod
    def create(cls, directory):
        s = cls(directory)
        s.dir.mkdir(parents=True, exist_ok=True)
        (s.dir / "base.cnf").write_text(_BASE_CNF)
        serial = 0x5000
        for name in CERTS:
            serial += 1
            s.serials[name] = serial
        # by depth: roots, then what they sign, then what those sign
        done = set()
        with ThreadPoolExecutor(max_workers=8) as pool:
            while len(done) < len(CERTS):
                ready = [n for n, spec in CERTS.items()
                         if n not in done and (spec[2] is None or spec[2] in done)]
                list(pool.map(s._make, ready))
                done.update(ready)
        # the chain file: leaf then intermediate
        leaf = (s.dir / "chain.leaf.pem").read_text()
        (s.dir / "chain.pem").write_text(leaf + (s.dir / "inter.pem").read_text())
        return s

    def _make(self, name):
        kind, keytype, issuer, cn, san, days = CERTS[name]
        d = self.dir
        subj = "/CN=" + cn.replace("/", "\\/")
        base = ["-config", str(d / "base.cnf")]
        key, csr = d / ("%s.key" % name), d / ("%s.csr" % name)
        out = d / ("%s.leaf.pem" % name if name == "chain" else "%s.pem" % name)
        if kind == "ca":
            _run([OPENSSL, "req", "-x509", "-new"] + base + _KEYOPTS[keytype]
                 + ["-nodes", "-keyout", str(key), "-out", str(out), "-subj", subj,
                    "-days", str(days), "-sha256", "-extensions", "ca_ext",
                    "-set_serial", str(self.serials[name])])
            return
        _run([OPENSSL, "req", "-new"] + base + _KEYOPTS[keytype]
             + ["-nodes", "-keyout", str(key), "-out", str(csr), "-subj", subj])
        ext = d / ("%s.ext" % name)
        lines = ["[ext]", "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid"]
        if kind == "inter":
            lines += ["basicConstraints = critical,CA:TRUE,pathlen:0",
                      "keyUsage = critical,keyCertSign,cRLSign"]
        else:
            lines += ["basicConstraints = critical,CA:FALSE",
                      "keyUsage = critical,digitalSignature%s" % (
                          ",keyEncipherment" if keytype.startswith("rsa") else ""),
                      "extendedKeyUsage = %s" % ("serverAuth" if kind == "server"
                                                 else "clientAuth")]
            if san:
                lines.append("subjectAltName = " + ",".join(san))
        ext.write_text("\n".join(lines) + "\n")
        _run([OPENSSL, "x509", "-req", "-in", str(csr), "-CA", str(d / ("%s.pem" % issuer)),
              "-CAkey", str(d / ("%s.key" % issuer)), "-set_serial", str(self.serials[name]),
              "-days", str(days), "-sha256", "-extfile", str(ext), "-extensions", "ext",
              "-out", str(out)])

    # ---- access ----

    def cert(self, name):
        return str(self.dir / ("%s.pem" % name))

    def key(self, name):
        return str(self.dir / ("%s.key" % name))

    def pair(self, name):
        """{cert, key} as a listener's certificates entry wants it."""
        return {"cert": self.cert(name), "key": self.key(name)}

    def der(self, name):
        """The DER of the leaf of <name>."""
        return pem_to_der_list((self.dir / ("%s.pem" % name)).read_text())[0]

    def name_of(self, der):
        """The name of the certificate whose DER is <der> (None if it is none of ours)."""
        if der is None:
            return None
        for name in CERTS:
            if self.der(name) == der:
                return name
        return "<unknown certificate>"

    def encrypted_key(self, name):
        """The key of <name> encrypted with the passphrase "secret" (made on first use)."""
        path = self.dir / ("%s.enc.key" % name)
        if not path.exists():
            _run([OPENSSL, "pkey", "-in", self.key(name), "-aes256", "-passout", "pass:secret",
                  "-out", str(path)])
        return str(path)

    def fingerprint(self, name):
        return hashlib.sha256(self.der(name)).hexdigest()

    def serial(self, name):
        return self.serials[name]


# ---- a TLS client ----

class _TLSSock:
    """What gw.Client and httpio.Reader use of a socket, over an SSLSocket, telling apart a close
    with close_notify, a bare TCP close ("ragged") and an alert."""

    def __init__(self, tls, owner):
        self.tls = tls
        self.owner = owner

    def recv(self, n):
        try:
            data = self.tls.recv(n)
        except ssl.SSLZeroReturnError:
            self.owner.eof = "close_notify"
            return b""
        except ssl.SSLEOFError:
            self.owner.eof = "ragged"
            return b""
        except ssl.SSLError as e:
            if getattr(e, "reason", None) == "UNEXPECTED_EOF_WHILE_READING":
                self.owner.eof = "ragged"
                return b""
            self.owner.eof = "alert: %s" % e
            raise ConnectionResetError(str(e))
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            self.owner.eof = "reset"
            raise
        if not data:
            self.owner.eof = self.owner.eof or "close_notify"
        return data

    def sendall(self, data):
        try:
            return self.tls.sendall(data)
        except ssl.SSLError as e:
            raise ConnectionResetError(str(e))

    def settimeout(self, t):
        self.tls.settimeout(t)

    def setsockopt(self, *a):
        self.tls.setsockopt(*a)

    def getsockname(self):
        return self.tls.getsockname()

    def shutdown(self, how):
        self.tls.shutdown(how)

    def close(self):
        self.tls.close()


def make_context(ca=None, check_hostname=False, min_version=None, max_version=None, alpn=None,
                 cert=None, key=None, ciphers=None, tickets=True):
    """A client SSLContext. <ca> None: no verification. Versions: "TLSv1", "TLSv1.1",
    "TLSv1.2", "TLSv1.3" or ssl.TLSVersion values."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # python sets this by default: a TCP close without close_notify would then read as a clean
    # end; the tests need to tell them apart
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    if ca:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = check_hostname
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    old = False
    for attr, v in (("minimum_version", min_version), ("maximum_version", max_version)):
        if v is not None:
            if isinstance(v, str):
                v = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
                     "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}[v]
            old = old or v < ssl.TLSVersion.TLSv1_2
            with warnings.catch_warnings():   # TLSv1 and TLSv1_1 are deprecated, on purpose
                warnings.simplefilter("ignore", DeprecationWarning)
                setattr(ctx, attr, v)
    if ciphers:
        ctx.set_ciphers(ciphers)
    elif old:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")   # let OpenSSL offer TLS 1.0/1.1 at all
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if cert:
        ctx.load_cert_chain(cert, key)
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


class TLSClient(gw.Client):
    """A gw.Client whose bytes go through TLS. <sni>: the server name sent (None: no SNI).
    The handshake runs in the constructor (and raises on failure). Other arguments: see
    make_context; <context> replaces them. <resume>: an earlier TLSClient whose context and
    session (as of its last response) this one reuses (python ties a session to its context)."""

    def __init__(self, port, sni=None, host="127.0.0.1", timeout=5.0, session=None,
                 context=None, resume=None, **ctxkw):
        super().__init__(port, host=host, timeout=timeout, connect=False)
        self.eof = None
        if resume is not None:
            context, session = resume.context, resume.session
        self.context = context or make_context(**ctxkw)
        self.sock.connect((host, port))
        # (wrap_socket detaches the plain socket: from now on only self.tls is usable)
        self.tls = self.context.wrap_socket(self.sock, server_hostname=sni, session=session,
                                            do_handshake_on_connect=False,
                                            suppress_ragged_eofs=False)
        try:
            self.tls.do_handshake()
        except BaseException:
            self.tls.close()
            raise
        self.sock = _TLSSock(self.tls, self)
        self.reader = Reader(self.sock, timeout)
        self.version = self.tls.version()
        self.cipher = self.tls.cipher()[0]
        self.peer_der = self.tls.getpeercert(binary_form=True)
        self.alpn = self.tls.selected_alpn_protocol()
        self.session_reused = self.tls.session_reused
        self.local_port = self.tls.getsockname()[1]

    @property
    def session(self):
        """The session to resume: the live one, or the one kept at the last response (TLS 1.3
        tickets arrive after the handshake, so read a response before using it)."""
        try:
            sess = self.tls.session
        except (OSError, ValueError):
            sess = None
        return sess or self._last_session

    _last_session = None

    def read_response(self, *a, **kw):
        r = super().read_response(*a, **kw)
        try:
            self._last_session = self.tls.session or self._last_session
        except (OSError, ValueError):
            pass
        return r

    def close_notify(self, timeout=1.0):
        """Sends close_notify (waiting up to <timeout> for the peer's), then closes."""
        try:
            self.tls.settimeout(timeout)
            self.tls.unwrap().close()
        except (OSError, ValueError):
            pass
        self.close()

    def get(self, target="/", **kw):
        """One request on this connection; returns the response."""
        self.request(target=target, **kw)
        return self.read_response(kw.get("method", "GET"))


def handshake_error(port, **kw):
    """Tries a handshake (and one request on it, so that a TLS 1.3 server's late refusal, such as
    a missing client certificate, shows); returns the exception, or None when a response came."""
    try:
        c = TLSClient(port, **kw)
    except (ssl.SSLError, OSError) as e:
        return e
    try:
        c.request(target="/")
        c.read_response()
        return None
    except Exception as e:  # noqa: BLE001 (Closed, reset, alert: any failure will do)
        return e
    finally:
        c.close()


def https_get(port, target="/", sni=None, **kw):
    """One request on a fresh TLS connection: (response, client) (the client closed)."""
    with TLSClient(port, sni=sni, **kw) as c:
        r = c.get(target)
    return r, c


def client_hello(sni="api.example.com", **ctxkw):
    """The bytes of a real ClientHello (one or more TLS records), as python's ssl sends it."""
    ctx = make_context(**ctxkw)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


# ---- an HTTPS upstream stub ----

class _TLSConnCtx(stubs.ConnCtx):
    ragged = False

    def close(self):
        if self.closed:
            return
        self.closed = True
        tls = self.sock
        if self.ragged:
            # a bare TCP close: no close_notify
            raw = socket.socket(fileno=tls.detach())
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raw.close()
            return
        try:
            tls.settimeout(0.5)
            raw = tls.unwrap()   # close_notify (and the peer's, if it comes within 0.5 s)
        except (OSError, ValueError):
            try:
                raw = socket.socket(fileno=tls.detach())
            except (OSError, ValueError):
                tls.close()
                return
        try:
            raw.shutdown(socket.SHUT_WR)
            raw.settimeout(0.2)
            while raw.recv(65536):
                pass
        except OSError:
            pass
        raw.close()


class HTTPSUpstream(stubs.Upstream):
    """stubs.Upstream behind TLS with <cert>/<key> (the cert file may hold a chain).
    <client_ca>: require a client certificate that chains to it."""

    def __init__(self, name, cert, key, client_ca=None, **kw):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        self.handshakes = 0
        self.handshake_errors = []
        self.client_certs = []   # DER (or None) per successful handshake
        self.snis = []           # server name per handshake attempt (None: no SNI)
        self.resumed = []        # session_reused per successful handshake

        def on_sni(sslobj, name, c):
            self.snis.append(name)
        ctx.sni_callback = on_sni
        self.ssl_context = ctx
        super().__init__(name, **kw)

    def _serve(self, sock, number):
        try:
            tls = self.ssl_context.wrap_socket(sock, server_side=True,
                                               do_handshake_on_connect=False)
            tls.settimeout(5.0)
            tls.do_handshake()
        except (ssl.SSLError, OSError) as e:
            with self.cond:
                self.handshake_errors.append(str(e))
                self.cond.notify_all()
            try:
                sock.close()
            except OSError:
                pass
            return
        with self.cond:
            self.handshakes += 1
            self.client_certs.append(tls.getpeercert(binary_form=True))
            self.resumed.append(tls.session_reused)
            self.socks.append(tls)
            self.cond.notify_all()
        self._serve_conn(_TLSConnCtx(self, tls, number), number)

    def _before_answer(self, ctx, rec):
        ctx.ragged = "ragged" in rec.query  # ?ragged: close without close_notify

    def wait_handshakes(self, n, timeout=5.0):
        """Waits until <n> handshakes were attempted (ok or failed); returns (ok, errors)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.handshakes + len(self.handshake_errors) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return self.handshakes, list(self.handshake_errors)


# ---- openssl s_client ----

class SClient:
    def __init__(self, cp):
        self.returncode = cp.returncode
        self.out = cp.stdout.decode(errors="replace") + cp.stderr.decode(errors="replace")
        m = re.search(r"^(?:New|Reused), (\S+), Cipher is (\S+)", self.out, re.M)
        self.version = m.group(1) if m else None
        self.cipher = m.group(2) if m else None
        self.certs = pem_to_der_list(self.out)

    @property
    def completed(self):
        """True when s_client reports a negotiated cipher (a completed handshake)."""
        return self.cipher is not None and self.cipher not in ("(NONE)", "0000")

    def __repr__(self):
        return "<SClient rc=%s version=%s cipher=%s>\n%s" % (self.returncode, self.version,
                                                             self.cipher, self.out[-3000:])


def s_client(port, args=(), sni=None, input=b"", timeout=10.0, host="127.0.0.1"):
    """Runs `openssl s_client -connect host:port` with <args>; stdin gets <input> then EOF."""
    cmd = [OPENSSL, "s_client", "-connect", "%s:%d" % (host, port)]
    cmd += ["-servername", sni] if sni else ["-noservername"]
    cmd += list(args)
    try:
        cp = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        cp = subprocess.CompletedProcess(cmd, None, e.stdout or b"", e.stderr or b"")
    return SClient(cp)


class SServer:
    """`openssl s_server` on a free port (for checking the helpers themselves)."""

    def __init__(self, cert, key, args=()):
        self.port = gw.free_port()
        self.proc = subprocess.Popen([OPENSSL, "s_server", "-accept", str(self.port), "-cert",
                                      cert, "-key", key, "-www"] + list(args),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        gw.wait_for(lambda: _connects(self.port), 5.0, "s_server listening")

    def stop(self):
        self.proc.kill()
        self.proc.wait(5)


def _connects(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# ---- TLS records as sent on the wire ----

def records_of_response(port, request, sni=None, timeout=10.0, **ctxkw):
    """Makes a TLS connection through MemoryBIOs over a plain socket, sends <request> and reads
    until the server closes or a complete Content-Length response arrived. Returns (the
    plaintext received, [(record type, record length)] of every TLS record the server sent)."""
    ctx = make_context(**ctxkw)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    wire = bytearray()
    deadline = time.monotonic() + timeout

    def flush():
        data = out.read()
        if data:
            sock.sendall(data)

    def feed():
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            inc.write_eof()
            return False
        wire.extend(data)
        inc.write(data)
        return True

    try:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                if not feed():
                    raise ConnectionResetError("closed during the handshake")
        flush()
        obj.write(request)
        flush()
        plain = bytearray()
        while time.monotonic() < deadline:
            try:
                while True:
                    chunk = obj.read(65536)
                    if not chunk:
                        break
                    plain.extend(chunk)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
            head_end = plain.find(b"\r\n\r\n")
            if head_end >= 0:
                m = re.search(rb"(?im)^content-length:\s*(\d+)", bytes(plain[:head_end]))
                if m and len(plain) >= head_end + 4 + int(m.group(1)):
                    break
                if (re.search(rb"(?im)^transfer-encoding:\s*chunked", bytes(plain[:head_end]))
                        and plain.endswith(b"\r\n0\r\n\r\n")):
                    break
            if not feed():
                break
    finally:
        sock.close()
    records = []
    i = 0
    while i + 5 <= len(wire):
        n = int.from_bytes(wire[i + 3:i + 5], "big")
        records.append((wire[i], n))
        i += 5 + n
    return bytes(plain), records


__all__ = ["CertStore", "TLSClient", "HTTPSUpstream", "SClient", "SServer", "client_hello",
           "handshake_error", "https_get", "make_context", "pem_to_der_list", "records_of_response",
           "s_client",
           "SServer"]
