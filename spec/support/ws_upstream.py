"""ws_upstream.py: WebSocket upstreams for spec/e2e/test_websocket.py, each served from threads on
a free port of 127.0.0.1 and ended with stop().

EchoServer   python3-websockets (10.x, asyncio in a thread) without compression limits or
             keepalive pings. Behaviour by the last segment of the request path (the query is
             ignored):
               .../headers      first sends its handshake request's header fields as one JSON
                                text message ([[name, value], ...]), then echoes
               .../close-first  sends close 1000 "bye" right after the handshake
               .../subproto     selects the first subprotocol the client offered
               anything else    echoes: text as text, binary as binary
             It records every connection (EchoConn: path, headers, subprotocol, messages
             received, the close code and reason it received, done when it ended). A test
             names its connection with a query argument `c=<id>` and finds it with
             conn(id); count() and messages() give totals.
             permessage-deflate stays enabled (the library's default), so an offer the gateway
             failed to strip would be accepted.

RawUpstream  a raw TCP server driven from the test: next_conn() hands over each accepted
             connection (RawConn) to script by hand: read_request() (strict HTTP head), then
             answer anything (respond(), accept() with a right or wrong Sec-WebSocket-Accept,
             extensions, subprotocols, missing fields), then frames with the wsfix.FrameIO
             methods (frames from the gateway must be masked; ours are not unless asked), or
             close()/abort() the TCP connection. A reader thread records every byte received
             (RawConn.received) until EOF, so a test can assert exactly what reached it (and that
             nothing followed).
"""
import asyncio
import json
import queue
import socket
import struct
import threading
import time
from urllib.parse import parse_qs

import websockets
from websockets.legacy.server import WebSocketServerProtocol

import wsfix
from httpio import Closed, ProtocolError, Timeout, framing, get, get_all, parse_fields, split_head
from httpio import REQUEST_LINE_RE


# ---- the python-websockets echo server ----

class EchoConn:
    def __init__(self, path, headers, subprotocol):
        self.path = path
        self.headers = headers          # [(name, value)] as received
        self.subprotocol = subprotocol
        self.messages = []              # str (text) or bytes (binary), in arrival order
        self.close_code = None          # the close code received (1006: none, dropped)
        self.close_reason = None
        self.done = threading.Event()
        q = path.split("?", 1)[1] if "?" in path else ""
        self.id = (parse_qs(q).get("c") or [None])[0]

    def header(self, name):
        return get(self.headers, name)

    def headers_all(self, name):
        return get_all(self.headers, name)

    def wait_done(self, timeout=3.0):
        assert self.done.wait(timeout), (
            "the upstream's connection %s did not end within %.1f s" % (self.path, timeout))
        return self

    def __repr__(self):
        return "<EchoConn %s msgs=%d close=%r %r%s>" % (
            self.path, len(self.messages), self.close_code, self.close_reason,
            " done" if self.done.is_set() else "")


def _segment(path):
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


class _Proto(WebSocketServerProtocol):
    def select_subprotocol(self, client_subprotocols, server_subprotocols):
        if _segment(self.path or "") == "subproto" and client_subprotocols:
            return client_subprotocols[0]
        return None


class EchoServer:
    def __init__(self):
        self.conns = []
        self.cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self.port = None
        started = threading.Event()
        failure = []

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                self.server = self.loop.run_until_complete(self._start())
                self.port = self.server.sockets[0].getsockname()[1]
            except BaseException as e:  # noqa: B902 (reported to the constructor)
                failure.append(e)
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True, name="ws-echo")
        self.thread.start()
        started.wait(10)
        if failure or self.port is None:
            raise RuntimeError("echo server did not start: %r" % failure)
        self.address = "127.0.0.1:%d" % self.port

    async def _start(self):
        return await websockets.serve(
            self._handler, "127.0.0.1", 0, create_protocol=_Proto,
            subprotocols=["_any_"],          # so that select_subprotocol is asked
            ping_interval=None, max_size=None, max_queue=None, close_timeout=2)

    async def _handler(self, ws):
        rec = EchoConn(ws.path, list(ws.request_headers.raw_items()), ws.subprotocol)
        with self.cond:
            self.conns.append(rec)
            self.cond.notify_all()
        what = _segment(ws.path)
        try:
            if what == "headers":
                await ws.send(json.dumps(rec.headers))
            if what == "close-first":
                await ws.close(1000, "bye")
            else:
                async for msg in ws:
                    with self.cond:
                        rec.messages.append(msg)
                        self.cond.notify_all()
                    await ws.send(msg)
        except websockets.ConnectionClosed:
            pass
        finally:
            try:
                await ws.wait_closed()
            finally:
                rec.close_code, rec.close_reason = ws.close_code, ws.close_reason
                with self.cond:
                    rec.done.set()
                    self.cond.notify_all()

    # -- inspection --

    def conn(self, cid, timeout=3.0):
        """The connection whose path has `c=<cid>` (waits for it)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for c in self.conns:
                    if c.id == cid:
                        return c
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the echo upstream saw no connection c=%s within %.1f s "
                                         "(paths: %r)" % (cid, timeout,
                                                          [c.path for c in self.conns[-5:]]))
                self.cond.wait(left)

    def has_conn(self, cid):
        with self.cond:
            return any(c.id == cid for c in self.conns)

    def count(self):
        with self.cond:
            return len(self.conns)

    def messages(self):
        with self.cond:
            return sum(len(c.messages) for c in self.conns)

    def stop(self):
        async def close():
            self.server.close()
            await self.server.wait_closed()
        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        except Exception:  # noqa: BLE001 (best effort)
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ---- the raw upstream ----

class RawRequest:
    def __init__(self, raw, method, target, version, headers, body):
        self.raw, self.method, self.target, self.version = raw, method, target, version
        self.headers, self.body = headers, body

    def header(self, name):
        return get(self.headers, name)

    def headers_all(self, name):
        return get_all(self.headers, name)

    def __repr__(self):
        return "<RawRequest %s %s %r>" % (self.method, self.target, self.headers)


class RawConn(wsfix.FrameIO):
    """One accepted connection. Every byte received is kept in .received; reads consume from a
    position in it."""

    masking = False   # the gateway's frames (to us, a server) must be masked; ours must not be

    def __init__(self, sock, number, timeout=5.0):
        self.sock = sock
        self.number = number
        self.timeout = timeout
        self.data = bytearray()
        self.pos = 0
        self.eof = False
        self.reset = False
        self.cond = threading.Condition()
        self._init_frames()
        self.thread = threading.Thread(target=self._reader, daemon=True,
                                       name="raw-up-%d" % number)
        self.thread.start()

    def _reader(self):
        while True:
            try:
                chunk = self.sock.recv(262144)
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                with self.cond:
                    self.eof = self.reset = True
                    self.cond.notify_all()
                return
            except OSError:
                with self.cond:
                    self.eof = True
                    self.cond.notify_all()
                return
            with self.cond:
                if not chunk:
                    self.eof = True
                    self.cond.notify_all()
                    return
                self.data += chunk
                self.cond.notify_all()

    @property
    def received(self):
        """Every byte received so far."""
        with self.cond:
            return bytes(self.data)

    def unread(self):
        with self.cond:
            return bytes(self.data[self.pos:])

    # -- FrameIO's byte source --

    def _send(self, data):
        self.sock.sendall(data)

    def _read_exact(self, n, deadline):
        with self.cond:
            while len(self.data) - self.pos < n:
                if self.eof:
                    raise Closed("upstream side: connection closed by the gateway%s" % (
                        " (reset)" if self.reset else ""))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout("upstream side: timed out waiting for %d bytes" % n)
                self.cond.wait(left)
            out = bytes(self.data[self.pos:self.pos + n])
            self.pos += n
            return out

    def _at_eof(self, deadline):
        with self.cond:
            while True:
                if len(self.data) > self.pos:
                    raise AssertionError("upstream side: unexpected bytes instead of a TCP close: "
                                         "%r" % bytes(self.data[self.pos:self.pos + 100]))
                if self.eof:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)

    def wait_eof(self, timeout=3.0):
        """True when the gateway closed the connection within <timeout> (bytes not yet read
        do not matter here: see .received)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def _read_until(self, delim, deadline, limit=1 << 20):
        with self.cond:
            while True:
                i = self.data.find(delim, self.pos)
                if i >= 0:
                    out = bytes(self.data[self.pos:i + len(delim)])
                    self.pos = i + len(delim)
                    return out
                if len(self.data) - self.pos > limit:
                    raise ProtocolError("no %r within %d bytes" % (delim, limit))
                if self.eof:
                    raise Closed("upstream side: connection closed by the gateway")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout("upstream side: timed out waiting for a request head")
                self.cond.wait(left)

    # -- HTTP --

    def read_request(self, timeout=None):
        """One request, parsed strictly (a Content-Length body is read; chunked is refused)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        head = self._read_until(b"\r\n\r\n", deadline)
        lines = split_head(head)
        m = REQUEST_LINE_RE.match(lines[0])
        if not m:
            raise ProtocolError("bad request line: %r" % lines[0])
        headers = parse_fields(lines[1:])
        kind, n = framing(headers)
        if kind == "chunked":
            raise ProtocolError("chunked request to the raw upstream: %r" % head)
        body = self._read_exact(n, deadline) if kind == "length" and n else b""
        return RawRequest(head + body, m.group(1).decode(), m.group(2).decode("latin-1"),
                          "HTTP/1." + m.group(3).decode(), headers, body)

    def respond(self, status, headers=(), body=b"", reason="Whatever"):
        """A plain response; Content-Length is added unless a framing field is given."""
        names = {n.lower() for n, _ in headers}
        hdrs = list(headers)
        if "content-length" not in names and "transfer-encoding" not in names:
            hdrs.append(("Content-Length", str(len(body))))
        out = bytearray(b"HTTP/1.1 %d %s\r\n" % (status, reason.encode()))
        for n, v in hdrs:
            out += ("%s: %s\r\n" % (n, v)).encode("latin-1")
        self._send(bytes(out) + b"\r\n" + body)

    def accept(self, req, protocol=None, extensions=None, accept=None, omit=(), extra=()):
        """Answers the upgrade request <req> with a 101: the right Sec-WebSocket-Accept unless
        <accept> is given; <omit> (lower case "upgrade", "connection", "accept") leaves a field
        out."""
        key = req.header("sec-websocket-key") or ""
        h = []
        if "upgrade" not in omit:
            h.append(("Upgrade", "websocket"))
        if "connection" not in omit:
            h.append(("Connection", "Upgrade"))
        if "accept" not in omit:
            h.append(("Sec-WebSocket-Accept", accept if accept is not None
                      else wsfix.accept_for(key)))
        if protocol is not None:
            h.append(("Sec-WebSocket-Protocol", protocol))
        if extensions is not None:
            h.append(("Sec-WebSocket-Extensions", extensions))
        h += list(extra)
        out = bytearray(b"HTTP/1.1 101 Switching Protocols\r\n")
        for n, v in h:
            out += ("%s: %s\r\n" % (n, v)).encode("latin-1")
        self._send(bytes(out) + b"\r\n")

    # -- TCP --

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def abort(self):
        """Closes with a TCP reset. (The reader thread blocked in recv() holds the socket: a
        plain close() would not release it, so SHUT_RD, which sends nothing, wakes it first.)"""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        self.thread.join(2)
        self.sock.close()


class RawUpstream:
    def __init__(self, name="raw"):
        self.name = name
        self.conns = []
        self.queue = queue.Queue()
        self.cond = threading.Condition()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True,
                                       name="raw-up-%s" % name)
        self.thread.start()

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.cond:
                c = RawConn(sock, len(self.conns) + 1)
                self.conns.append(c)
            self.queue.put(c)

    @property
    def connections(self):
        with self.cond:
            return len(self.conns)

    def next_conn(self, timeout=3.0):
        """The next connection accepted (in order), waiting up to <timeout> s for it."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the raw upstream %s got no new connection within %.1f s"
                                 % (self.name, timeout))

    def no_new_conn(self, seconds=0.2):
        """True when no connection arrives (and none is waiting) for <seconds>."""
        try:
            c = self.queue.get(timeout=seconds)
        except queue.Empty:
            return True
        self.queue.put(c)
        return False

    def drain(self):
        """Closes and forgets connections accepted but not taken by next_conn."""
        while True:
            try:
                self.queue.get_nowait().close()
            except queue.Empty:
                return

    def stop(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.cond:
            conns = list(self.conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        self.thread.join(2)
