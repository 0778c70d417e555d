#!/usr/bin/env python3
"""Round trips between two network namespaces, for perf/cluster.sh (this machine has no ping).

`udp_rtt.py echo IP PORT` answers every datagram until killed; `udp_rtt.py ping IP PORT COUNT`
sends COUNT datagrams one at a time and prints each round trip as ping does (`time=X ms`).
Both ends are Python, so a round trip includes a few microseconds of interpreter time per side;
the bound it feeds is that much looser, never tighter."""
import socket
import sys
import time


def echo(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, port))
    while True:
        data, peer = s.recvfrom(64)
        s.sendto(data, peer)


def ping(ip, port, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    for seq in range(count):
        start = time.perf_counter()
        s.sendto(seq.to_bytes(4, "big"), (ip, port))
        try:
            s.recvfrom(64)
        except socket.timeout:
            print("seq=%d lost" % seq)
            continue
        print("seq=%d time=%.3f ms" % (seq, (time.perf_counter() - start) * 1000))
        time.sleep(0.005)


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(sys.argv[2], int(sys.argv[3]))
    else:
        ping(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
