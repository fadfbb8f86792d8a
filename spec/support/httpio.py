"""httpio.py: a buffered socket reader and strict HTTP/1.1 message readers shared by the stub
upstreams (requests) and the raw test client (responses).

Strict on purpose: the gateway must emit clean HTTP/1.1 in both directions, so anything a lenient
parser would tolerate (bare LF, obs-fold, whitespace before a colon, conflicting framing) is a
ProtocolError here and fails the test that received it.
"""
import re
import socket
import time


class Closed(Exception):
    """The peer closed (EOF or reset) before the expected bytes arrived."""


class Timeout(Exception):
    """Nothing (or not enough) arrived before the deadline."""


class ProtocolError(Exception):
    """The peer sent something a strict HTTP/1.1 reader refuses."""


TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
STATUS_LINE_RE = re.compile(rb"^HTTP/1\.([01]) ([0-9]{3}) ([\t -~\x80-\xff]*)$")
REQUEST_LINE_RE = re.compile(rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([!-~]+) HTTP/1\.([01])$")
FIELD_VALUE_BAD_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class Reader:
    """Buffered reads from a socket with a per-call deadline."""

    def __init__(self, sock, timeout=5.0, sink=None):
        self.sock = sock
        self.sink = sink  # optional bytearray receiving a copy of every byte read
        self.buf = bytearray()
        self.timeout = timeout
        self.eof = False
        self.reset = False
        self.total = 0  # bytes received so far

    def _fill(self, deadline):
        if self.eof:
            raise Closed("connection closed by peer")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("timed out waiting for data")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(262144)
        except socket.timeout:
            raise Timeout("timed out waiting for data")
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            self.eof = True
            self.reset = True
            raise Closed("connection reset by peer")
        if not data:
            self.eof = True
            raise Closed("connection closed by peer")
        self.total += len(data)
        self.buf += data
        if self.sink is not None:
            self.sink += data

    def deadline(self, timeout):
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def read_until(self, delim, deadline, limit=1 << 20):
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(delim)])
                del self.buf[: i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise ProtocolError("no %r within %d bytes" % (delim, limit))
            start = max(0, len(self.buf) - len(delim) + 1)
            self._fill(deadline)

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_some(self, deadline):
        if not self.buf:
            self._fill(deadline)
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_to_eof(self, deadline):
        out = bytearray()
        while True:
            out += self.buf
            self.buf.clear()
            try:
                self._fill(deadline)
            except Closed:
                return bytes(out)

    def has_buffered(self):
        return bool(self.buf)


def parse_fields(lines):
    """Strictly parses header lines (bytes without line endings) into [(name, value)] (str,
    latin-1). Raises ProtocolError on obs-fold, whitespace before the colon, bad names or values."""
    fields = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise ProtocolError("obs-fold or leading whitespace: %r" % line)
        if b":" not in line:
            raise ProtocolError("field line without a colon: %r" % line)
        name, _, value = line.partition(b":")
        if not TOKEN_RE.match(name):
            raise ProtocolError("bad field name: %r" % name)
        value = value.strip(b" \t")
        if FIELD_VALUE_BAD_RE.search(value):
            raise ProtocolError("control byte in field value: %r" % line)
        fields.append((name.decode("latin-1"), value.decode("latin-1")))
    return fields


def split_head(head):
    """Splits a head (ending with CRLFCRLF) into its lines; refuses bare CR or LF."""
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise ProtocolError("bare CR or LF in head: %r" % line)
    return lines


def get_all(headers, name):
    name = name.lower()
    return [v for (n, v) in headers if n.lower() == name]


def get(headers, name):
    vals = get_all(headers, name)
    return vals[0] if vals else None


def framing(headers):
    """Returns ("chunked", None), ("length", n) or ("none", None). Raises on conflicts."""
    te = get_all(headers, "transfer-encoding")
    cl = get_all(headers, "content-length")
    if te and cl:
        raise ProtocolError("both Transfer-Encoding and Content-Length")
    if len(cl) > 1:
        raise ProtocolError("several Content-Length fields: %r" % cl)
    if te:
        codings = [c.strip().lower() for c in ",".join(te).split(",")]
        if codings != ["chunked"]:
            raise ProtocolError("unexpected Transfer-Encoding: %r" % te)
        return "chunked", None
    if cl:
        if not re.match(r"^[0-9]+$", cl[0]):
            raise ProtocolError("bad Content-Length: %r" % cl[0])
        return "length", int(cl[0])
    return "none", None


def read_chunked(reader, deadline, raw=None, max_ext=1024):
    """Reads a chunked body; returns (data, trailers). Appends the raw bytes to <raw> if given."""
    data = bytearray()
    while True:
        line = reader.read_until(b"\r\n", deadline, limit=max_ext + 64)
        if raw is not None:
            raw += line
        size_part = line[:-2].split(b";", 1)[0]
        if not re.match(rb"^[0-9A-Fa-f]{1,16}$", size_part):
            raise ProtocolError("bad chunk size line: %r" % line)
        size = int(size_part, 16)
        if size == 0:
            break
        chunk = reader.read_exact(size + 2, deadline)
        if raw is not None:
            raw += chunk
        if chunk[-2:] != b"\r\n":
            raise ProtocolError("chunk data not followed by CRLF")
        data += chunk[:-2]
    trailers = []
    while True:
        line = reader.read_until(b"\r\n", deadline, limit=16384)
        if raw is not None:
            raw += line
        if line == b"\r\n":
            break
        trailers.append(line[:-2])
    return bytes(data), parse_fields(trailers)


def chunk_encode(body, size=None):
    """Chunked coding of <body> (in chunks of <size> bytes, one chunk when None)."""
    out = bytearray()
    if body:
        size = size or len(body)
        for i in range(0, len(body), size):
            piece = body[i : i + size]
            out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    out += b"0\r\n\r\n"
    return bytes(out)


PATTERN = bytes((i * 7 + 3) % 256 for i in range(65536))


def pattern_body(n, offset=0):
    """Deterministic <n> bytes, used for large bodies in both directions."""
    out = bytearray()
    pos = offset
    while len(out) < n:
        i = pos % len(PATTERN)
        take = min(len(PATTERN) - i, n - len(out))
        out += PATTERN[i : i + take]
        pos += take
    return bytes(out)
