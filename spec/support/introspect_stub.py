"""introspect_stub.py: an OAuth 2.0 token introspection endpoint (RFC 7662) for the end-to-end
tests of the `oauth2_introspection` policy (spec/e2e/test_oauth2.py, docs/jwt.md).

IntrospectStub(name, clients={client_id: secret}, path="/introspect")
    a stubs.Upstream (HTTP) whose answer is chosen by the token of each call;
HTTPSIntrospectStub(name, cert, key, clients=..., path=...)
    the same behind TLS (a tlsfix.HTTPSUpstream: .handshakes, .handshake_errors, ...).

Each request is one introspection call. The stub parses its body as
application/x-www-form-urlencoded, authenticates the client (HTTP Basic, the id and the secret
form-urlencoded before base64 as RFC 6749 section 2.3.1 says, or client_id/client_secret in the
form), records everything in .calls (Call objects, in arrival order) and answers from .tokens:

    stub.tokens[token] = active(sub="alice", scope="a b", ...)   200 {"active": true, ...}
    stub.tokens[token] = INACTIVE                                  200 {"active": false}
    stub.tokens[token] = "status500" | "not_json" | "array" | "string" | "slow" |
                         "stall_body" | "close"                    faults (below)
    a token absent from the table                                  200 {"active": false}
    stub.tokens[token] = ("hold", event, answer)                   <answer> once the test
                                                                   sets the threading.Event
    stub.per_client[(client_id, token)] = ...    what one client is told, before .tokens
                                                 (RFC 7662 2.2: the answer may depend on the
                                                 protected resource asking)

A call that is not a POST to <path> with a form body is answered 400 {"error":
"invalid_request"}; a client that does not authenticate with exactly one method and a known
id/secret pair gets 401 {"error": "invalid_client"} (RFC 6749 section 5.2). Both are recorded
with .error set.

Call fields: method, target, content_type, headers (as received), raw_body (bytes), form (list
of (name, value) pairs, in order), token (the form's token or None), token_type_hint (or None),
basic ((id, secret) decoded from an Authorization: Basic header, or None), basic_raw (the
header's base64 text), post_creds ((client_id, client_secret) from the form, or None),
client (the authenticated client id, or None), error (None when the call was answered from the
token table), answered (what was answered: "active", "inactive", a fault name, or an error),
time (time.monotonic() at arrival).
"""
import base64
import json
import re
import socket
import threading
import time
from urllib.parse import parse_qsl, unquote_plus

import stubs
import tlsfix

INACTIVE = {"active": False}


def active(**claims):
    """An active answer: {"active": true} with <claims> (sub, scope, exp, client_id, username,
    or any other member)."""
    out = {"active": True}
    out.update(claims)
    return out


# Faults: what the stub does instead of answering from the table: answer 500 {"error":
# "server_error"}; 200 with an HTML body; 200 with a JSON array; 200 with a JSON string; hold the
# call without answering (until the gateway closes, at most SLOW_HOLD s); send the head and 20
# of the 100 body bytes announced, then hold; close the connection without answering.
FAULTS = ("status500", "not_json", "array", "string", "slow", "stall_body", "close")

# How long a "slow" call is kept open at most (the gateway should give up long before).
SLOW_HOLD = 10.0

_PCT_RE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def form_well_formed(body):
    """Visible ASCII only (no space, no control byte, nothing above 0x7e) and every % followed
    by two hex digits."""
    return all(0x21 <= b <= 0x7e for b in body) and not _PCT_RE.search(body)


class Call:
    def __init__(self, req):
        self.method = req.method
        self.target = req.target
        self.headers = list(req.headers)
        self.content_type = req.header("content-type")
        self.raw_body = bytes(req.body)
        self.form = []
        self.form_ok = False     # the body is well-formed form encoding (form_well_formed)
        self.token = None
        self.token_type_hint = None
        self.basic = None
        self.basic_raw = None
        self.post_creds = None
        self.client = None
        self.error = None
        self.answered = None
        self.time = time.monotonic()

    def header(self, name):
        return stubs.get(self.headers, name)

    def headers_all(self, name):
        return [v for (n, v) in self.headers if n.lower() == name.lower()]

    def field(self, name):
        """The form field's values (a list: empty when absent)."""
        return [v for (n, v) in self.form if n == name]

    def __repr__(self):
        return "<Call %s %s token=%r hint=%r basic=%r post=%r -> %s>" % (
            self.method, self.target, self.token, self.token_type_hint, self.basic,
            self.post_creds, self.answered)


class IntrospectMixin:
    """The introspection behaviour, over stubs.Upstream or tlsfix.HTTPSUpstream."""

    def _setup(self, clients, path):
        self.clients = dict(clients or {})
        self.path_expected = path
        self.tokens = {}
        self.per_client = {}
        self.calls = []
        self.calls_lock = threading.Lock()

    # ---- inspection ----

    def calls_for(self, token):
        with self.calls_lock:
            return [c for c in self.calls if c.token == token]

    def count(self, token):
        return len(self.calls_for(token))

    def mark(self):
        with self.calls_lock:
            return len(self.calls)

    def calls_since(self, mark):
        with self.calls_lock:
            return self.calls[mark:]

    # ---- serving ----

    def _json(self, ctx, req, status, obj, extra=()):
        body = json.dumps(obj).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store"), ("Connection", "close")] + list(extra)
        ctx.send(stubs.response_bytes(status, headers, body))
        ctx.close()
        return False

    def _authenticate(self, call):
        """Sets call.client, or returns the reason the client is refused."""
        auth = call.header("authorization")
        if auth is not None:
            scheme, _, cred = auth.partition(" ")
            if scheme.lower() != "basic":
                return "authorization scheme %r" % scheme
            call.basic_raw = cred.strip()
            try:
                decoded = base64.b64decode(call.basic_raw, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return "bad base64 in Basic credentials"
            if ":" not in decoded:
                return "no colon in Basic credentials"
            cid, _, secret = decoded.partition(":")
            call.basic = (unquote_plus(cid), unquote_plus(secret))
        ids, secrets = call.field("client_id"), call.field("client_secret")
        if ids or secrets:
            call.post_creds = (ids[0] if ids else None, secrets[0] if secrets else None)
        methods = [m for m in (call.basic, call.post_creds) if m is not None]
        if len(methods) != 1:
            return "%d client authentication methods" % len(methods)
        cid, secret = methods[0]
        if len(call.field("client_id")) > 1 or len(call.field("client_secret")) > 1:
            return "repeated client credentials"
        if cid is None or cid not in self.clients or self.clients[cid] != secret:
            return "unknown client or wrong secret"
        call.client = cid
        return None

    def answer(self, ctx, req):
        call = Call(req)
        with self.calls_lock:
            self.calls.append(call)
        call.form_ok = form_well_formed(call.raw_body)
        try:
            call.form = parse_qsl(call.raw_body.decode("ascii"), keep_blank_values=True,
                                  strict_parsing=bool(call.raw_body))
        except (ValueError, UnicodeDecodeError) as e:
            call.form_ok = False
            call.error = "bad form body: %s" % e
        tokens = call.field("token")
        hints = call.field("token_type_hint")
        call.token = tokens[0] if len(tokens) == 1 else None
        call.token_type_hint = hints[0] if len(hints) == 1 else None
        if call.error is None:
            if call.method != "POST" or req.path != self.path_expected:
                call.error = "not a POST to %s" % self.path_expected
            elif (call.content_type or "").split(";")[0].strip().lower() != \
                    "application/x-www-form-urlencoded":
                call.error = "content-type %r" % call.content_type
            elif len(tokens) != 1 or len(hints) > 1:
                call.error = "%d token and %d token_type_hint fields" % (len(tokens), len(hints))
        if call.error is not None:
            call.answered = "invalid_request"
            return self._json(ctx, req, 400, {"error": "invalid_request"})
        refused = self._authenticate(call)
        if refused is not None:
            call.error = refused
            call.answered = "invalid_client"
            return self._json(ctx, req, 401, {"error": "invalid_client"},
                              [("WWW-Authenticate", 'Basic realm="introspection"')])
        what = self.per_client.get((call.client, call.token))
        if what is None:
            what = self.tokens.get(call.token, INACTIVE)
        if isinstance(what, tuple) and what[0] == "hold":
            # ("hold", threading.Event, answer): answer once the test sets the event
            what[1].wait(SLOW_HOLD)
            what = what[2]
        if isinstance(what, dict):
            call.answered = "active" if what.get("active") is True else "inactive"
            return self._json(ctx, req, 200, what)
        call.answered = what
        if what == "status500":
            return self._json(ctx, req, 500, {"error": "server_error"})
        if what == "not_json":
            body = b"<html><body>upstream is down</body></html>"
            ctx.send(stubs.response_bytes(200, [("Content-Type", "application/json"),
                                                ("Content-Length", str(len(body))),
                                                ("Connection", "close")], body))
            ctx.close()
            return False
        if what == "array":
            return self._json(ctx, req, 200, [{"active": True, "sub": "alice"}])
        if what == "string":
            return self._json(ctx, req, 200, "active")
        if what in ("slow", "stall_body"):
            if what == "stall_body":
                # the head and the start of a JSON body, then nothing
                ctx.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"active\": true, ")
            # hold the call open (reading nothing more) until the gateway gives up
            deadline = time.monotonic() + SLOW_HOLD
            ctx.sock.settimeout(0.05)
            while time.monotonic() < deadline and not self.stopping.is_set():
                try:
                    if not ctx.sock.recv(65536):
                        break
                except socket.timeout:
                    continue
                except OSError:
                    break
            ctx.close()
            return False
        if what == "close":
            ctx.close()
            return False
        raise ValueError("unknown answer %r for token %r" % (what, call.token))


class IntrospectStub(IntrospectMixin, stubs.Upstream):
    def __init__(self, name="as", clients=None, path="/introspect", **kw):
        self._setup(clients, path)
        super().__init__(name, **kw)


class HTTPSIntrospectStub(IntrospectMixin, tlsfix.HTTPSUpstream):
    def __init__(self, name, cert, key, clients=None, path="/introspect", **kw):
        self._setup(clients, path)
        super().__init__(name, cert, key, **kw)


__all__ = ["IntrospectStub", "HTTPSIntrospectStub", "Call", "INACTIVE", "FAULTS", "active"]
