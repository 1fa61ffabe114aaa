#!/usr/bin/env python3
"""A lab child in Python (standard library only) that partitions itself
from a peer through the barrier controller's conductor, sees its connect
time out, heals, and connects again.

    multinode run -n 2 --net --faults -- python3 examples/partition_self.py
"""
import os
import socket

host, port = os.environ["MULTINODE_BARRIER_ADDR"].rsplit(":", 1)
me = int(os.environ["MULTINODE_NODE_INDEX"])
my_addr = os.environ["MULTINODE_HOST_ADDR"]

ctl = socket.create_connection((host, int(port)), timeout=30)
lines = ctl.makefile("rw", newline="\n")


def say(line):
    lines.write(line + "\n")
    lines.flush()


def hear():
    return lines.readline().rstrip("\n")


say(f"HELLO {me}")
hear()  # WELCOME <id> <nodes>

# Listen on this host's own address, and learn the others' through a
# data-carrying barrier.
server = socket.create_server((my_addr, 0))
say(f"GATHER addrs {my_addr}:{server.getsockname()[1]}")
peers = {}
while True:
    reply = hear()
    if not reply.startswith("VALUE "):
        break  # OK addrs
    _, _, node, value = reply.split(" ")
    peers[int(node)] = value


def try_connect(peer, timeout):
    h, p = peers[peer].rsplit(":", 1)
    try:
        socket.create_connection((h, int(p)), timeout=timeout).close()
        return "connected"
    except OSError as e:
        return type(e).__name__


if me == 0:
    print("before:", try_connect(1, 5), flush=True)
    say("PARTITION 0 1")
    print(hear(), flush=True)  # OK PARTITION received=... cut=...
    print("during:", try_connect(1, 1), flush=True)
    say("HEAL")
    print(hear(), flush=True)
    print("after:", try_connect(1, 5), flush=True)

say("BARRIER done")
hear()
say("LEAVE")
hear()
