"""wsfix.py: RFC 6455 by hand for the WebSocket end-to-end tests (spec/e2e/test_websocket.py).

Frames
  frame(opcode, payload, fin=True, mask=True, rsv=0, length_override=None, mask_key=None)
                  the bytes of one frame, built by hand: 7-bit, 16-bit and 64-bit lengths (the
                  length field may lie: <length_override>, e.g. 1 << 63 for the top-bit case),
                  masked with a random or given key, or not masked, any RSV bits and opcode.
  close_payload(code, reason)   a close frame's payload (code None: empty).
  read_frame(read_exact, deadline, masked)
                  parses one frame strictly from a byte source: RSV bits 0, known opcodes,
                  control frames final and at most 125 bytes, minimal length encoding, no 64-bit
                  length with the top bit set, the mask bit as required (frames from a server
                  must not be masked, frames to a server must be), close payloads of 0 or 2+
                  bytes with a valid code and a UTF-8 reason. Anything else is a ProtocolError.
                  Returns a Frame (fin, opcode, payload; close frames also code, reason).

FrameIO           the frame conversation shared by the client below and the raw upstream's
                  connections (ws_upstream.RawConn): send_frame / send_text / send_binary /
                  send_ping / send_pong / send_close, recv_frame, recv_message (fragments
                  reassembled, nothing answered automatically), expect_close(code) (reads to the
                  close frame, checks its code, answers it once, then waits for the peer to close
                  the TCP connection), expect_eof, expect_silence.

WSClient          a raw client over a socket: handshake() sends a real upgrade request and parses
                  the response strictly (gw.Client's reader); then the FrameIO methods.
handshake(port, path, ...)   one handshake on a fresh connection: (status, headers, leftover
                  bytes); the connection is closed.
connect(port, path, ...)     a WSClient whose handshake succeeded (101 checked, Accept checked).
"""
import base64
import hashlib
import os
import socket
import struct
import time
import uuid

from gw import Client, build_request
from httpio import Closed, ProtocolError, Timeout

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
OPNAMES = {0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}

VALID_CLOSE_CODES = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))


# ---- values ----

def new_key():
    """A fresh Sec-WebSocket-Key (16 random bytes, base64)."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key):
    """The Sec-WebSocket-Accept for <key> (str)."""
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + GUID).digest()).decode()


def unique_id():
    return uuid.uuid4().hex[:12]


def tokens(value):
    """The comma-separated tokens of a header value, lower-cased."""
    return [t.strip().lower() for t in (value or "").split(",") if t.strip()]


# ---- frames ----

def mask_bytes(data, key):
    """<data> XORed with the 4-byte <key> (fast for large payloads)."""
    n = len(data)
    if not n:
        return b""
    reps = key * (n // 4 + 1)
    return (int.from_bytes(data, "big") ^ int.from_bytes(reps[:n], "big")).to_bytes(n, "big")


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length_override=None, mask_key=None):
    """The bytes of one frame. <payload>: bytes or str (UTF-8). <rsv>: 0-7 (RSV1 is 4).
    <length_override>: the length written in the header instead of len(payload) (the payload is
    still appended as given); its size picks the encoding (<126: 7 bits, <65536: 16, else 64)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    n = len(payload) if length_override is None else length_override
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = mask_key if mask_key is not None else os.urandom(4)
        return head + key + mask_bytes(payload, key)
    return head + payload


def close_payload(code=None, reason=b""):
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    if code is None:
        return reason
    return struct.pack("!H", code) + reason


class Frame:
    def __init__(self, fin, rsv, opcode, masked, payload):
        self.fin, self.rsv, self.opcode, self.masked, self.payload = fin, rsv, opcode, masked, payload
        self.key = None      # the masking key, for masked frames
        self.code = None     # close frames: the code (None when the payload is empty)
        self.reason = None   # close frames: the reason (str)
        if opcode == OP_CLOSE and len(payload) >= 2:
            self.code = struct.unpack("!H", payload[:2])[0]
            self.reason = payload[2:].decode("utf-8")
        elif opcode == OP_CLOSE:
            self.reason = ""

    def __iter__(self):
        return iter((self.fin, self.opcode, self.payload))

    def __repr__(self):
        extra = " code=%r reason=%r" % (self.code, self.reason) if self.opcode == OP_CLOSE else ""
        p = self.payload
        return "<Frame %s fin=%d len=%d%s %r>" % (OPNAMES.get(self.opcode, self.opcode), self.fin,
                                                   len(p), extra, p[:60] + (b"..." if len(p) > 60
                                                                            else b""))


def read_frame(read_exact, deadline, masked):
    """One frame from <read_exact>(n, deadline), strictly (see the module docstring). <masked>:
    whether the frame must be masked (True on the server side)."""
    b0, b1 = read_exact(2, deadline)
    fin, rsv, opcode = b0 >> 7, (b0 >> 4) & 7, b0 & 0xF
    is_masked, n = b1 >> 7, b1 & 0x7F
    if rsv:
        raise ProtocolError("frame with RSV bits %d: %02x %02x" % (rsv, b0, b1))
    if opcode not in OPNAMES:
        raise ProtocolError("frame with reserved opcode %d" % opcode)
    if n == 126:
        n = struct.unpack("!H", read_exact(2, deadline))[0]
        if n < 126:
            raise ProtocolError("16-bit length %d not minimal" % n)
    elif n == 127:
        n = struct.unpack("!Q", read_exact(8, deadline))[0]
        if n >> 63:
            raise ProtocolError("64-bit length with the top bit set")
        if n < 65536:
            raise ProtocolError("64-bit length %d not minimal" % n)
    if opcode >= 8 and (not fin or n > 125):
        raise ProtocolError("control frame %d fin=%d len=%d" % (opcode, fin, n))
    if bool(is_masked) != bool(masked):
        raise ProtocolError("frame %s masked" % ("not" if masked else "wrongly"))
    key = read_exact(4, deadline) if is_masked else None
    payload = read_exact(n, deadline) if n else b""
    if key:
        payload = mask_bytes(payload, key)
    if opcode == OP_CLOSE:
        if n == 1:
            raise ProtocolError("close frame with a 1-byte payload")
        if n >= 2:
            code = struct.unpack("!H", payload[:2])[0]
            if code not in VALID_CLOSE_CODES:
                raise ProtocolError("close frame with invalid code %d" % code)
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("close reason not UTF-8: %r" % payload[2:])
    f = Frame(fin, rsv, opcode, bool(is_masked), payload)
    f.key = key
    return f


class FrameIO:
    """Frames over a connection. Subclasses provide _send(data), _read_exact(n, deadline),
    _at_eof(deadline) (True on EOF/reset, False at the deadline; extra bytes raise) and set
    .masking (we mask what we send) and .timeout."""

    masking = True
    timeout = 5.0

    def _init_frames(self):
        self.close_sent = False
        self.close_received = None   # the close Frame once one arrived
        self.controls = []           # control frames met by recv_message(allow_control=True)
        self.skipped = []            # frames passed over by expect_close

    # -- sending --

    def send_raw(self, data):
        self._send(data)
        return self

    def send_frame(self, opcode, payload=b"", **kw):
        kw.setdefault("mask", self.masking)
        if opcode == OP_CLOSE:
            self.close_sent = True
        self._send(frame(opcode, payload, **kw))
        return self

    def send_text(self, data, **kw):
        return self.send_frame(OP_TEXT, data, **kw)

    def send_binary(self, data, **kw):
        return self.send_frame(OP_BINARY, data, **kw)

    def send_ping(self, data=b"", **kw):
        return self.send_frame(OP_PING, data, **kw)

    def send_pong(self, data=b"", **kw):
        return self.send_frame(OP_PONG, data, **kw)

    def send_close(self, code=1000, reason=b"", **kw):
        return self.send_frame(OP_CLOSE, close_payload(code, reason), **kw)

    def send_fragments(self, opcode, pieces, **kw):
        """One message in frames of <pieces> (one write)."""
        out = bytearray()
        kw.setdefault("mask", self.masking)
        for i, p in enumerate(pieces):
            out += frame(opcode if i == 0 else OP_CONT, p, fin=i == len(pieces) - 1, **kw)
        self._send(bytes(out))
        return self

    # -- receiving --

    def recv_frame(self, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        f = read_frame(self._read_exact, deadline, masked=not self.masking)
        if f.opcode == OP_CLOSE and self.close_received is None:
            self.close_received = f
        return f

    def recv_message(self, timeout=None, allow_control=False):
        """The next data message: (opcode, payload) with its fragments joined; text payloads stay
        bytes. A control frame before the message completes fails the test, unless
        <allow_control> (then it is kept in .controls). Nothing is answered."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        opcode, data = None, bytearray()
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if f.opcode >= 8:
                if allow_control and f.opcode != OP_CLOSE:
                    self.controls.append(f)
                    continue
                raise AssertionError("expected a data message, got %r%s" % (
                    f, " after %d bytes of one" % len(data) if opcode else ""))
            if opcode is None:
                if f.opcode == OP_CONT:
                    raise AssertionError("continuation frame with nothing to continue: %r" % f)
                opcode = f.opcode
            elif f.opcode != OP_CONT:
                raise AssertionError("new data frame inside a fragmented message: %r" % f)
            data += f.payload
            if f.fin:
                if opcode == OP_TEXT:
                    try:
                        bytes(data).decode("utf-8")
                    except UnicodeDecodeError:
                        raise AssertionError("text message is not UTF-8: %r" % bytes(data[:100]))
                return opcode, bytes(data)

    def recv_text(self, timeout=None):
        op, data = self.recv_message(timeout)
        assert op == OP_TEXT, "expected a text message, got opcode %d: %r" % (op, data[:100])
        return data.decode("utf-8")

    def recv_binary(self, timeout=None):
        op, data = self.recv_message(timeout)
        assert op == OP_BINARY, "expected a binary message, got opcode %d: %r" % (op, data[:100])
        return data

    def expect_close(self, code, reason=None, timeout=3.0, reply=True, eof=True, skip_data=True):
        """Reads frames until a close frame (data and control frames before it are kept in
        .skipped, or fail the test when not <skip_data>), checks its code (None: an empty
        payload) and <reason> when given, answers it with a close of the same code unless one
        was sent already or not <reply>, then (<eof>) checks that the peer closes the TCP
        connection within <timeout>. Returns the close Frame."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            except Timeout:
                raise AssertionError("no close frame (expected %s) within %.1f s; frames before: %r"
                                     % (code, timeout, self.skipped[-5:]))
            except Closed as e:
                raise AssertionError("TCP connection closed without a close frame (expected %s): "
                                     "%s; frames before: %r" % (code, e, self.skipped[-5:]))
            if f.opcode == OP_CLOSE:
                break
            if not skip_data:
                raise AssertionError("expected close %s, got %r" % (code, f))
            self.skipped.append(f)
        assert f.code == code, "close code %r (reason %r), expected %r" % (f.code, f.reason, code)
        if reason is not None:
            assert f.reason == reason, "close reason %r, expected %r" % (f.reason, reason)
        if reply and not self.close_sent:
            try:
                self.send_close(code if code in VALID_CLOSE_CODES else None)
            except OSError:
                pass
        if eof:
            left = max(0.1, deadline - time.monotonic())
            assert self._at_eof(time.monotonic() + left), (
                "the TCP connection was not closed within %.1f s of close %s" % (timeout, code))
        return f

    def expect_eof(self, timeout=3.0):
        """The peer closes the TCP connection within <timeout>, sending nothing before."""
        assert self._at_eof(time.monotonic() + timeout), (
            "the TCP connection was not closed within %.1f s" % timeout)

    def frames_until_eof(self, timeout=3.0):
        """Reads frames until the peer closes the TCP connection; returns them. Fails when the
        connection is still open after <timeout>."""
        deadline = time.monotonic() + timeout
        frames = []
        while True:
            try:
                frames.append(self.recv_frame(max(0.0, deadline - time.monotonic())))
            except Closed:
                return frames
            except Timeout:
                raise AssertionError("the TCP connection was not closed within %.1f s (frames: "
                                     "%r)" % (timeout, frames[-5:]))

    def expect_silence(self, seconds):
        """Nothing arrives (and no close) for <seconds>."""
        try:
            f = self.recv_frame(seconds)
        except Timeout:
            return
        except Closed as e:
            raise AssertionError("connection closed while expecting silence: %s" % e)
        raise AssertionError("expected nothing for %.1f s, got %r" % (seconds, f))


# ---- the client ----

class WSClient(FrameIO):
    """A raw WebSocket client over a TCP socket (a gw.Client underneath: .http)."""

    masking = True

    def __init__(self, port, timeout=5.0, rcvbuf=None):
        self.port = port
        self.timeout = timeout
        self.http = Client(port, timeout=timeout, rcvbuf=rcvbuf)
        self.sock = self.http.sock
        self.reader = self.http.reader
        self.key = None
        self.response = None
        self._init_frames()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def close(self):
        self.http.close()

    def abort(self):
        """Drops the connection with a TCP reset (no close frame)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.http.close()

    def _send(self, data):
        self.sock.sendall(data)

    def _read_exact(self, n, deadline):
        return self.reader.read_exact(n, deadline)

    def _at_eof(self, deadline):
        return self.http.wait_closed(max(0.0, deadline - time.monotonic()))

    # -- the handshake --

    def request_bytes(self, path, headers=(), protocols=None, key=None, origin=None,
                      version="13", method="GET", http="HTTP/1.1", upgrade="websocket",
                      connection="Upgrade", extensions=None, omit=(), body=None):
        """The upgrade request. None for <key> makes a fresh key; a name in <omit> (lower case:
        "key", "version", "upgrade", "connection") leaves that field out."""
        self.key = new_key() if key is None else key
        h = []
        if "upgrade" not in omit:
            h.append(("Upgrade", upgrade))
        if "connection" not in omit:
            h.append(("Connection", connection))
        if "key" not in omit:
            h.append(("Sec-WebSocket-Key", self.key))
        if "version" not in omit:
            h.append(("Sec-WebSocket-Version", version))
        if origin is not None:
            h.append(("Origin", origin))
        if protocols:
            h.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
        if extensions:
            h.append(("Sec-WebSocket-Extensions", extensions))
        h += list(headers)
        return build_request(method, path, h, body=body, version=http)

    def send_handshake(self, path, extra=b"", **kw):
        """Sends the upgrade request (and <extra> bytes in the same write)."""
        self._send(self.request_bytes(path, **kw) + extra)
        return self

    def read_handshake(self, timeout=None):
        """Reads the response strictly: (status, headers, leftover bytes already received)."""
        r = self.http.read_response(timeout=timeout)
        self.response = r
        return r.status, r.headers, bytes(self.reader.buf)

    def handshake(self, path, **kw):
        timeout = kw.pop("timeout", None)
        self.send_handshake(path, **kw)
        return self.read_handshake(timeout)

    def check_101(self, protocol=None):
        """Checks that the response is a valid 101 for our key (and <protocol>)."""
        r = self.response
        assert r.status == 101, "handshake answered %s, not 101: %r" % (r.status, r)
        assert r.version == "HTTP/1.1", r
        up = r.headers_all("upgrade")
        assert [v.lower() for v in up] == ["websocket"], "Upgrade: %r" % up
        assert "upgrade" in [t for v in r.headers_all("connection") for t in tokens(v)], (
            "Connection: %r" % r.headers_all("connection"))
        acc = r.headers_all("sec-websocket-accept")
        assert acc == [accept_for(self.key)], "Sec-WebSocket-Accept %r, expected %r" % (
            acc, accept_for(self.key))
        assert not r.headers_all("sec-websocket-extensions"), r.headers
        assert not r.headers_all("content-length") and not r.headers_all("transfer-encoding"), (
            "a 101 with framing fields: %r" % r.headers)
        got = r.headers_all("sec-websocket-protocol")
        assert got == ([protocol] if protocol else []), "Sec-WebSocket-Protocol %r, expected %r" % (
            got, protocol)
        return r


def handshake(port, path, headers=(), protocols=None, timeout=5.0, **kw):
    """One upgrade request on a fresh connection: (status, headers, leftover bytes). The
    connection is closed afterwards."""
    with WSClient(port, timeout=timeout) as c:
        return c.handshake(path, headers=headers, protocols=protocols, **kw)


def connect(port, path, protocol=None, timeout=5.0, **kw):
    """A WSClient after a successful handshake on <path> (101 and its fields checked; bytes
    after the 101 stay buffered for recv_frame)."""
    c = WSClient(port, timeout=timeout)
    try:
        c.handshake(path, **kw)
        c.check_101(protocol)
    except BaseException:
        c.close()
        raise
    return c
