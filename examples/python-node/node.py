#!/usr/bin/env python3
"""A replicated last-write-wins key-value store that keeps the multinode node
contract (docs/node-contract.md), in Python's standard library only.

    multinode check-node -- python3 examples/python-node/node.py
    cargo xtask test-cluster --node-cmd "python3 examples/python-node/node.py"

Small but correct: every write and every entry learned from a peer is
appended to a log in --data-dir and fsynced before it is acknowledged or
becomes visible; versions are hybrid logical clock timestamps
(ms, logical, node) that never tie across nodes; peers exchange their
entries over TCP (everything changed since the last push, and the whole
state every 20 rounds); the highest version of a key wins everywhere.

`--plant BUG` (test-only) starts it with one of five known defects, which
`cargo xtask planted` proves the checker catches (docs/history.md).
"""
import argparse
import json
import os
import random
import socket
import sys
import threading
import time
import urllib.parse

ROUND = 0.05  # seconds between pushes
FULL_EVERY = 20  # rounds between whole-state pushes

# Known defects this node can be started with (`--plant BUG`), to prove that
# test-cluster's checker catches them: `cargo xtask planted`. Test-only.
PLANTS = (
    "ack-before-durable",  # reply OK, write the log 300 ms later, no fsync
    "ties-toward-local",  # compare (ms, logical) only; on a tie keep ours
    "collect-tombstones-at-once",  # a delete forgets the key at once
    "forget-log-tail",  # on restart, ignore the log's last 5 records
    "merge-keeps-first",  # a key held is never replaced by a peer's
)
PLANT = None


def enc(b):
    """Percent-encodes bytes as the control lines do."""
    return "".join(chr(c) if 33 <= c <= 126 and c != 37 else "%%%02X" % c for c in b)


def dec(s):
    return urllib.parse.unquote_to_bytes(s)


def vtext(v):
    return "%d.%d@%d" % v


def vparse(s):
    t, n = s.split("@")
    ms, lg = t.split(".")
    return (int(ms), int(lg), int(n))


class Store:
    """Entries by key, each (version, value or None), durable in a log."""

    def __init__(self, path, me):
        self.me = me
        self.lock = threading.Lock()
        self.data = {}
        self.seq = {}  # key -> local change number, for deltas
        self.changes = 0
        self.clock = (0, 0)
        if os.path.exists(path):
            with open(path, "rb") as f:
                lines = f.readlines()
            if PLANT == "forget-log-tail":
                lines = lines[:-5]
            for raw in lines:
                try:
                    k, v, x = json.loads(raw)
                except ValueError:
                    break  # a torn last line: never acknowledged
                self._apply(k, tuple(v), x)
        self.log = open(path, "ab")

    def _newer(self, k, v):
        cur = self.data.get(k)
        if cur is None:
            return True
        if PLANT == "merge-keeps-first":
            return False
        if PLANT == "ties-toward-local":
            return v[:2] > cur[0][:2]
        return v > cur[0]

    def _apply(self, k, v, x):
        cur = self.data.get(k)
        if cur is None or v > cur[0]:
            self.data[k] = (v, x)
            self.changes += 1
            self.seq[k] = self.changes
        self.clock = max(self.clock, v[:2])
        return cur is None or v > cur[0]

    def _persist(self, items):
        for k, v, x in items:
            self.log.write(json.dumps([k, list(v), x]).encode() + b"\n")
        self.log.flush()
        os.fsync(self.log.fileno())

    def write(self, k, x):
        with self.lock:
            ms = int(time.time() * 1000)
            if ms > self.clock[0]:
                v = (ms, 0, self.me)
            else:
                v = (self.clock[0], self.clock[1] + 1, self.me)
            if PLANT == "ack-before-durable":
                threading.Timer(0.3, self._late, args=((k, v, x),)).start()
            else:
                self._persist([(k, v, x)])
            self._apply(k, v, x)
            if PLANT == "collect-tombstones-at-once" and x is None:
                del self.data[k]
                self.seq.pop(k, None)
            return v

    def _late(self, item):
        with self.lock:
            k, v, x = item
            self.log.write(json.dumps([k, list(v), x]).encode() + b"\n")
            self.log.flush()

    def merge(self, items):
        with self.lock:
            newer = [(k, v, x) for k, v, x in items if self._newer(k, v)]
            if newer:
                self._persist(newer)  # durable before visible
                for k, v, x in newer:
                    cur = self.data.get(k)
                    if cur is None or v != cur[0]:
                        self.data[k] = (v, x)
                        self.changes += 1
                        self.seq[k] = self.changes
                    self.clock = max(self.clock, v[:2])

    def since(self, mark):
        with self.lock:
            return [(k, self.data[k][0], self.data[k][1])
                    for k, s in self.seq.items() if s > mark], self.changes


class Barrier:
    """A client of the barrier controller's line protocol."""

    def __init__(self, addr, me):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.f = self.sock.makefile("rw", newline="\n")
        self.say("HELLO %d" % me)
        self.hear()

    def say(self, line):
        self.f.write(line + "\n")
        self.f.flush()

    def hear(self):
        return self.f.readline().rstrip("\n")

    def gather(self, label, value):
        self.say("GATHER %s %s" % (label, value))
        values = {}
        while True:
            r = self.hear()
            w = r.split(" ")
            if w[0] == "VALUE":
                values[int(w[2])] = w[3]
            elif r == "OK " + label:
                return values
            else:
                raise RuntimeError(r)

    def barrier(self, label):
        self.say("BARRIER " + label)
        r = self.hear()
        if r != "OK " + label:
            raise RuntimeError(r)


class Node:
    def __init__(self, me, store, bind):
        self.me = me
        self.store = store
        self.peers = {}  # id -> (host, port)
        self.cut = set()
        self.drop = 0.0
        self.dropped = 0
        self.server = socket.create_server((bind, 0))
        self.addr = "%s:%d" % self.server.getsockname()[:2]
        threading.Thread(target=self.accept, daemon=True).start()
        threading.Thread(target=self.push, daemon=True).start()

    def accept(self):
        while True:
            conn, _ = self.server.accept()
            threading.Thread(target=self.receive, args=(conn,), daemon=True).start()

    def receive(self, conn):
        with conn, conn.makefile("rb") as f:
            for raw in f:
                try:
                    items = [(k, tuple(v), x) for k, v, x in json.loads(raw)]
                except (ValueError, TypeError):
                    return  # a hostile or broken peer costs its own connection
                self.store.merge(items)

    def push(self):
        conns, marks, rounds = {}, {}, 0
        while True:
            time.sleep(ROUND)
            rounds += 1
            for peer, at in list(self.peers.items()):
                if peer in self.cut or random.random() < self.drop:
                    self.dropped += 1
                    continue
                full = rounds % FULL_EVERY == 0 or peer not in conns
                items, mark = self.store.since(0 if full else marks.get(peer, 0))
                try:
                    if peer not in conns:
                        conns[peer] = socket.create_connection(at, timeout=1)
                    if items:
                        line = json.dumps([[k, list(v), x] for k, v, x in items])
                        conns[peer].sendall(line.encode() + b"\n")
                    marks[peer] = mark
                except OSError:
                    conns.pop(peer, None)


def serve(node, barrier, out):
    def reply(line):
        out.write(line + "\n")
        out.flush()

    for raw in sys.stdin:
        w = raw.rstrip("\r\n").split(" ")
        try:
            if w == ["QUIT"]:
                return
            elif w[0] == "PING" and len(w) == 1:
                reply("PONG")
            elif w[0] == "SET" and len(w) == 3:
                v = node.store.write(dec(w[1]).decode(), enc(dec(w[2])))
                reply("OK " + vtext(v))
            elif w[0] == "DEL" and len(w) == 2:
                reply("OK " + vtext(node.store.write(dec(w[1]).decode(), None)))
            elif w[0] == "GET" and len(w) == 2:
                with node.store.lock:
                    e = node.store.data.get(dec(w[1]).decode())
                if e is None:
                    reply("NONE")
                elif e[1] is None:
                    reply("GONE " + vtext(e[0]))
                else:
                    reply("VALUE %s %s" % (vtext(e[0]), e[1]))
            elif w == ["DUMP"]:
                with node.store.lock:
                    entries = sorted(node.store.data.items())
                for k, (v, x) in entries:
                    k = enc(k.encode())
                    out.write(("LIVE %s %s %s\n" % (k, vtext(v), x)) if x is not None
                              else ("GONE %s %s\n" % (k, vtext(v))))
                reply("END %d" % len(entries))
            elif w[0] == "JOIN" and len(w) == 2 and barrier:
                peers = barrier.gather(w[1], node.addr)
                for peer, at in peers.items():
                    if peer != node.me:
                        h, p = at.rsplit(":", 1)
                        node.peers[peer] = (h, int(p))
                reply("OK peers=%d" % len(node.peers))
            elif w[0] == "BARRIER" and len(w) >= 2 and barrier:
                barrier.barrier(" ".join(w[1:]))
                reply("OK " + " ".join(w[1:]))
            elif w[0] == "CUT" and len(w) >= 2:
                node.cut.update(int(p) for p in w[1:])
                reply("OK")
            elif w == ["HEAL"]:
                node.cut.clear()
                reply("OK")
            elif w[0] == "DROP" and len(w) == 2 and 0 <= float(w[1]) <= 1:
                node.drop = float(w[1])
                reply("OK")
            elif w == ["FAULTS"]:
                reply("FAULTS cut=%d" % node.dropped)
            else:
                reply("ERR unknown or malformed line")
        except (ValueError, UnicodeDecodeError, RuntimeError) as e:
            reply("ERR %s" % str(e).replace("\n", " "))


def main():
    global PLANT
    args = argparse.ArgumentParser()
    args.add_argument("--data-dir", required=True)
    args.add_argument("--plant", choices=PLANTS, help="test-only: a known defect")
    a = args.parse_args()
    PLANT = a.plant
    me = int(os.environ["MULTINODE_NODE_INDEX"])
    os.makedirs(a.data_dir, exist_ok=True)
    store = Store(os.path.join(a.data_dir, "log.jsonl"), me)
    node = Node(me, store, os.environ.get("MULTINODE_HOST_ADDR", "127.0.0.1"))
    addr = os.environ.get("MULTINODE_BARRIER_ADDR")
    barrier = Barrier(addr, me) if addr else None
    if barrier and os.environ.get("MULTINODE_NO_JOIN") != "1":
        for peer, at in barrier.gather("join", node.addr).items():
            if peer != me:
                h, p = at.rsplit(":", 1)
                node.peers[peer] = (h, int(p))
    out = sys.stdout
    out.write("READY %d %s entries=%d\n" % (me, node.addr, len(store.data)))
    out.flush()
    serve(node, barrier, out)
    if barrier:
        barrier.say("LEAVE")


if __name__ == "__main__":
    main()
