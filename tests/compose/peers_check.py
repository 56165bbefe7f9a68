"""Which addresses the compose containers talk to: every TCP connection in each container's
network namespace (/proc/net/tcp and tcp6, read with `docker exec`), checked against the
project's own network and loopback. tests/compose/run runs it after the demo.

    peers_check.py SUBNET CONTAINER_ID...     prints one line per foreign peer; exit 1 if any
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys

STATES_IGNORED = {"0A"}  # LISTEN


def addr(hex_addr: str) -> ipaddress._BaseAddress:
    host, _port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    # IPv6: four 32-bit words, each in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    v6 = ipaddress.IPv6Address(words)
    return v6.ipv4_mapped or v6


def main() -> int:
    subnet = ipaddress.ip_network(sys.argv[1])
    foreign = 0
    for cid in sys.argv[2:]:
        out = subprocess.run(["docker", "exec", cid, "cat", "/proc/net/tcp", "/proc/net/tcp6"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            print(f"{cid[:12]}: cannot read its connections: {out.stderr.strip()}")
            foreign += 1
            continue
        for line in out.stdout.splitlines():
            parts = line.split()
            if len(parts) < 4 or parts[0] == "sl" or parts[3] in STATES_IGNORED:
                continue
            peer = addr(parts[2])
            if peer.is_unspecified or peer.is_loopback or peer in subnet:
                continue
            print(f"{cid[:12]}: connection to {peer} (state {parts[3]})")
            foreign += 1
    return 1 if foreign else 0


if __name__ == "__main__":
    sys.exit(main())
