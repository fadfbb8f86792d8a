"""Request-smuggling shapes: every request the strict parser must refuse, as raw bytes, with the
exact status, Connection: close and the close itself, and nothing reaching the upstream — not
even the valid request pipelined behind the bad one (cases.SMUGGLED). A few valid-but-unusual
shapes check that the strictness does not refuse legal HTTP. Each case runs twice on one process.
"""
import pytest

from cases import Case, NOTHING, NO_REQUEST, SMUGGLED, run_case
from gw import Client, config, listener
from harness import module_env
from stubs import Upstream

H = b"Host: a\r\n"


@pytest.fixture(scope="module")
def env(request, tmp_path_factory):
    def build():
        up = Upstream("echo")
        cfg = config(
            listeners=[listener("public")],
            timeouts={"header": "2s", "body": "1s", "keepalive": "3s", "send": "2s"},
            upstreams={"echo": {"targets": [up.address], "connect_timeout": "300ms",
                                "read_timeout": "2s", "retries": 0}},
            routes=[{"name": "all", "listeners": ["public"], "match": {"path": "/"},
                     "upstream": "echo"}])
        return cfg, {"echo": up}
    return module_env(request, tmp_path_factory, build)


def bad(id, head, status=400, body=b"", upstream=NOTHING, note=""):
    """A request refused by the head parser: status, close, the upstream sees nothing."""
    return Case(id, head + body + SMUGGLED, status, close=True, upstream=upstream, note=note)


def post(fields, body=b""):
    return b"POST /p HTTP/1.1\r\n" + H + fields + b"\r\n" + body


TE_BAD = (400, 501)  # "Transfer-Encoding whose last coding is not chunked or unknown (400 or 501)"
VERSION_BAD = (400, 505)  # malformed versions: refused either way, never read as HTTP/1.1

HEAD_CASES = [
    # ---- framing: Content-Length / Transfer-Encoding ----
    bad("cl_and_te", post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n"), body=b"0\r\n\r\nG"),
    bad("te_and_cl", post(b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n"), body=b"0\r\n\r\nG"),
    bad("cl_and_te_zero", post(b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n"),
        body=b"0\r\n\r\n"),
    bad("two_cl_equal", post(b"Content-Length: 5\r\nContent-Length: 5\r\n"), body=b"hello"),
    bad("two_cl_different", post(b"Content-Length: 5\r\nContent-Length: 6\r\n"), body=b"hello!"),
    bad("cl_list", post(b"Content-Length: 5, 5\r\n"), body=b"hello"),
    bad("cl_plus", post(b"Content-Length: +5\r\n"), body=b"hello"),
    bad("cl_negative", post(b"Content-Length: -1\r\n")),
    bad("cl_hex", post(b"Content-Length: 0x5\r\n"), body=b"hello"),
    bad("cl_inner_space", post(b"Content-Length: 5 5\r\n"), body=b"hello"),
    bad("cl_empty", post(b"Content-Length: \r\n")),
    bad("cl_letters", post(b"Content-Length: five\r\n")),
    bad("cl_overflow", post(b"Content-Length: 184467440737095516160000\r\n")),
    bad("cl_decimal", post(b"Content-Length: 5.0\r\n"), body=b"hello"),
    bad("te_gzip_only", post(b"Transfer-Encoding: gzip\r\n"), TE_BAD, body=b"0\r\n\r\n"),
    bad("te_chunked_then_gzip", post(b"Transfer-Encoding: chunked, gzip\r\n"), TE_BAD,
        body=b"0\r\n\r\n"),
    bad("te_unknown_then_chunked", post(b"Transfer-Encoding: foo, chunked\r\n"), TE_BAD,
        body=b"0\r\n\r\n"),
    bad("te_unknown", post(b"Transfer-Encoding: xchunked\r\n"), TE_BAD, body=b"0\r\n\r\n"),
    bad("te_identity", post(b"Transfer-Encoding: identity\r\n"), TE_BAD, body=b"0\r\n\r\n"),
    bad("te_chunked_twice", post(b"Transfer-Encoding: chunked, chunked\r\n"), TE_BAD,
        body=b"0\r\n\r\n"),
    bad("te_empty", post(b"Transfer-Encoding: \r\n"), TE_BAD, body=b"0\r\n\r\n"),
    bad("te_vertical_tab", post(b"Transfer-Encoding: \x0bchunked\r\n"), body=b"0\r\n\r\n"),
    bad("te_in_http10", b"POST /p HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n",
        body=b"0\r\n\r\n"),
    # ---- field syntax ----
    bad("obs_fold_space", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n"),
    bad("obs_fold_tab", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n\tb\r\n\r\n"),
    bad("obs_fold_first_line", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
    bad("obs_fold_transfer_encoding", post(b"Transfer-Encoding: identity\r\n , chunked\r\n"),
        body=b"0\r\n\r\n"),
    bad("bare_cr_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n"),
    bad("bare_cr_line_end", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rX-B: b\r\n\r\n"),
    bad("bare_cr_request_line", b"GET / HTTP/1.1\r" + H + b"\r\n"),
    bad("space_before_colon", b"GET / HTTP/1.1\r\n" + H + b"X-A : a\r\n\r\n"),
    bad("tab_before_colon", b"GET / HTTP/1.1\r\n" + H + b"X-A\t: a\r\n\r\n"),
    bad("space_before_colon_cl", b"POST /p HTTP/1.1\r\n" + H + b"Content-Length : 5\r\n\r\n",
        body=b"hello"),
    bad("space_before_colon_te", b"POST /p HTTP/1.1\r\n" + H +
        b"Transfer-Encoding : chunked\r\n\r\n", body=b"0\r\n\r\n"),
    bad("empty_field_name", b"GET / HTTP/1.1\r\n" + H + b": a\r\n\r\n"),
    bad("nul_in_name", b"GET / HTTP/1.1\r\n" + H + b"X-\x00A: a\r\n\r\n"),
    bad("control_in_name", b"GET / HTTP/1.1\r\n" + H + b"X-\x01A: a\r\n\r\n"),
    bad("space_in_name", b"GET / HTTP/1.1\r\n" + H + b"X A: a\r\n\r\n"),
    bad("paren_in_name", b"GET / HTTP/1.1\r\n" + H + b"X(A): a\r\n\r\n"),
    bad("at_in_name", b"GET / HTTP/1.1\r\n" + H + b"X@A: a\r\n\r\n"),
    bad("slash_in_name", b"GET / HTTP/1.1\r\n" + H + b"X/A: a\r\n\r\n"),
    bad("high_byte_in_name", b"GET / HTTP/1.1\r\n" + H + b"X\xe9A: a\r\n\r\n"),
    bad("nul_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n"),
    bad("control_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n"),
    bad("escape_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x1bb\r\n\r\n"),
    bad("del_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n"),
    bad("line_without_colon", b"GET / HTTP/1.1\r\n" + H + b"X-A\r\n\r\n"),
    bad("bare_lf_splits_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\nb\r\n\r\n"),
    bad("whitespace_only_line", b"GET / HTTP/1.1\r\n" + H + b"   \r\n\r\n"),
    bad("underscore_in_name", b"GET / HTTP/1.1\r\n" + H + b"X_Forwarded_For: 1.2.3.4\r\n\r\n",
        note="default http.underscores_in_headers: reject"),
    bad("underscore_content_length", b"POST /p HTTP/1.1\r\n" + H + b"Content_Length: 5\r\n\r\n",
        body=b"hello"),
    # ---- Host ----
    bad("http11_without_host", b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n"),
    bad("two_hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    bad("two_hosts_equal", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
    bad("host_list", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"),
    # ---- request line ----
    bad("method_not_token", b"GE(T / HTTP/1.1\r\n" + H + b"\r\n"),
    bad("method_with_slash", b"GE/T / HTTP/1.1\r\n" + H + b"\r\n"),
    bad("method_empty", b" / HTTP/1.1\r\n" + H + b"\r\n"),
    bad("method_nul", b"G\x00ET / HTTP/1.1\r\n" + H + b"\r\n"),
    bad("double_space", b"GET  / HTTP/1.1\r\n" + H + b"\r\n"),
    bad("trailing_space", b"GET / HTTP/1.1 \r\n" + H + b"\r\n"),
    bad("tab_separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n"),
    bad("target_with_space", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n"),
    bad("target_with_control", b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n"),
    bad("target_with_tab", b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n"),
    bad("target_with_del", b"GET /a\x7fb HTTP/1.1\r\n" + H + b"\r\n"),
    bad("target_with_nul", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n"),
    bad("target_missing", b"GET HTTP/1.1\r\n" + H + b"\r\n"),
    bad("target_authority_form_get", b"GET a:80 HTTP/1.1\r\n" + H + b"\r\n"),
    bad("target_asterisk_get", b"GET * HTTP/1.1\r\n" + H + b"\r\n"),
    bad("version_1_2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    bad("version_2_0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    bad("version_3_0", b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
    bad("version_1_10", b"GET / HTTP/1.10\r\n" + H + b"\r\n", VERSION_BAD),
    bad("version_1_32", b"GET / HTTP/1.32\r\n" + H + b"\r\n", VERSION_BAD),
    bad("version_0_9", b"GET / HTTP/0.9\r\n" + H + b"\r\n", VERSION_BAD),
    bad("version_lowercase", b"GET / http/1.1\r\n" + H + b"\r\n", VERSION_BAD),
    bad("version_no_minor", b"GET / HTTP/1\r\n" + H + b"\r\n", VERSION_BAD),
    bad("version_junk_after", b"GET / HTTP/1.1x\r\n" + H + b"\r\n", VERSION_BAD),
    bad("version_missing", b"GET /\r\n" + H + b"\r\n", VERSION_BAD),
    # ---- paths refused by normalisation ----
    bad("path_encoded_slash", b"GET /a%2Fb HTTP/1.1\r\n" + H + b"\r\n"),
    bad("path_encoded_slash_lower", b"GET /a%2fb HTTP/1.1\r\n" + H + b"\r\n"),
    bad("path_encoded_backslash", b"GET /a%5Cb HTTP/1.1\r\n" + H + b"\r\n"),
    bad("path_encoded_nul", b"GET /a%00b HTTP/1.1\r\n" + H + b"\r\n"),
    bad("path_bad_escape", b"GET /a%zzb HTTP/1.1\r\n" + H + b"\r\n"),
    bad("path_truncated_escape", b"GET /a%4 HTTP/1.1\r\n" + H + b"\r\n"),
    bad("path_raw_backslash", b"GET /a\\..\\b HTTP/1.1\r\n" + H + b"\r\n"),
    bad("path_encoded_dotdot_slash", b"GET /a/..%2F..%2Fetc HTTP/1.1\r\n" + H + b"\r\n"),
]


def chunked_bad(id, chunks):
    """Head accepted, chunked body malformed: 400, close, no complete request upstream."""
    return Case(id, post(b"Transfer-Encoding: chunked\r\n") + chunks + SMUGGLED, 400,
                close=True, upstream=NO_REQUEST)


CHUNK_CASES = [
    chunked_bad("chunk_size_not_hex", b"zz\r\nhello\r\n0\r\n\r\n"),
    chunked_bad("chunk_size_negative", b"-5\r\nhello\r\n0\r\n\r\n"),
    chunked_bad("chunk_size_0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
    chunked_bad("chunk_size_overflow", b"1" + b"0" * 20 + b"\r\nhello\r\n0\r\n\r\n"),
    chunked_bad("chunk_size_empty_line", b"\r\nhello\r\n0\r\n\r\n"),
    chunked_bad("chunk_size_inner_space", b"5 5\r\nhello\r\n0\r\n\r\n"),
    chunked_bad("chunk_ext_too_long", b"5;" + b"a" * 1000 + b"\r\nhello\r\n0\r\n\r\n"),
    chunked_bad("chunk_longer_than_size", b"3\r\nabcdef\r\n0\r\n\r\n"),
    chunked_bad("chunk_data_without_crlf", b"5\r\nhelloXX0\r\n\r\n"),
    chunked_bad("chunk_bare_cr_after_data", b"5\r\nhello\r0\r\n\r\n"),
    chunked_bad("chunk_bad_trailer", b"5\r\nhello\r\n0\r\nBad Trailer\r\n\r\n"),
    chunked_bad("chunk_trailer_obs_fold", b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n"),
]


def _upstream_got(path, body=None, absent=(), raw_lacks=(), header=None):
    def check(reqs):
        assert len(reqs) == 1, "upstream got %r" % reqs
        r = reqs[0]
        assert r.path == path, r
        if header is not None:
            assert r.header(header[0]) == header[1], r.headers
        if body is not None:
            assert r.body == body, (r.body, body)
        for name in absent:
            assert r.header(name) is None, "%s forwarded: %r" % (name, r.headers)
        for b in raw_lacks:
            assert b not in r.raw, "%r reached the upstream: %r" % (b, r.raw)
    return check


GOOD_CASES = [
    Case("bare_lf_line_endings", b"GET /lf HTTP/1.1\nHost: a\nX-A: b\n\n", 200, close=False,
         upstream=_upstream_got("/lf")),
    Case("trailers_never_become_headers",
         post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX-Trailer: evil\r\n\r\n"),
         200, close=False,
         upstream=_upstream_got("/p", b"hello", absent=["X-Trailer"], raw_lacks=[b"X-Trailer"])),
    Case("chunk_extensions_dropped",
         post(b"Transfer-Encoding: chunked\r\n", b"5;name=val\r\nhello\r\n0\r\n\r\n"), 200,
         close=False, upstream=_upstream_got("/p", b"hello", raw_lacks=[b"name=val"])),
    Case("te_chunked_case_insensitive",
         post(b"Transfer-Encoding: Chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), 200, close=False,
         upstream=_upstream_got("/p", b"hello")),
    Case("http10_without_host", b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200,
         close=False, upstream=_upstream_got("/old")),
    Case("obs_text_in_value", b"GET /o HTTP/1.1\r\n" + H + b"X-A: caf\xe9\r\n\r\n", 200,
         close=False, upstream=_upstream_got("/o", header=("X-A", "caf\xe9"))),
    Case("htab_in_value", b"GET /t HTTP/1.1\r\n" + H + b"X-A: a\tb\r\n\r\n", 200, close=False,
         upstream=_upstream_got("/t", header=("X-A", "a\tb"))),
    Case("cl_leading_zeros", post(b"Content-Length: 005\r\n", b"hello"), 200, close=False,
         upstream=_upstream_got("/p", b"hello")),
]


@pytest.mark.parametrize("case", HEAD_CASES, ids=str)
def test_head_rejected(env, case):
    run_case(env.gw, env.echo, case)


@pytest.mark.parametrize("case", CHUNK_CASES, ids=str)
def test_chunked_body_rejected(env, case):
    run_case(env.gw, env.echo, case)


@pytest.mark.parametrize("case", GOOD_CASES, ids=str)
def test_unusual_but_valid(env, case):
    run_case(env.gw, env.echo, case)


def test_connect_is_405_and_closes(env):
    # The bytes after CONNECT are tunnel data: they must never be read as a request.
    run_case(env.gw, env.echo, Case(
        "connect", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n" + SMUGGLED, 405, close=True))


def test_body_of_rejected_request_not_parsed_as_request(env):
    # A CL/TE conflict whose "body" is itself a complete request: it must not be answered.
    inner = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    case = Case("cl_te_inner_request",
                post(b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % (5 + len(inner)))
                + b"0\r\n\r\n" + inner, 400, close=True)
    run_case(env.gw, env.echo, case)


def test_split_head_still_rejected(env):
    # The same refusal when the bad head arrives one byte at a time.
    snap = env.echo.snapshot()
    with Client(env.port) as c:
        c.trickle(post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n",
                  delay=0.002)
        try:
            c.send(SMUGGLED)
        except OSError:
            pass  # already closed: fine
        r = c.read_response()
        assert r.status == 400 and r.has_close(), r
        assert c.wait_closed(2.0)
    assert env.echo.since(snap)[2] == b""
