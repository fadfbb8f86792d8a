"""gw.py: start and stop the real gateway with a temporary config, read its logs, and talk to it
with a raw-socket client.

Gateway(config, workdir)   writes <workdir>/gw.yaml, runs `./passerelle -c <workdir>/gw.yaml` from
                           the repository root, waits until every listener accepts connections
                           (10 s), and stop() ends it by PID (SIGTERM, SIGKILL after 5 s).
                           The error log goes to <workdir>/error.log (level info) and the access
                           log to <workdir>/access.log (json) unless the config says otherwise.
Client(port)               raw bytes in, strictly parsed responses out (httpio), close detection.
config(...) / listener()   build config dicts; to_yaml() turns them into block YAML.
"""
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from httpio import (Closed, ProtocolError, Reader, Timeout, framing, get, get_all,
                    parse_fields, read_chunked, split_head, STATUS_LINE_RE)

REPO = Path(__file__).resolve().parents[2]
# PASSERELLE_BIN runs the suites against another build (e.g. a sanitizer build).
BINARY = Path(os.environ.get("PASSERELLE_BIN") or REPO / "passerelle")

ERROR_LINE_RE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[(debug|info|notice|warn|error)\] \S.*$")


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- config building ----

def listener(name="public", port=None):
    return {"name": name, "address": "127.0.0.1:%d" % (port or free_port())}


def config(listeners=None, upstreams=None, routes=None, **extra):
    """A config dict; keys in <extra> (limits, timeouts, real_ip, http, ...) are added as is."""
    c = {"listeners": listeners or [listener("public")]}
    c.update({k: v for k, v in extra.items() if k not in ("access_log", "error_log")})
    if upstreams:
        c["upstreams"] = upstreams
    if routes:
        c["routes"] = routes
    if "access_log" in extra:
        c["access_log"] = extra["access_log"]
    if "error_log" in extra:
        c["error_log"] = extra["error_log"]
    return c


class Raw(str):
    """A scalar emitted without quotes, as written."""


_PLAIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_SPECIAL = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"}


def _scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if v is None:
        return "null"
    if isinstance(v, Raw):
        return str(v)
    s = str(v)
    if _PLAIN_RE.match(s) and s.lower() not in _SPECIAL:
        return s
    return json.dumps(s)


def to_yaml(obj, indent=0):
    """Block-style YAML for dicts/lists/scalars (strings quoted only when needed)."""
    pad = " " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
                    lines.append("%s%s: [%s]" % (pad, k, ", ".join(_scalar(x) for x in v)))
                else:
                    lines.append("%s%s:" % (pad, k))
                    lines.append(to_yaml(v, indent + 2))
            elif isinstance(v, (dict, list)):
                lines.append("%s%s: %s" % (pad, k, "{}" if isinstance(v, dict) else "[]"))
            else:
                lines.append("%s%s: %s" % (pad, k, _scalar(v)))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict) and item:
                sub = to_yaml(item, indent + 2).split("\n")
                sub[0] = pad + "- " + sub[0][indent + 2 :]
                lines.extend(sub)
            else:
                lines.append("%s- %s" % (pad, _scalar(item)))
    else:
        lines.append(pad + _scalar(obj))
    return "\n".join(lines)


# ---- the gateway process ----

class GatewayError(Exception):
    pass


class Gateway:
    def __init__(self, cfg, workdir, start=True, args=None):
        """<cfg>: a config dict (logs added when absent) or YAML text (used as is)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.error_path = self.workdir / "error.log"
        self.access_path = self.workdir / "access.log"
        self.config_path = self.workdir / "gw.yaml"
        if isinstance(cfg, dict):
            cfg = dict(cfg)
            cfg.setdefault("error_log", {"path": str(self.error_path), "level": "info"})
            cfg.setdefault("access_log", {"path": str(self.access_path), "format": "json"})
            self.cfg = cfg
            self.ports = {l["name"]: int(l["address"].rsplit(":", 1)[1]) for l in cfg["listeners"]}
            text = to_yaml(cfg) + "\n"
        else:
            self.cfg = None
            text = cfg
            self.ports = {m.group(1): int(m.group(2)) for m in re.finditer(
                r"name:\s*\"?(\w+)\"?,\s*address:\s*\"?[\d.]+:(\d+)", text)}
        self.config_path.write_text(text)
        self.args = args
        self.proc = None
        self._access_lines = []
        self._access_off = 0
        if start:
            self.start()

    @property
    def port(self):
        """The port of the first listener."""
        return next(iter(self.ports.values()))

    def start(self, timeout=10.0):
        if not BINARY.exists():
            raise GatewayError("%s does not exist: run `make passerelle`" % BINARY)
        self.stdout = open(self.workdir / "stdout.log", "ab")
        self.stderr = open(self.workdir / "stderr.log", "ab")
        if callable(self.args):  # a function of the config path, e.g. to wrap the binary
            args = self.args(self.config_path)
        else:
            args = self.args or [str(BINARY), "-c", str(self.config_path)]
        self.proc = subprocess.Popen(args, cwd=str(REPO), stdout=self.stdout, stderr=self.stderr,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        pending = set(self.ports.values())
        while pending:
            if self.proc.poll() is not None:
                raise GatewayError("gateway exited with status %s during start-up:\n%s" % (
                    self.proc.returncode, self.stderr_text()[-3000:] or self.error_text()[-3000:]))
            for p in list(pending):
                try:
                    socket.create_connection(("127.0.0.1", p), timeout=0.5).close()
                    pending.discard(p)
                except OSError:
                    pass
            if pending:
                if time.monotonic() > deadline:
                    self.stop()
                    raise GatewayError("gateway not listening on %s after %.0f s" % (
                        sorted(pending), timeout))
                time.sleep(0.02)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self):
        if self.proc.poll() is not None:
            raise AssertionError("gateway died with status %s; stderr tail:\n%s\nerror log tail:\n%s"
                                 % (self.proc.returncode, self.stderr_text()[-2000:],
                                    self.error_text()[-2000:]))

    def stop(self, grace=5.0):
        """SIGTERM, then SIGKILL after <grace> s. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.stdout, self.stderr):
            f.close()
        return self.proc.returncode

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def num_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    # ---- logs ----

    def stderr_text(self):
        try:
            return (self.workdir / "stderr.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def error_text(self):
        try:
            return self.error_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def error_lines(self):
        return [l for l in self.error_text().split("\n") if l]

    def error_mark(self):
        return len(self.error_lines())

    def errors_since(self, mark=0, level="error"):
        return [l for l in self.error_lines()[mark:] if "[%s]" % level in l]

    def assert_no_error(self, mark=0):
        errs = self.errors_since(mark)
        assert not errs, "unexpected [error] lines in the error log:\n" + "\n".join(errs[:10])

    def access_entries(self):
        """Every complete access-log line so far, parsed (a bad JSON line fails the test)."""
        try:
            with open(self.access_path, "rb") as f:
                f.seek(self._access_off)
                data = f.read()
        except FileNotFoundError:
            return list(self._access_lines)
        end = data.rfind(b"\n")
        if end >= 0:
            for line in data[: end + 1].split(b"\n"):
                if not line:
                    continue
                try:
                    self._access_lines.append(json.loads(line))
                except ValueError:
                    raise AssertionError("access log line is not JSON: %r" % line)
            self._access_off += end + 1
        return list(self._access_lines)

    def wait_access(self, pred, timeout=3.0, count=1):
        """Polls the access log until <count> entries match <pred>; returns them (or fails)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.access_entries() if pred(e)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError("no access-log entry matched within %.1f s (%d found); "
                                     "last lines: %r" % (timeout, len(found),
                                                         self.access_entries()[-3:]))
            time.sleep(0.05)

    def access_for(self, request_id, timeout=3.0):
        return self.wait_access(lambda e: e.get("request_id") == request_id, timeout)[0]


# ---- the raw client ----

class Response:
    def __init__(self):
        self.version = None
        self.status = None
        self.reason = None
        self.headers = []
        self.body = b""
        self.raw = b""
        self.chunked = False
        self.trailers = []
        self.complete = False   # False when the connection ended before the body did
        self.interim = []       # 1xx responses received before this one

    def header(self, name):
        return get(self.headers, name)

    def headers_all(self, name):
        return get_all(self.headers, name)

    def has_close(self):
        return any(t.strip().lower() == "close"
                   for v in self.headers_all("connection") for t in v.split(","))

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %s %r body=%r%s>" % (self.status, self.headers, self.body[:200],
                                               "" if self.complete else " INCOMPLETE")


class Client:
    def __init__(self, port, host="127.0.0.1", timeout=5.0, rcvbuf=None, connect=True):
        self.port = port
        self.host = host
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        if connect:
            self.sock.connect((host, port))
        self.reader = Reader(self.sock, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)
        return self

    def trickle(self, data, delay=0.01, step=1, stop_on_close=True):
        """Sends <data> <step> bytes at a time, <delay> s apart. Returns the bytes sent (stops
        early when the server closes)."""
        sent = 0
        for i in range(0, len(data), step):
            try:
                self.sock.sendall(data[i : i + step])
            except OSError:
                if stop_on_close:
                    return sent
                raise
            sent += len(data[i : i + step])
            time.sleep(delay)
        return sent

    def request(self, method="GET", target="/", headers=None, body=None, host="test",
                version="HTTP/1.1"):
        self.send(build_request(method, target, headers, body, host, version))
        return self

    def read_response(self, method="GET", timeout=None, allow_incomplete=False,
                      skip_interim=True):
        """Reads one response, strictly. A 1xx is returned as is unless <skip_interim>, in which
        case it is kept in .interim and the final response is read."""
        deadline = self.reader.deadline(timeout)
        interim = []
        while True:
            r = self._read_one(method, deadline, allow_incomplete)
            if skip_interim and 100 <= r.status < 200 and r.status != 101:
                interim.append(r)
                continue
            r.interim = interim
            return r

    def _read_one(self, method, deadline, allow_incomplete):
        r = Response()
        start_total = self.reader.total - len(self.reader.buf)
        head = self.reader.read_until(b"\r\n\r\n", deadline, limit=1 << 20)
        lines = split_head(head)
        m = STATUS_LINE_RE.match(lines[0])
        if not m:
            raise ProtocolError("bad status line: %r" % lines[0])
        r.version = "HTTP/1." + m.group(1).decode()
        r.status = int(m.group(2))
        r.reason = m.group(3).decode("latin-1")
        r.headers = parse_fields(lines[1:])
        raw = bytearray(head)
        try:
            if method == "HEAD" or r.status in (204, 304) or r.status < 200:
                if r.status in (204, 304) or r.status < 200:
                    if get_all(r.headers, "transfer-encoding"):
                        raise ProtocolError("Transfer-Encoding on a %d" % r.status)
                r.complete = True
            else:
                kind, n = framing(r.headers)
                if kind == "chunked":
                    r.chunked = True
                    body_raw = bytearray()
                    try:
                        r.body, r.trailers = read_chunked(self.reader, deadline, raw=body_raw)
                    finally:
                        raw += body_raw
                    r.complete = True
                elif kind == "length":
                    while len(self.reader.buf) < n:
                        try:
                            self.reader._fill(deadline)
                        except Closed:
                            break
                    r.body = bytes(self.reader.buf[:n])
                    del self.reader.buf[:n]
                    raw += r.body
                    r.complete = len(r.body) == n
                else:
                    r.body = self.reader.read_to_eof(deadline)
                    raw += r.body
                    r.complete = True
        except Closed:
            if not allow_incomplete:
                raise
            # keep what arrived: for chunked responses the raw bytes tell what was relayed
            raw += self.reader.buf
            self.reader.buf.clear()
        r.raw = bytes(raw)
        if not r.complete and not allow_incomplete:
            raise Closed("connection closed after %d body bytes of %r" % (len(r.body), r))
        del start_total
        return r

    def read_responses(self, n, method="GET", timeout=None):
        return [self.read_response(method, timeout) for _ in range(n)]

    def wait_closed(self, timeout=2.0):
        """True when the server closes (EOF or reset) within <timeout> with no byte before it;
        False when the connection is still open at the deadline. Extra bytes raise."""
        if self.reader.buf:
            raise AssertionError("unexpected bytes after the response: %r" % bytes(
                self.reader.buf[:200]))
        deadline = time.monotonic() + timeout
        try:
            self.reader._fill(deadline)
        except Closed:
            return True
        except Timeout:
            return False
        raise AssertionError("unexpected bytes instead of a close: %r" % bytes(
            self.reader.buf[:200]))

    def closed_at(self, timeout=5.0):
        """Waits for the server to close; returns time.monotonic() at the close, or None."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.reader._fill(deadline)
            except Closed:
                return time.monotonic()
            except Timeout:
                return None
            self.reader.buf.clear()


def build_request(method="GET", target="/", headers=None, body=None, host="test",
                  version="HTTP/1.1"):
    """Request bytes. <headers>: list of (name, value); Host first unless <host> is None; a
    Content-Length is added for a body unless a framing field is given."""
    out = bytearray(("%s %s %s\r\n" % (method, target, version)).encode("latin-1"))
    hdrs = list(headers or [])
    names = {n.lower() for n, _ in hdrs}
    if host is not None and "host" not in names:
        hdrs.insert(0, ("Host", host))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        hdrs.append(("Content-Length", str(len(body))))
    for n, v in hdrs:
        out += ("%s: %s\r\n" % (n, v)).encode("latin-1")
    out += b"\r\n"
    if body is not None:
        out += body
    return bytes(out)


def get_ok(port, target="/", **kw):
    """One request on a fresh connection; returns the response."""
    with Client(port) as c:
        c.request(target=target, **kw)
        return c.read_response(kw.get("method", "GET"))
