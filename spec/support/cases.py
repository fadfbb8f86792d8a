"""cases.py: data-driven e2e cases. A Case is the raw bytes a client sends, the status(es) it must
get, whether the gateway must close the connection afterwards, and what the upstream must have
received. run_case() plays it twice against the same gateway process, each time on a fresh
connection, so that state leaking from one request to the next shows up.
"""
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from gw import Client

# Appended behind requests the gateway must reject: it must never reach the upstream.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: s\r\n\r\n"

NOTHING = "nothing"        # not one byte reached the upstream
NO_REQUEST = "no_request"  # no complete request reached the upstream (a head may have)


@dataclass
class Case:
    id: str
    send: bytes
    status: Union[int, Sequence[int]]
    close: bool = True
    # NOTHING, NO_REQUEST, None (do not check) or a function(list of RecordedRequest)
    upstream: Any = NOTHING
    responses: int = 1
    method: str = "GET"            # of the request whose response is read (HEAD: no body)
    clean: bool = True             # no [error] line in the error log
    check: Optional[Callable] = None  # function(list of Response) for extra assertions
    timeout: float = 5.0
    note: str = ""

    def __str__(self):
        return self.id


def _statuses(case):
    if isinstance(case.status, int):
        return {case.status}
    return set(case.status)


def run_case(gw, stub, case, repeat=2, follow_target="/ok"):
    for attempt in range(1, repeat + 1):
        where = "%s (run %d)" % (case.id, attempt)
        snap = stub.snapshot()
        mark = gw.error_mark()
        with Client(gw.port, timeout=case.timeout) as c:
            c.send(case.send)
            resps = []
            for i in range(case.responses):
                r = c.read_response(case.method if i == case.responses - 1 else "GET")
                resps.append(r)
            last = resps[-1]
            want = _statuses(case)
            assert last.status in want, "%s: status %s, want %s: %r" % (
                where, last.status, sorted(want), last)
            if case.close:
                assert last.has_close(), "%s: %d without Connection: close: %r" % (
                    where, last.status, last)
                assert c.wait_closed(2.0), "%s: connection still open after %d" % (
                    where, last.status)
            else:
                assert not last.has_close(), "%s: unexpected Connection: close: %r" % (
                    where, last)
            time.sleep(0.05)
            reqs, partial, raw = stub.since(snap)
            if not case.close:
                # the connection must still be usable
                c.send(b"GET " + follow_target.encode() + b" HTTP/1.1\r\nHost: follow\r\n\r\n")
                f = c.read_response()
                assert f.status == 200, "%s: follow-up request on the same connection got %r" % (
                    where, f)
        assert b"/smuggled" not in raw, "%s: smuggled request reached the upstream: %r" % (
            where, raw[:400])
        if case.upstream == NOTHING:
            assert raw == b"", "%s: the upstream received %d bytes: %r" % (
                where, len(raw), raw[:400])
        elif case.upstream == NO_REQUEST:
            assert reqs == [], "%s: the upstream received a complete request: %r" % (
                where, [r.raw[:400] for r in reqs])
        elif callable(case.upstream):
            case.upstream(reqs)
        if case.check:
            case.check(resps)
        gw.assert_alive()
        if case.clean:
            gw.assert_no_error(mark)
