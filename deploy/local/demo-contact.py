"""The demo's contact: a real XMPP client (slixmpp) that greets the demo user once and answers
every chat message. Started by `deploy/local/demo up`.

    demo-contact.py --jid bob@messenger.localhost --token TOKEN --to alice@messenger.localhost --ca CA
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import slixmpp


class Contact(slixmpp.ClientXMPP):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args.jid, "", sasl_mech="X-MESSENGER-OAUTH2")
        self.credentials["access_token"] = args.token
        self.ca_certs = args.ca
        self.enable_direct_tls = False
        self.enable_plaintext = False
        # The Messenger-profile host closes idle connections (STACK_XMPP_IDLE_TIMEOUT, 60 s).
        self.whitespace_keepalive_interval = 20
        self.greet = args.to
        for plugin in ("xep_0030", "xep_0085", "xep_0199"):
            self.register_plugin(plugin)
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)

    async def on_start(self, _event) -> None:
        await self.get_roster()
        self.send_presence(pstatus="Building things")
        await asyncio.sleep(3)
        self.send_message(mto=self.greet, mtype="chat",
                          mbody="Hi! I'm Bob, a Messenger contact. Write me anything and I'll answer.")

    def on_message(self, msg) -> None:
        if msg["type"] != "chat" or not msg["body"]:
            return
        reply = msg.reply(f"Bob here — you said: {msg['body']}")
        reply["chat_state"] = "active"
        reply.send()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jid", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5222)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    client = Contact(args)
    client.connect(args.host, args.port)
    asyncio.get_event_loop().run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
