"""dnsstub.py: a tiny authoritative DNS server over UDP on 127.0.0.1:<free port> for the e2e tests.

DnsStub(records)  records: {name: (ipv4 address, ttl seconds)}; A queries for a known name get one
                  answer with that TTL, AAAA queries for a known name get an empty NOERROR answer,
                  unknown names get NXDOMAIN. set(name, addr, ttl) changes an answer at run time;
                  queries[name] counts the A queries received.
"""
import socket
import struct
import threading


class DnsStub:
    def __init__(self, records=None):
        self.records = dict(records or {})
        self.queries = {}
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="dnsstub")
        self.thread.start()

    def set(self, name, addr, ttl=1):
        with self.lock:
            self.records[name] = (addr, ttl)

    def count(self, name):
        with self.lock:
            return self.queries.get(name, 0)

    def stop(self):
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()

    def _loop(self):
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = self._answer(data)
            if reply:
                self.sock.sendto(reply, peer)

    def _answer(self, q):
        if len(q) < 12:
            return None
        qid, flags, qd = struct.unpack("!HHH", q[:6])
        if qd != 1:
            return None
        labels, i = [], 12
        while i < len(q) and q[i] != 0:
            n = q[i]
            labels.append(q[i + 1:i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        if i + 5 > len(q):
            return None
        qtype, qclass = struct.unpack("!HH", q[i + 1:i + 5])
        question = q[12:i + 5]
        name = ".".join(labels).lower()
        with self.lock:
            rec = self.records.get(name)
            if qtype == 1:
                self.queries[name] = self.queries.get(name, 0) + 1
        rd = flags & 0x0100
        if rec is None:
            return struct.pack("!HHHHHH", qid, 0x8403 | rd, 1, 0, 0, 0) + question  # NXDOMAIN
        if qtype != 1:
            return struct.pack("!HHHHHH", qid, 0x8400 | rd, 1, 0, 0, 0) + question  # no data
        addr, ttl = rec
        answer = struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + socket.inet_aton(addr)
        return struct.pack("!HHHHHH", qid, 0x8400 | rd, 1, 1, 0, 0) + question + answer
