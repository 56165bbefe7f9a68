"""A real XMPP client (slixmpp) playing a contact, driven over stdin/stdout by the Rust tests.

    xmpp_contact.py --jid bob@messenger.localhost (--token TOKEN | --password PASS)
                    [--host 127.0.0.1] [--port 5222] [--ca CA_FILE] [--no-presence]

Commands, one JSON object per line on stdin:
    {"op": "send", "to": JID, "body": TEXT?, "state": "active"|"composing"|...?, "id": ID?, "type": "chat"?}
    {"op": "presence", "show": "away"?, "status": TEXT?, "type": "unavailable"?}
    {"op": "roster_set", "jid": JID, "name": TEXT}    -> {"event": "iq_result", ...}
    {"op": "set_vcard", "fn": TEXT, "photo_base64": B64?, "photo_type": MIME?}
                                                      -> {"event": "iq_result", "ok", "photo_hash"}
        publishes our vcard-temp vCard (XEP-0054); later presences carry the photo's SHA-1
        (XEP-0153 vcard-temp:x:update), as Conversations and Dino do
    {"op": "send_raw", "xml": STANZA}                 sends the stanza as given (hostile tests)
    {"op": "quit"}
Events, one JSON object per line on stdout:
    {"event": "ready", "jid": FULL_JID}
    {"event": "message", "from", "to", "type", "id", "body", "state", "delay",
     "reply": {"to", "id"}, "fallbacks": [{"for", "ranges": [[start, end]]}], "replace": ID,
     "retract": ID, "reactions": {"id", "keys": [EMOJI]}, "store": BOOL, "markable": BOOL,
     "displayed": ID, "oob": URL}
                                          (the XEP-0461, 0428, 0308, 0424, 0444, 0334, 0333, 0066 elements;
                                          null or empty when absent)
    {"event": "presence", "from", "type", "show", "status"}
    {"event": "failed", "reason"}         (login failed; the process exits 1)
    {"event": "disconnected"}
Everything else slixmpp logs goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import sys

import slixmpp
from slixmpp.xmlstream import ET


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Contact(slixmpp.ClientXMPP):
    def __init__(self, args: argparse.Namespace) -> None:
        mech = "X-MESSENGER-OAUTH2" if args.token else None
        super().__init__(args.jid, args.password or "", sasl_mech=mech)
        if args.token:
            self.credentials["access_token"] = args.token
        self.ca_certs = args.ca
        self.enable_direct_tls = False
        self.enable_plaintext = False
        # The Messenger-profile host closes idle connections (STACK_XMPP_IDLE_TIMEOUT, 60 s).
        self.whitespace_keepalive_interval = 20
        self.send_presence_on_start = not args.no_presence
        self.photo_hash: str | None = None
        for plugin in ("xep_0030", "xep_0054", "xep_0085", "xep_0203", "xep_0199"):
            self.register_plugin(plugin)
        if args.caps:
            # XEP-0115: presences carry the client's capabilities, which list none of the
            # rich-message XEPs (this peer reads them raw): a client without them.
            self.register_plugin("xep_0115")
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _: self.fail("authentication failed"))
        self.add_event_handler("disconnected", lambda _: emit({"event": "disconnected"}))
        self.add_event_handler("presence", self.on_presence)
        # "message" fires only with a <body/>; listen on the raw stanza instead.
        self.register_handler(
            slixmpp.xmlstream.handler.Callback(
                "all messages", slixmpp.xmlstream.matcher.StanzaPath("message"), self.on_message
            )
        )
        self.ready = asyncio.Event()

    def fail(self, reason: str) -> None:
        emit({"event": "failed", "reason": reason})
        sys.exit(1)

    async def on_start(self, _event) -> None:
        await self.get_roster()
        if "xep_0115" in self.plugin:
            # The first presence carries the capabilities only once they are computed.
            await self.plugin["xep_0115"].update_caps(broadcast=False)
        if self.send_presence_on_start:
            self.send_presence()
        emit({"event": "ready", "jid": str(self.boundjid)})
        self.ready.set()

    def on_message(self, msg) -> None:
        state = None
        for s in ("active", "composing", "paused", "inactive", "gone"):
            if msg.xml.find("{http://jabber.org/protocol/chatstates}" + s) is not None:
                state = s
        delay = msg.xml.find("{urn:xmpp:delay}delay")
        reply = msg.xml.find("{urn:xmpp:reply:0}reply")
        replace = msg.xml.find("{urn:xmpp:message-correct:0}replace")
        retract = msg.xml.find("{urn:xmpp:message-retract:1}retract")
        reactions = msg.xml.find("{urn:xmpp:reactions:0}reactions")
        displayed = msg.xml.find("{urn:xmpp:chat-markers:0}displayed")
        oob = msg.xml.find("{jabber:x:oob}x/{jabber:x:oob}url")
        fallbacks = [
            {
                "for": f.get("for"),
                "ranges": [
                    [int(b.get("start", "-1")), int(b.get("end", "-1"))]
                    for b in f.findall("{urn:xmpp:fallback:0}body")
                ],
            }
            for f in msg.xml.findall("{urn:xmpp:fallback:0}fallback")
        ]
        emit(
            {
                "event": "message",
                "from": str(msg["from"]),
                "to": str(msg["to"]),
                "type": msg["type"],
                "id": msg["id"] or None,
                "body": msg["body"] if msg.xml.find("{jabber:client}body") is not None else None,
                "state": state,
                "delay": delay.get("stamp") if delay is not None else None,
                "reply": {"to": reply.get("to"), "id": reply.get("id")} if reply is not None else None,
                "fallbacks": fallbacks,
                "replace": replace.get("id") if replace is not None else None,
                "retract": retract.get("id") if retract is not None else None,
                "reactions": {
                    "id": reactions.get("id"),
                    "keys": [r.text for r in reactions.findall("{urn:xmpp:reactions:0}reaction")],
                }
                if reactions is not None
                else None,
                "store": msg.xml.find("{urn:xmpp:hints}store") is not None,
                "markable": msg.xml.find("{urn:xmpp:chat-markers:0}markable") is not None,
                "displayed": displayed.get("id") if displayed is not None else None,
                "oob": oob.text if oob is not None else None,
            }
        )

    def on_presence(self, pres) -> None:
        emit(
            {
                "event": "presence",
                "from": str(pres["from"]),
                "type": pres["type"],
                "show": pres["show"] or None,
                "status": pres["status"] or None,
            }
        )

    async def handle(self, cmd: dict) -> None:
        op = cmd.get("op")
        if op == "send":
            msg = self.make_message(mto=cmd["to"], mtype=cmd.get("type", "chat"))
            if cmd.get("body") is not None:
                msg["body"] = cmd["body"]
            if cmd.get("id"):
                msg["id"] = cmd["id"]
            if cmd.get("state"):
                msg["chat_state"] = cmd["state"]
            msg.send()
        elif op == "presence":
            pres = self.make_presence(
                pshow=cmd.get("show"), pstatus=cmd.get("status"), ptype=cmd.get("type")
            )
            if self.photo_hash is not None and cmd.get("type") != "unavailable":
                update = ET.Element("{vcard-temp:x:update}x")
                ET.SubElement(update, "{vcard-temp:x:update}photo").text = self.photo_hash
                pres.append(update)
            pres.send()
        elif op == "set_vcard":
            vcard = self.plugin["xep_0054"].make_vcard()
            vcard["FN"] = cmd["fn"]
            photo = base64.b64decode(cmd["photo_base64"]) if cmd.get("photo_base64") else b""
            if photo:
                vcard["PHOTO"]["TYPE"] = cmd.get("photo_type", "image/png")
                vcard["PHOTO"]["BINVAL"] = photo
            try:
                await self.plugin["xep_0054"].publish_vcard(vcard)
                self.photo_hash = hashlib.sha1(photo).hexdigest() if photo else ""
                emit({"event": "iq_result", "ok": True, "photo_hash": self.photo_hash})
            except slixmpp.exceptions.IqError as e:
                emit({"event": "iq_result", "ok": False, "condition": e.condition})
        elif op == "roster_set":
            try:
                await self.update_roster(cmd["jid"], name=cmd.get("name"))
                emit({"event": "iq_result", "ok": True})
            except slixmpp.exceptions.IqError as e:
                emit({"event": "iq_result", "ok": False, "condition": e.condition})
        elif op == "send_raw":
            self.send_raw(cmd["xml"])
        elif op == "quit":
            self.disconnect()
        else:
            emit({"event": "error", "reason": f"unknown op {op!r}"})


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jid", required=True)
    parser.add_argument("--token")
    parser.add_argument("--password")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5222)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--no-presence", action="store_true")
    parser.add_argument("--caps", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    client = Contact(args)
    client.connect(args.host, args.port)
    try:
        await asyncio.wait_for(client.ready.wait(), 20)
    except asyncio.TimeoutError:
        client.fail("no session within 20 s")

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            cmd = json.loads(line)
        except json.JSONDecodeError as e:
            emit({"event": "error", "reason": f"bad command: {e}"})
            continue
        await client.handle(cmd)
        if cmd.get("op") == "quit":
            break
    client.disconnect()
    await asyncio.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
