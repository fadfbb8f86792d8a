"""gw.py: start and stop the real gateway with a temporary config, read its logs, and talk to it
with a raw-socket client.

Gateway(config, workdir)   writes <workdir>/gw.yaml, runs `./passerelle -c <workdir>/gw.yaml` from
                           the repository root, waits until every listener accepts connections
                           (10 s), and stop() ends it by PID (SIGTERM, SIGKILL after 5 s).
                           The error log goes to <workdir>/error.log (level info) and the access
                           log to <workdir>/access.log (json) unless the config says otherwise;
                           a config dict also gets `workers: 1` and its own control socket
                           (<workdir>/control.sock) unless it names them.
                           ./passerelle is the master: reload(), status(), worker_pids() and
                           signal() talk to it; stop() also makes sure no worker outlives it
                           (survivors are killed by PID and reported by the teardown check).
                           rss_kb() and num_fds() measure serving_pid(): the worker when there
                           is exactly one, else the master.
Client(port)               raw bytes in, strictly parsed responses out (httpio), close detection.
config(...) / listener()   build config dicts; to_yaml() turns them into block YAML.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
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


def wait_for(fn, timeout=3.0, what="condition", interval=0.02):
    """Polls fn() until it returns a true value, which is returned; fails the test after
    <timeout> s, naming <what> and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("%s: not within %.1f s (last: %r)" % (what, timeout, v))
        time.sleep(interval)


# ---- processes ----

def _control_socket_path(workdir):
    """<workdir>/control.sock, or a short directory under /tmp when that path would not fit in
    sun_path (108 bytes with the NUL)."""
    p = Path(workdir) / "control.sock"
    if len(str(p).encode()) < 100:
        return p
    return Path(tempfile.mkdtemp(prefix="pgw-")) / "control.sock"


def _stat_fields(pid):
    """(state, ppid, starttime) from /proc/<pid>/stat, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    rest = data[data.rfind(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[19])


def _alive(pid, starttime):
    """True while <pid> is the same process (same start time) and not a zombie."""
    st = _stat_fields(pid)
    return st is not None and st[2] == starttime and st[0] not in ("Z", "X")


def _children(ppid):
    """{pid: starttime} of the live (non-zombie) children of <ppid>."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _stat_fields(int(name))
        if st and st[1] == ppid and st[0] not in ("Z", "X"):
            out[int(name)] = st[2]
    return out


def socket_owner(local_port, peer_port, pids):
    """Which of <pids> holds the TCP socket whose local port is <local_port> and whose peer
    port is <peer_port> (e.g. the gateway side of a client connection), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().split("\n")[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            lp = int(fields[1].rsplit(":", 1)[1], 16)
            rp = int(fields[2].rsplit(":", 1)[1], 16)
            if lp == local_port and rp == peer_port:
                inodes.add("socket:[%s]" % fields[9])
    if not inodes:
        return None
    for pid in pids:
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) in inodes:
                    return pid
            except OSError:
                pass
    return None


def connect_on_worker(port, pid, pids, connect):
    """Calls connect() (which opens a connection to <port> and returns an object with .sock)
    while every worker of <pids> other than <pid> is stopped (SIGSTOP), so the kernel can only
    hand the connection to <pid>; the others continue before this returns, even on error.
    Which worker accepts is otherwise the kernel's choice: a test that needs a connection on a
    given worker must not rely on trying until chance gives it one."""
    others = [p for p in pids if p != pid]
    for p in others:
        os.kill(p, signal.SIGSTOP)
    try:
        conn = connect()
        found = []
        wait_for(lambda: found.append(socket_owner(port, conn.sock.getsockname()[1], [pid])) or
                 found[-1] is not None, what="worker %d to hold the connection" % pid)
        return conn
    finally:
        for p in others:
            os.kill(p, signal.SIGCONT)


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
        self.control_path = _control_socket_path(self.workdir)
        self.cfg = None
        self.ports = {}
        self.write_config(cfg, first=True)
        self.args = args
        self.proc = None
        self.pid = None
        self.exited_expected = False  # the test stopped the gateway itself (wait_exit() sets it;
        #                               set it when sending the signal, so a failed assert
        #                               before wait_exit() does not add a teardown error)
        self.leftover_workers = []    # workers still alive after the master exited (stop())
        self._seen_workers = {}       # pid -> start time, of every worker seen
        self._access_lines = []
        self._access_off = 0
        if start:
            self.start()

    def _defaults(self, cfg):
        cfg = dict(cfg)
        cfg.setdefault("error_log", {"path": str(self.error_path), "level": "info"})
        # flush: 0 writes each line as its request ends: tests wait for lines, not for a timer
        cfg.setdefault("access_log", {"path": str(self.access_path), "format": "json", "flush": "0"})
        cfg.setdefault("workers", 1)
        cfg.setdefault("control", {"socket": str(self.control_path)})
        return cfg

    def write_config(self, cfg, first=False):
        """(Re)writes gw.yaml from a dict (defaults added as at start) or YAML text, and updates
        .cfg and .ports. Text is used as is at start; when rewriting for a reload, text gets the
        running config's workers/control/error_log/access_log keys that it lacks (so a reload
        does not move the logs or the control socket by accident). Returns the text written."""
        if isinstance(cfg, dict):
            cfg = self._defaults(cfg)
            self.cfg = cfg
            self._carried = {k: cfg[k] for k in ("workers", "control", "error_log", "access_log")}
            self.ports = {l["name"]: int(l["address"].rsplit(":", 1)[1]) for l in cfg["listeners"]}
            text = to_yaml(cfg) + "\n"
        else:
            text = cfg
            if first:
                self._carried = {}
            for key, value in self._carried.items():
                if not re.search(r"(?m)^%s\s*:" % key, text):
                    text = (text if text.endswith("\n") or not text else text + "\n") \
                        + to_yaml({key: value}) + "\n"
            self.cfg = None
            ports = {m.group(1): int(m.group(2)) for m in re.finditer(
                r"name:\s*\"?(\w+)\"?,\s*address:\s*\"?[\d.]+:(\d+)", text)}
            ports = ports or {m.group(1): int(m.group(2)) for m in re.finditer(
                r"-\s+name:\s*\"?(\w+)\"?\s*\n\s+address:\s*\"?[\d.]+:(\d+)", text)}
            if ports or first:
                self.ports = ports
        self.config_path.write_text(text)
        return text

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
        try:
            self.wait_ports(timeout)
        except GatewayError:
            self.stop()
            raise
        return self

    def wait_ports(self, timeout=10.0, ports=None):
        """Waits until every listener (or <ports>) accepts connections."""
        deadline = time.monotonic() + timeout
        pending = set(self.ports.values() if ports is None else ports)
        while pending:
            if self.proc.poll() is not None:
                raise GatewayError("gateway exited with status %s:\n%s" % (
                    self.proc.returncode, self.stderr_text()[-3000:] or self.error_text()[-3000:]))
            for p in list(pending):
                try:
                    socket.create_connection(("127.0.0.1", p), timeout=0.5).close()
                    pending.discard(p)
                except OSError:
                    pass
            if pending:
                if time.monotonic() > deadline:
                    raise GatewayError("gateway not listening on %s after %.1f s" % (
                        sorted(pending), timeout))
                time.sleep(0.02)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self):
        if self.proc.poll() is not None:
            raise AssertionError("gateway died with status %s; stderr tail:\n%s\nerror log tail:\n%s"
                                 % (self.proc.returncode, self.stderr_text()[-2000:],
                                    self.error_text()[-2000:]))

    def stop(self, grace=5.0):
        """SIGTERM, then SIGKILL after <grace> s. Returns the exit status. Workers still alive
        1 s after the master exited are killed by PID and listed in .leftover_workers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.worker_pids()  # remember the current workers
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reap_workers()
        for f in (self.stdout, self.stderr):
            f.close()
        self._remove_short_socket_dir()
        return self.proc.returncode

    def wait_exit(self, timeout):
        """For a test that stops the gateway itself (a signal): waits for the master to exit
        and returns its status, or None if it is still running after <timeout> s. The teardown
        check then accepts that it is no longer running."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.exited_expected = True
        return status

    def _reap_workers(self, grace=1.0):
        alive = self.surviving_workers(grace)
        for p in alive:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        self.leftover_workers = sorted(set(self.leftover_workers) | set(alive))

    def surviving_workers(self, timeout=1.0):
        """Workers seen so far that are still alive after <timeout> s (use once the master
        has exited)."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [p for p, st in self._seen_workers.items() if _alive(p, st)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.02)

    def _remove_short_socket_dir(self):
        d = self.control_path.parent
        if (d != self.workdir and d.name.startswith("pgw-")
                and str(d.parent) == tempfile.gettempdir()):
            shutil.rmtree(d, ignore_errors=True)

    # ---- master and workers ----

    def signal(self, sig):
        """Sends <sig> to the master."""
        os.kill(self.pid, sig)

    def worker_pids(self):
        """PIDs of the master's live children (zombies excluded), sorted."""
        kids = _children(self.pid)
        for p, st in kids.items():
            self._seen_workers.setdefault(p, st)
        return sorted(kids)

    def wait_workers(self, n, timeout=5.0, exclude=()):
        """Waits until the master has <n> live children, none of them in <exclude>; returns
        their PIDs (or fails)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.worker_pids()
            if len(pids) == n and not set(pids) & set(exclude):
                return pids
            if time.monotonic() > deadline:
                raise AssertionError("after %.1f s the master (pid %s) has workers %r, want %d%s"
                                     % (timeout, self.pid, pids, n,
                                        " none of %r" % (list(exclude),) if exclude else ""))
            time.sleep(0.02)

    def cli(self, *args, socket_path=None, timeout=10.0):
        """Runs `passerelle <args> -c gw.yaml` (or `-s <socket_path>`) from the repository
        root; returns the CompletedProcess (text)."""
        where = ["-s", str(socket_path)] if socket_path else ["-c", str(self.config_path)]
        return subprocess.run([str(BINARY)] + list(args) + where, cwd=str(REPO),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)

    def reload(self, cfg=None, **kw):
        """Rewrites gw.yaml from <cfg> if given (see write_config), then runs
        `passerelle reload -c gw.yaml`. Returns the CompletedProcess."""
        if cfg is not None:
            self.write_config(cfg)
        return self.cli("reload", **kw)

    def status(self, **kw):
        """`passerelle status -c gw.yaml`, parsed (fails the test on a non-zero exit or
        output that is not one JSON object)."""
        cp = self.cli("status", **kw)
        assert cp.returncode == 0, "passerelle status exited %d; stderr: %r; stdout: %r" % (
            cp.returncode, cp.stderr[-2000:], cp.stdout[-2000:])
        try:
            st = json.loads(cp.stdout)
        except ValueError:
            raise AssertionError("passerelle status printed no JSON object: %r" % cp.stdout)
        assert isinstance(st, dict), "passerelle status printed %r, not an object" % (st,)
        return st

    def serving_pid(self):
        """The process that serves connections: the only worker when there is exactly one
        (the default `workers: 1`), else the master. rss_kb() and num_fds() measure it."""
        pids = self.worker_pids() if self.pid is not None else []
        return pids[0] if len(pids) == 1 else self.pid

    def rss_kb(self):
        with open("/proc/%d/status" % self.serving_pid()) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def num_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.serving_pid()))

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
