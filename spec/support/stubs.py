"""stubs.py: upstream stubs for the end-to-end tests, each a thread bound to 127.0.0.1:0.

Upstream  a recording HTTP/1.1 server. It keeps the raw bytes of every request it received (head
          and body as sent on the wire), parses them strictly (httpio) and answers. Keep-alive and
          pipelining are honoured. What it answers is chosen per request by the query string, so one
          stub serves many cases (the gateway forwards the query unchanged):
            ?status=N        answer N (204/304 and HEAD answers carry no body)
            ?size=N          a body of N pattern bytes (httpio.pattern_body)
            ?echo=1          the body is the request body
            ?chunked=1       chunked response (in 16 KB chunks)
            ?close=1         "Connection: close" and close after the response
            ?eof=1           no framing: the body runs until the stub closes
            ?slow=MS         the body in 10 pieces, MS milliseconds apart
            ?cut=K           announce the full body (size/framing as above) but close the
                             connection after K body bytes: no last chunk, no padding
            ?delay=MS        wait MS milliseconds before answering
            ?fault=MODE      misbehave, see FAULTS below
          or for every request by Upstream(mode=MODE). Response headers always include
          X-Stub (the stub's name), X-Conn (connection number, from 1), X-Seq (request number on
          that connection, from 1) and X-Path (the request target as received).
RefusingPort  a bound but not listening port: connecting to it is refused at once.
Blackhole     a listening socket whose accept queue is full: connecting to it times out.
"""
import socket
import struct
import threading
import time
from urllib.parse import parse_qsl

from httpio import (Closed, ProtocolError, Reader, Timeout, chunk_encode, framing, get,
                    parse_fields, pattern_body, read_chunked, split_head, REQUEST_LINE_RE)


class RecordedRequest:
    def __init__(self):
        self.raw = b""        # head + body exactly as received
        self.head = b""
        self.method = self.target = self.version = None
        self.headers = []     # [(name, value)]
        self.body = b""       # decoded
        self.raw_body = b""   # as received (chunked framing kept)
        self.chunked = False
        self.trailers = []
        self.conn = 0         # connection number on this stub, from 1
        self.seq = 0          # request number on that connection, from 1
        self.complete = False
        self.error = None     # ProtocolError text when the request was malformed
        self.time = time.monotonic()

    def header(self, name):
        return get(self.headers, name)

    def headers_all(self, name):
        return [v for (n, v) in self.headers if n.lower() == name.lower()]

    @property
    def path(self):
        return self.target.split("?", 1)[0] if self.target else None

    @property
    def query(self):
        t = self.target or ""
        return dict(parse_qsl(t.split("?", 1)[1], keep_blank_values=True)) if "?" in t else {}

    def __repr__(self):
        return "<RecordedRequest %s %s conn=%d seq=%d %s>" % (
            self.method, self.target, self.conn, self.seq, "ok" if self.complete else self.error)


def read_request(reader, rec, deadline_s=30.0, on_continue=None):
    """Reads one request into <rec>. Returns False on a clean EOF before any byte."""
    deadline = time.monotonic() + deadline_s
    try:
        head = reader.read_until(b"\r\n\r\n", deadline, limit=1 << 20)
    except Closed:
        if not reader.buf:
            return False
        raise
    rec.head = head
    raw = bytearray(head)
    try:
        lines = split_head(head)
        m = REQUEST_LINE_RE.match(lines[0])
        if not m:
            raise ProtocolError("bad request line: %r" % lines[0])
        rec.method = m.group(1).decode()
        rec.target = m.group(2).decode("latin-1")
        rec.version = "HTTP/1." + m.group(3).decode()
        rec.headers = parse_fields(lines[1:])
        kind, n = framing(rec.headers)
        if (get(rec.headers, "expect") or "").lower() == "100-continue" and on_continue:
            on_continue()
        if kind == "chunked":
            rec.chunked = True
            body_raw = bytearray()
            try:
                rec.body, rec.trailers = read_chunked(reader, deadline, raw=body_raw)
            finally:
                raw += body_raw
                rec.raw_body = bytes(body_raw)
        elif kind == "length":
            try:
                rec.body = reader.read_exact(n, deadline)
            except Closed:
                rec.raw_body = bytes(reader.buf)
                raw += reader.buf
                raise
            rec.raw_body = rec.body
            raw += rec.body
    finally:
        rec.raw = bytes(raw)
    rec.complete = True
    return True


def response_bytes(status, headers, body, chunked=False, reason=None):
    reason = reason if reason is not None else REASONS.get(status, "Whatever")
    out = bytearray(b"HTTP/1.1 %d %s\r\n" % (status, reason.encode()))
    for n, v in headers:
        out += ("%s: %s\r\n" % (n, v)).encode("latin-1")
    out += b"\r\n"
    if body is not None:
        out += chunk_encode(body, 16384) if chunked else body
    return bytes(out)


REASONS = {100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
           400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class ConnCtx:
    """One accepted connection, as seen by response handlers."""

    def __init__(self, stub, sock, number):
        self.stub = stub
        self.sock = sock
        self.number = number
        self.reader = Reader(sock, timeout=30.0, sink=stub.raw)
        self.seq = 0
        self.closed = False

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            # Drain what the peer still sends for a moment so that close() does not turn into
            # an RST that could destroy the bytes we just sent.
            try:
                self.sock.settimeout(0.2)
                while self.sock.recv(65536):
                    pass
            except OSError:
                pass
            self.sock.close()

    def reset(self):
        if not self.closed:
            self.closed = True
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()

    def hang(self):
        """Never answer: wait until the peer closes or the stub stops."""
        self.sock.settimeout(0.1)
        while not self.stub.stopping.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            self.stub.raw += data
        self.closed = True
        self.sock.close()


# ---- fault modes: each takes (ctx, req) and returns True to keep the connection ----

def _hang(ctx, req):
    ctx.hang()
    return False


def _reset(ctx, req):
    ctx.reset()
    return False


def _empty(ctx, req):
    ctx.close()
    return False


def _send_then(data, then="close"):
    def fault(ctx, req):
        ctx.send(data)
        if then == "hang":
            ctx.hang()
        else:
            ctx.close()
        return False
    return fault


def _slow_then_hang(ctx, req):
    ctx.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    ctx.hang()
    return False


def _interim(ctx, req):
    ctx.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    time.sleep(0.05)
    return ctx.stub.answer(ctx, req)


def _drop_second(ctx, req):
    # Answers the first request of each connection, then closes when the next one arrives.
    if req.seq >= 2:
        ctx.close()
        return False
    return ctx.stub.answer(ctx, req)


def _silent_close(ctx, req):
    ctx.stub.answer(ctx, req)
    ctx.close()
    return False


def _trickle(ctx, req):
    body = b"trickled response body\n"
    data = response_bytes(200, [("Content-Length", str(len(body))), ("X-Stub", ctx.stub.name)],
                          body)
    for i in range(len(data)):
        ctx.send(data[i : i + 1])
        time.sleep(0.002)
    return True


BIG_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
            + b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"y" * 100) for i in range(2500))
            + b"\r\nok")

FAULTS = {
    "hang": _hang,
    "reset": _reset,
    "empty": _empty,
    "garbage": _send_then(b"lol\r\n\r\n"),
    "binary": _send_then(bytes(range(256)) * 8),
    "truncate": _send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"),
    "clte": _send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
                       b"\r\n5\r\nhello\r\n0\r\n\r\n", "hang"),
    "twocl": _send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
                        b"hello!", "hang"),
    "cllist": _send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", "hang"),
    "badcl": _send_then(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello", "hang"),
    "tegzip": _send_then(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked, gzip\r\n\r\n"
                         b"5\r\nhello\r\n0\r\n\r\n", "hang"),
    "bighead": _send_then(BIG_HEAD, "hang"),
    "cutchunk": _send_then(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nhello\r\n10\r\nabc"),
    "badchunk": _send_then(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n", "hang"),
    "hangbody": _slow_then_hang,
    "badstatus": _send_then(b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok", "hang"),
    "badversion": _send_then(b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "hang"),
    "obsfold": _send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\r\n b\r\n\r\nok",
                          "hang"),
    "spacecolon": _send_then(b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", "hang"),
    "nulvalue": _send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\x00b\r\n\r\nok",
                           "hang"),
    "interim": _interim,
    "dropsecond": _drop_second,
    "silentclose": _silent_close,
    "trickle": _trickle,
}


class Upstream:
    """A recording HTTP/1.1 upstream on 127.0.0.1:<random port>."""

    def __init__(self, name="up", mode=None, status=200, headers=(), body=None, port=0,
                 host="127.0.0.1"):
        """<port>: 0 for a free one; a given port lets a stub take over the port of a
        RefusingPort that was stopped (a target that comes back)."""
        self.name = name
        self.mode = mode
        self.status = status
        self.extra_headers = list(headers)
        self.body = body
        self.requests = []   # complete requests, in arrival order
        self.partial = []    # requests cut short or malformed
        self.raw = bytearray()  # every byte received, on every connection
        self.connections = 0
        self.stopping = threading.Event()
        self.cond = threading.Condition()
        self.socks = []
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(128)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.address = "%s:%d" % (host, self.port)
        self.thread = threading.Thread(target=self._accept_loop, daemon=True,
                                       name="stub-%s" % name)
        self.thread.start()

    # ---- inspection ----

    def snapshot(self):
        """Counters to compare against later (see since())."""
        with self.cond:
            return (len(self.requests), len(self.partial), len(self.raw), self.connections)

    def since(self, snap):
        """(requests, partial requests, raw bytes) received after <snap>."""
        with self.cond:
            return (self.requests[snap[0]:], self.partial[snap[1]:], bytes(self.raw[snap[2]:]))

    def wait_requests(self, n, timeout=5.0, snap=None):
        """Waits until at least <n> complete requests arrived (after <snap> if given)."""
        base = snap[0] if snap else 0
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.requests) - base < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return self.requests[base:]

    def last(self):
        with self.cond:
            return self.requests[-1] if self.requests else None

    # ---- serving ----

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self.cond:
                self.connections += 1
                number = self.connections
                self.socks.append(sock)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(sock, number), daemon=True,
                             name="stub-%s-%d" % (self.name, number)).start()

    def _serve(self, sock, number):
        self._serve_conn(ConnCtx(self, sock, number), number)

    def _before_answer(self, ctx, rec):
        """Hook for subclasses: called with each complete request before it is answered."""

    def _serve_conn(self, ctx, number):
        """Reads, records and answers requests on one connection (<ctx>: a ConnCtx) until it
        closes."""
        try:
            while not ctx.closed and not self.stopping.is_set():
                rec = RecordedRequest()
                rec.conn = number
                rec.seq = ctx.seq + 1
                try:
                    if not read_request(ctx.reader, rec, on_continue=lambda: ctx.send(
                            b"HTTP/1.1 100 Continue\r\n\r\n")):
                        break
                except (Closed, Timeout, ProtocolError) as e:
                    if rec.head or ctx.reader.buf:
                        rec.error = "%s: %s" % (type(e).__name__, e)
                        with self.cond:
                            self.partial.append(rec)
                            self.cond.notify_all()
                    if isinstance(e, ProtocolError):
                        ctx.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                    break
                ctx.seq += 1
                with self.cond:
                    self.requests.append(rec)
                    self.cond.notify_all()
                mode = rec.query.get("fault") or self.mode
                self._before_answer(ctx, rec)
                if mode:
                    keep = FAULTS[mode](ctx, rec)
                else:
                    keep = self.answer(ctx, rec)
                if not keep:
                    break
        except Exception:  # a stub must never take the test process down
            pass
        finally:
            if not ctx.closed:
                ctx.close()

    def answer(self, ctx, req):
        """The normal answer (query-controlled). Returns True to keep the connection."""
        q = req.query
        if "delay" in q:
            time.sleep(int(q["delay"]) / 1000.0)
        status = int(q.get("status", self.status))
        if "size" in q:
            body = None
            size = int(q["size"])
        elif "echo" in q:
            body, size = req.body, len(req.body)
        else:
            body = self.body if self.body is not None else (
                b"hello from %s\n" % self.name.encode())
            size = len(body)
        headers = [("Content-Type", "text/plain"), ("X-Stub", self.name),
                   ("X-Conn", str(ctx.number)), ("X-Seq", str(req.seq)), ("X-Path", req.target)]
        headers += self.extra_headers
        no_body = req.method == "HEAD" or status in (204, 304) or status < 200
        wants_close = ("close" in q or "eof" in q
                       or (req.header("connection") or "").lower() == "close"
                       or (req.version == "HTTP/1.0"
                           and (req.header("connection") or "").lower() != "keep-alive"))
        chunked = "chunked" in q and not no_body and status not in (204, 304)
        if status in (204, 304) or status < 200:
            pass
        elif chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        elif "eof" not in q:
            headers.append(("Content-Length", str(size)))
        if wants_close:
            headers.append(("Connection", "close"))
        ctx.send(response_bytes(status, headers, None))
        if not no_body:
            self._send_body(ctx, q, body, size, chunked)
        if "cut" in q and not no_body:
            ctx.close()
            return False
        if wants_close:
            ctx.close()
            return False
        return True

    def _send_body(self, ctx, q, body, size, chunked):
        slow = int(q.get("slow", 0))
        cut = int(q["cut"]) if "cut" in q else None
        piece = 65536 if not slow else max(1, size // 10)
        sent = 0
        while sent < size and not ctx.closed:
            n = min(piece, size - sent)
            data = body[sent : sent + n] if body is not None else pattern_body(n, sent)
            if chunked:
                framed = b"%x\r\n" % n + data + b"\r\n"
            else:
                framed = data
            if cut is not None and sent + n >= cut:
                # the chunk (or piece) in which the cut falls: its head, then K - sent bytes
                keep = cut - sent
                ctx.send((b"%x\r\n" % n if chunked else b"") + data[:keep])
                return
            ctx.send(framed)
            sent += n
            if slow:
                time.sleep(slow / 1000.0)
        if chunked:
            ctx.send(b"0\r\n\r\n")

    def stop(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.cond:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        self.thread.join(2)


class RefusingPort:
    """A port bound on 127.0.0.1 but not listening: connections are refused (RST) at once.
    Holding the bound socket keeps anyone else from taking the port during the test."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port

    def stop(self):
        self.sock.close()


class Blackhole:
    """A listening socket with a full accept queue: new connections get no SYN-ACK, so
    connecting to it times out (Linux drops SYNs when the accept queue is full)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.fillers = []
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(s)
        time.sleep(0.05)

    def stop(self):
        for s in self.fillers:
            s.close()
        self.sock.close()
