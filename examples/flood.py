#!/usr/bin/env python3
"""Handshake flood against a WireGuard responder, for tests and benchmarks.

Exists because issue 11 item 6 asks that a flood of handshake initiations
with a valid mac1 (anyone can compute it from the responder's public key)
mixed with garbage of every length never starves established sessions.
`tests/flood.rs` and `examples/bench-flood.sh` run it in a network namespace
of their own against an address inside another namespace they created.

One process, one UDP socket, as fast as Python can send, for a bounded
time (--seconds, or until SIGINT/SIGTERM). Every other datagram is a 148-byte initiation with random ephemeral,
static and timestamp fields, a unique sender index and a valid mac1 for the
target's public key; the others are garbage cycling through every length
from 0 to --max-len bytes, whose first byte cycles through the four message
types and others (so wrong-length handshake and transport messages are in
it too). Between sends the socket is drained: every datagram the target
sends back is checked against what it could answer (a cookie reply, type 3,
64 bytes, naming the sender index of one of our initiations) and never
larger than the 148-byte initiation it answers. Prints one JSON object.
"""

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import struct
import time

INIT_LEN = 148
MAC1_OFF = 116
LABEL_MAC1 = b"mac1----"


def mac1_key(public_key: bytes) -> bytes:
    return hashlib.blake2s(LABEL_MAC1 + public_key).digest()


def initiation(key: bytes, sender: int) -> bytes:
    body = struct.pack("<II", 1, sender) + os.urandom(32 + 48 + 28)
    assert len(body) == MAC1_OFF
    mac1 = hashlib.blake2s(body, key=key, digest_size=16).digest()
    return body + mac1 + bytes(16)


def garbage(n: int) -> bytes:
    b = bytearray(os.urandom(n))
    if n >= 4:
        # Types 1..4 with zero reserved bytes reach the type dispatch; 0 and
        # 5 are unknown types.
        b[0] = n % 6
        b[1:4] = b"\0\0\0"
    return bytes(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="IP:PORT of the responder")
    ap.add_argument("--public-key", required=True, help="responder's public key (base64)")
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="how long to flood at most (SIGINT/SIGTERM stop it earlier)")
    ap.add_argument("--max-len", type=int, default=1500, help="longest garbage datagram")
    ap.add_argument("--pool", type=int, default=4096, help="distinct initiations (sender indices)")
    args = ap.parse_args()
    if not 0 < args.seconds <= 120:
        raise SystemExit("--seconds must be in (0, 120]")

    host, port = args.target.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    dst = (host, int(port))
    key = mac1_key(base64.b64decode(args.public_key))
    base = int.from_bytes(os.urandom(4), "little") & 0x7FFF0000
    inits = [initiation(key, base + i) for i in range(args.pool)]
    junk = [garbage(n) for n in range(args.max_len + 1)]

    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))

    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setblocking(False)
    s.connect(dst)  # send() is cheaper than sendto(); replies come from dst only
    sent = {"initiations": 0, "garbage": 0, "bytes": 0, "send_errors": 0}
    got = {"replies": 0, "reply_bytes": 0, "max_reply_len": 0, "cookie_replies": 0,
           "unexpected_replies": 0, "larger_than_answered": 0}

    def drain() -> None:
        while True:
            try:
                d = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP error reported on the connected socket
                continue
            got["replies"] += 1
            got["reply_bytes"] += len(d)
            got["max_reply_len"] = max(got["max_reply_len"], len(d))
            # The only thing we sent that may be answered is an initiation.
            if len(d) > INIT_LEN:
                got["larger_than_answered"] += 1
            if len(d) == 64 and d[0] == 3 and d[1:4] == b"\0\0\0":
                idx = struct.unpack_from("<I", d, 4)[0]
                if base <= idx < base + args.pool:
                    got["cookie_replies"] += 1
                    continue
            got["unexpected_replies"] += 1

    send = s.send
    ni, nj = len(inits), len(junk)
    i = 0
    start = time.monotonic()
    deadline = start + args.seconds
    while True:
        # Check the clock and drain once per 256 datagrams sent.
        for _ in range(128):
            a = inits[i % ni]
            b = junk[i % nj]
            i += 1
            try:
                send(a)
                send(b)
            except OSError:  # buffer full, or ICMP unreachable reported
                sent["send_errors"] += 1
        drain()
        if stop or time.monotonic() >= deadline:
            break
    elapsed = time.monotonic() - start
    sent["initiations"] = i
    sent["garbage"] = i
    junk_cycle = sum(len(j) for j in junk)
    sent["bytes"] = i * INIT_LEN + (i // nj) * junk_cycle + sum(len(junk[k]) for k in range(i % nj))
    # Late answers.
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        drain()
        try:
            time.sleep(0.01)
        except InterruptedError:
            pass
    rate = 2 * i / elapsed if elapsed > 0 else 0.0
    print(json.dumps({"seconds": round(elapsed, 3), "datagrams_per_second": round(rate),
                      "sent": sent, "received": got}))


if __name__ == "__main__":
    main()
