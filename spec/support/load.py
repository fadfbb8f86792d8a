"""load.py: a load loop of our own for the process-model suites (reload under load, a worker
killed under load).

Load(port, threads=4, keepalive=True, target="/load")
    start() runs <threads> threads, each sending GETs as fast as answers come back: on one
    keep-alive connection each (reconnecting only after a failure or a Connection: close), or a
    fresh connection per request (keepalive=False; a list gives one choice per thread). stop()
    ends them and returns self. Every request must get a complete 200; anything else (a status,
    a reset, a close, a timeout, a refused connection) is a failure, recorded per thread with
    its time and what happened.
    owners(gw) maps each thread's current connection to the gateway process serving it.
"""
import threading
import time

from gw import Client, socket_owner
from httpio import Closed, ProtocolError, Timeout


class Failure:
    def __init__(self, thread, what, local_port):
        self.time = time.monotonic()
        self.thread = thread
        self.what = what
        self.local_port = local_port   # client-side port of the connection, None if none

    def __repr__(self):
        return "<thread %d port %s: %s>" % (self.thread, self.local_port, self.what)


class Load:
    def __init__(self, port, threads=4, keepalive=True, target="/load", timeout=3.0):
        self.port = port
        self.n = threads
        self.keepalive = keepalive if isinstance(keepalive, list) else [keepalive] * threads
        self.target = target
        self.timeout = timeout
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.ok = [0] * threads
        self.failures = []
        self.clients = [None] * threads
        self.threads = []
        self.started = None
        self.stopped = None

    def start(self):
        self.started = time.monotonic()
        for i in range(self.n):
            t = threading.Thread(target=self._run, args=(i,), daemon=True, name="load-%d" % i)
            t.start()
            self.threads.append(t)
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(self.timeout + 2)
        self.stopped = time.monotonic()
        for c in self.clients:
            if c is not None:
                c.close()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        if not self.stopping.is_set():
            self.stop()

    @property
    def total_ok(self):
        return sum(self.ok)

    def failures_of(self, thread):
        return [f for f in self.failures if f.thread == thread]

    def wait_ok(self, n, timeout=5.0):
        """Waits until <n> more requests succeeded than now (the load is flowing)."""
        base = self.total_ok
        deadline = time.monotonic() + timeout
        while self.total_ok - base < n:
            assert time.monotonic() < deadline, "load: only %d answers in %.1f s; failures %r" % (
                self.total_ok - base, timeout, self.failures[:5])
            time.sleep(0.01)

    def owners(self, gw):
        """{thread: (client port, pid of the gateway process holding the other end)} for the
        threads that have a connection now."""
        out = {}
        pids = gw.worker_pids() + [gw.pid]
        for i, c in enumerate(list(self.clients)):
            if c is None:
                continue
            try:
                lp = c.sock.getsockname()[1]
            except OSError:
                continue
            out[i] = (lp, socket_owner(self.port, lp, pids))
        return out

    def summary(self):
        return "%d ok, %d failed (%r)" % (self.total_ok, len(self.failures), self.failures[:10])

    def _fail(self, i, what, c):
        port = None
        if c is not None:
            try:
                port = c.sock.getsockname()[1]
            except OSError:
                pass
        with self.lock:
            self.failures.append(Failure(i, what, port))

    def _run(self, i):
        keep = self.keepalive[i]
        c = None
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                if c is None:
                    c = Client(self.port, timeout=self.timeout)
                    self.clients[i] = c
                hdrs = [] if keep else [("Connection", "close")]
                c.request("GET", "%s?t=%d&n=%d" % (self.target, i, n), headers=hdrs)
                r = c.read_response()
                if r.status != 200:
                    self._fail(i, "status %d: %r" % (r.status, r.body[:200]), c)
                else:
                    self.ok[i] += 1
                if not keep or r.has_close() or r.status != 200:
                    c.close()
                    c = self.clients[i] = None
            except (OSError, Closed, Timeout, ProtocolError) as e:
                self._fail(i, "%s: %s" % (type(e).__name__, e), c)
                if c is not None:
                    c.close()
                c = self.clients[i] = None
                time.sleep(0.01)
