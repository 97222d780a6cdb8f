#!/usr/bin/env python3
"""One hostile client of a credshard server, for as long as it is told, reconnecting whenever
the server closes on it. Each mode reproduces one finding of issue 11 (docs/performance.md,
"Honest clients beside a hostile one"):

  audit      no token: refused BATCH_GETs of 100 ids, pipelined (audit amplification, finding 1)
  unread     16 connections with a token pipeline GETs and never read a reply (finding 2)
  bigreply   3 connections with a read token send BATCH_GETs of one 64 KiB secret x 1000 and
             never read (reply buffering, finding 3)
  bigframe   100 connections without a token each start a 1 MiB frame and send it slowly
             (unauthenticated memory, finding 4)

Usage: hostile.py MODE HOST:PORT SECONDS [TOKEN [ID]]   (TOKEN for unread/bigreply; ID of the
64 KiB secret for bigreply). Prints what it sent when the time is up.
"""
import socket
import struct
import sys
import threading
import time

OP_HELLO, OP_GET, OP_BATCH_GET = 0x01, 0x11, 0x15


def frame(op, request_id, body):
    return struct.pack("<IBBI", 6 + len(body), op, 0, request_id) + body


def str16(text):
    data = text.encode()
    return struct.pack("<H", len(data)) + data


def hello(token):
    return frame(OP_HELLO, 1, struct.pack("<HI", 1, len(token)) + token)


def batch_get(ids):
    return frame(OP_BATCH_GET, 2, struct.pack("<H", len(ids)) + b"".join(str16(i) for i in ids))


def get(id_):
    return frame(OP_GET, 3, str16(id_) + struct.pack("<Q", 0))


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.connections = 0
        self.bytes_sent = 0
        self.closed_by_server = 0

    def add(self, **values):
        with self.lock:
            for name, value in values.items():
                setattr(self, name, getattr(self, name) + value)


def connect(address):
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def audit_flood(address, deadline, counters):
    request = batch_get([f"victim-{i:04d}/db" for i in range(100)]) * 16
    while time.time() < deadline:
        try:
            sock = connect(address)
            counters.add(connections=1)
            sock.sendall(request)
            counters.add(bytes_sent=len(request))
            while sock.recv(65536):  # the server answers, then closes after 16 refusals
                pass
            counters.add(closed_by_server=1)
        except OSError:
            counters.add(closed_by_server=1)
        finally:
            sock.close()


def never_read(address, deadline, counters, first, request):
    while time.time() < deadline:
        try:
            sock = connect(address)
            counters.add(connections=1)
            sock.settimeout(1.0)
            sock.sendall(first)
            while time.time() < deadline:
                try:
                    sent = sock.send(request)
                    counters.add(bytes_sent=sent)
                except socket.timeout:
                    continue  # the server stopped reading: keep pushing, never read
            sock.close()
        except OSError:
            counters.add(closed_by_server=1)
            time.sleep(0.05)


def slow_frame(address, deadline, counters):
    while time.time() < deadline:
        try:
            sock = connect(address)
            counters.add(connections=1)
            sock.sendall(struct.pack("<IBBI", (1 << 20) - 1 - 4, OP_GET, 0, 9))
            while time.time() < deadline:
                sock.sendall(b"x" * 4096)
                counters.add(bytes_sent=4096)
                time.sleep(0.1)
        except OSError:
            counters.add(closed_by_server=1)
            time.sleep(0.05)


def main():
    mode, address, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    token = sys.argv[4].encode() if len(sys.argv) > 4 else b""
    deadline = time.time() + seconds
    counters = Counters()
    if mode == "audit":
        workers = [(audit_flood, (address, deadline, counters))]
    elif mode == "unread":
        request = get("svc-0001/db") * 256
        workers = [(never_read, (address, deadline, counters, hello(token), request))] * 16
    elif mode == "bigreply":
        request = batch_get([sys.argv[5]] * 1000)
        workers = [(never_read, (address, deadline, counters, hello(token), request))] * 3
    elif mode == "bigframe":
        workers = [(slow_frame, (address, deadline, counters))] * 100
    else:
        sys.exit(f"unknown mode {mode}")
    threads = [threading.Thread(target=target, args=args, daemon=True) for target, args in workers]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, deadline - time.time()))
    print(
        f"hostile {mode}: {counters.connections} connections, {counters.bytes_sent / 1e6:.1f} MB sent, "
        f"{counters.closed_by_server} closed by the server"
    )


if __name__ == "__main__":
    main()
