"""Many real XMPP clients (slixmpp, one process) playing contacts that write at once, for the
fan-out benchmark (crates/messenger-bridge/benches/fanout.rs).

    burst_contacts.py --domain xmpp.localhost --users bench01,bench02,... --to alice@messenger.localhost
                      [--host 127.0.0.1] [--port 5222] [--ca CA_FILE]

Every user logs in with the password "<user>pass". Commands, one JSON object per line on stdin:
    {"op": "send", "count": N, "tag": TEXT}   each contact sends N messages "<tag> <user> <i>",
                                               unpaced, each with <active/> as real clients do
    {"op": "quit"}
Events on stdout:
    {"event": "ready", "n": CONTACTS}          all logged in
    {"event": "sent", "n": MESSAGES}           all handed to their streams
    {"event": "failed", "reason": TEXT}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import slixmpp


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Contact(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str, ca: str | None) -> None:
        super().__init__(jid, password)
        self.ca_certs = ca
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.whitespace_keepalive_interval = 20
        self.register_plugin("xep_0085")
        self.ready = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _: emit({"event": "failed", "reason": f"{jid}: authentication failed"}))

    async def on_start(self, _event) -> None:
        self.send_presence()
        self.ready.set()

    def burst(self, to: str, count: int, tag: str) -> None:
        user = self.boundjid.user
        for i in range(count):
            msg = self.make_message(mto=to, mbody=f"{tag} {user} {i}", mtype="chat")
            msg["chat_state"] = "active"
            msg.send()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--users", required=True, help="comma-separated localparts")
    parser.add_argument("--to", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5222)
    parser.add_argument("--ca")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    contacts = [Contact(f"{u}@{args.domain}", f"{u}pass", args.ca) for u in args.users.split(",")]
    for c in contacts:
        c.connect(host=args.host, port=args.port)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in contacts)), 60)
    except asyncio.TimeoutError:
        emit({"event": "failed", "reason": "not every contact logged in within 60 s"})
        return 1
    emit({"event": "ready", "n": len(contacts)})

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["op"] == "send":
            for c in contacts:
                c.burst(args.to, cmd["count"], cmd["tag"])
            emit({"event": "sent", "n": cmd["count"] * len(contacts)})
        elif cmd["op"] == "quit":
            break
    for c in contacts:
        c.disconnect()
    await asyncio.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
