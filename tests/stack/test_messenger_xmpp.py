"""The Messenger-profile XMPP host (messenger.localhost) with real clients.

slixmpp logs in the way Messenger clients did: OAuth 2.0 authorization-code flow with PKCE at
the stack's provider, then SASL X-MESSENGER-OAUTH2 with the raw access token. The server's
profile restrictions are checked with slixmpp where a client would meet them and with a raw
socket where the exact wire behaviour matters.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
import xml.etree.ElementTree as ET

import pytest
import slixmpp
from slixmpp.exceptions import IqError

import oauth_flow
from conftest import AuthFailed, disconnect, run, wait_until, xmpp_connect
from xmpp_raw import RawXMPP

MECH = "X-MESSENGER-OAUTH2"


@pytest.fixture(scope="module")
def dom(env) -> str:
    return env["XMPP_MESSENGER_DOMAIN"]


def login(env, dom, token, **kw):
    return xmpp_connect(env, dom, token=token, mech=MECH, **kw)


def test_authorization_code_flow_with_pkce_gives_tokens(env, tokens):
    t = tokens("alice")
    assert t["token_type"] == "Bearer"
    assert t["access_token"] and t["refresh_token"], t
    assert {"wl.messenger", "wl.offline_access"} <= set(t["scope"].split())
    assert 0 < t["expires_in"] <= int(env["OAUTH_ACCESS_TOKEN_TTL"])


def test_login_binds_the_tokens_identity_and_reads_the_provisioned_roster(env, dom, tokens):
    async def go():
        # The client offers bob's JID; the server must ignore it and bind alice (the token's sub).
        c = await xmpp_connect(env, dom, jid=f"bob@{dom}", token=tokens("alice")["access_token"], mech=MECH)
        try:
            assert c.boundjid.bare == f"alice@{dom}"
            assert c.boundjid.resource
            roster = {
                str(j): (c.client_roster[j]["name"], c.client_roster[j]["subscription"])
                for j in c.client_roster
                if str(j) != c.boundjid.bare
            }
            assert roster == {
                f"bob@{dom}": ("Bob Builder", "both"),
                f"carol@{dom}": ("Carol Singer", "both"),
            }
        finally:
            await disconnect(c)

    run(go())


def test_contact_vcard_has_name_nickname_and_png_photo(env, dom, tokens):
    async def go():
        c = await login(env, dom, tokens("alice")["access_token"])
        try:
            iq = c.make_iq_get(ito=f"bob@{dom}")
            iq.append(ET.Element("{vcard-temp}vCard"))
            result = await iq.send(timeout=5)
            vcard = result.xml.find("{vcard-temp}vCard")
            assert vcard.findtext("{vcard-temp}FN") == "Bob Builder"
            assert vcard.findtext("{vcard-temp}NICKNAME") == "Bob"
            assert vcard.findtext("{vcard-temp}PHOTO/{vcard-temp}TYPE") == "image/png"
            png = base64.b64decode(vcard.findtext("{vcard-temp}PHOTO/{vcard-temp}BINVAL"))
            assert png.startswith(b"\x89PNG\r\n\x1a\n")
        finally:
            await disconnect(c)

    run(go())


def test_roster_change_and_vcard_update_are_refused(env, dom, tokens):
    async def go():
        c = await login(env, dom, tokens("alice")["access_token"])
        try:
            iq = c.make_iq_set()
            query = ET.Element("{jabber:iq:roster}query")
            ET.SubElement(query, "{jabber:iq:roster}item", jid=f"dave@{dom}", name="Dave")
            iq.append(query)
            with pytest.raises(IqError) as err:
                await iq.send(timeout=5)
            assert err.value.iq["error"]["condition"] == "not-allowed"

            iq = c.make_iq_set()
            vcard = ET.Element("{vcard-temp}vCard")
            ET.SubElement(vcard, "{vcard-temp}FN").text = "Mallory"
            iq.append(vcard)
            with pytest.raises(IqError) as err:
                await iq.send(timeout=5)
            assert err.value.iq["error"]["condition"] == "not-allowed"

            # The stored vCard is unchanged.
            iq = c.make_iq_get()
            iq.append(ET.Element("{vcard-temp}vCard"))
            result = await iq.send(timeout=5)
            assert result.xml.find("{vcard-temp}vCard").findtext("{vcard-temp}FN") == "Alice Liddell"
        finally:
            await disconnect(c)

    run(go())


def test_chat_messages_and_chat_states_between_two_accounts(env, dom, tokens):
    async def go():
        alice = await login(env, dom, tokens("alice")["access_token"])
        bob = await login(env, dom, tokens("bob")["access_token"])
        try:
            body = f"hello bob {uuid.uuid4()}"
            for state, text in (("composing", None), ("active", body), ("paused", None)):
                msg = alice.make_message(mto=f"bob@{dom}", mbody=text, mtype="chat")
                msg["chat_state"] = state
                msg.send()

            def from_alice():
                return [m for m in bob.states if m["from"].bare == f"alice@{dom}"]

            assert await wait_until(lambda: len(from_alice()) >= 3)
            got = from_alice()
            assert [m["chat_state"] for m in got] == ["composing", "active", "paused"]
            assert [m["body"] for m in got] == ["", body, ""]
            assert all(m["type"] == "chat" for m in got)
            assert [m["body"] for m in bob.inbox if m["from"].bare == f"alice@{dom}"] == [body]

            reply = f"hi alice {uuid.uuid4()}"
            bob.send_message(mto=f"alice@{dom}", mbody=reply, mtype="chat")
            assert await wait_until(lambda: any(m["body"] == reply for m in alice.inbox))
        finally:
            await disconnect(alice, bob)

    run(go())


def test_non_chat_messages_are_bounced(env, dom, tokens):
    async def go():
        alice = await login(env, dom, tokens("alice")["access_token"])
        bob = await login(env, dom, tokens("bob")["access_token"])
        try:
            for mtype in ("normal", "headline", "groupchat"):
                body = f"{mtype} {uuid.uuid4()}"
                msg = alice.make_message(mto=f"bob@{dom}", mbody=body, mtype=mtype)
                msg_id = msg["id"] = f"bounce-{uuid.uuid4()}"
                msg.send()

                def bounces():
                    return [m for m in alice.all_messages if m["type"] == "error" and m["id"] == msg_id]

                assert await wait_until(lambda: bounces()), mtype
                assert bounces()[0]["error"]["condition"] == "not-allowed"
                assert not any(m["body"] == body for m in bob.all_messages)
        finally:
            await disconnect(alice, bob)

    run(go())


def test_presence_probes_are_not_answered(env, dom, tokens):
    async def go():
        bob = await login(env, dom, tokens("bob")["access_token"])
        alice = await login(env, dom, tokens("alice")["access_token"])
        try:
            seen = []
            alice.add_event_handler("presence", lambda p: seen.append(p))
            await asyncio.sleep(0.5)
            seen.clear()
            alice.send_presence(pto=f"bob@{dom}", ptype="probe")
            await asyncio.sleep(1.0)
            assert [p for p in seen if p["from"].bare == f"bob@{dom}"] == []
        finally:
            await disconnect(alice, bob)

    run(go())


def test_offline_message_is_delivered_with_a_delay_stamp(env, dom, tokens):
    async def go():
        body = f"while you were away {uuid.uuid4()}"
        alice = await login(env, dom, tokens("alice")["access_token"])
        try:
            alice.send_message(mto=f"carol@{dom}", mbody=body, mtype="chat")
            await asyncio.sleep(0.5)
        finally:
            await disconnect(alice)
        sent_at = time.time()
        await asyncio.sleep(1.1)
        carol = await login(env, dom, tokens("carol")["access_token"])
        try:
            assert await wait_until(lambda: any(m["body"] == body for m in carol.inbox))
            msg = next(m for m in carol.inbox if m["body"] == body)
            assert msg["from"].bare == f"alice@{dom}"
            delay = msg.xml.find("{urn:xmpp:delay}delay")
            assert delay is not None, msg
            stamp = msg["delay"]["stamp"].timestamp()
            assert sent_at - 5 < stamp <= sent_at + 0.5
        finally:
            await disconnect(carol)

    run(go())


def test_bad_token_is_refused(env, dom):
    with pytest.raises(AuthFailed):
        run(login(env, dom, "this-is-not-a-valid-token"))


def test_revoked_token_is_refused(env, dom, tokens):
    token = tokens("dave", fresh=True)["access_token"]
    run(disconnect_after(login(env, dom, token)))  # works before revocation
    oauth_flow.revoke(env, token)
    with pytest.raises(AuthFailed):
        run(login(env, dom, token))


async def disconnect_after(connecting):
    client = await connecting
    await disconnect(client)


def test_wire_raw_token_only_after_starttls(env, dom, tokens):
    token = tokens("alice")["access_token"]
    with RawXMPP(env, dom) as x:
        features = x.open_stream()
        assert RawXMPP.mechanisms(features) == []  # nothing before TLS
    with RawXMPP(env, dom) as x:
        assert RawXMPP.mechanisms(x.starttls()) == [MECH]
        # The token as is (not base64 of it) is what the server takes.
        name, xml = x.auth(MECH, token)
        assert name == "success", xml
        assert x.bind().startswith(f"alice@{dom}/")
    with RawXMPP(env, dom) as x:
        x.starttls()
        name, xml = x.auth(MECH, RawXMPP.b64(token))  # base64-wrapped: not the Messenger wire format
        assert (name, "not-authorized" in xml) == ("failure", True), xml


def test_plain_and_scram_are_refused_on_the_messenger_host(env, dom):
    for mech, text in (("PLAIN", RawXMPP.b64("\0alice\0alicepass")), ("SCRAM-SHA-1", RawXMPP.b64("n,,n=alice,r=abcdef"))):
        with RawXMPP(env, dom) as x:
            x.starttls()
            name, xml = x.auth(mech, text)
            assert name == "failure" and "invalid-mechanism" in xml, (mech, xml)
    with pytest.raises(AuthFailed):
        run(xmpp_connect(env, dom, jid=f"alice@{dom}", password="alicepass", mech="PLAIN"))


def test_token_without_the_messenger_scope_is_refused(env, dom):
    token = oauth_flow.authorize(env, "bob", scope="wl.basic")["access_token"]
    with RawXMPP(env, dom) as x:
        x.starttls()
        name, xml = x.auth(MECH, token)
        assert name == "failure" and "not-authorized" in xml, xml


def test_see_other_host_listener_redirects(env, dom, tokens):
    port = int(env["XMPP_REDIRECT_PORT"])
    with RawXMPP(env, dom, port=port) as x:
        x.send(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='http://etherx.jabber.org/streams' to='{dom}' version='1.0'>"
        )
        m = x.read_until(r"<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>([^<]+)</see-other-host>")
        assert m.group(1) == f"{env['XMPP_HOST']}:{env['XMPP_PORT']}"

    async def go():
        # A real client parses the redirect. (slixmpp 1.17's own automatic reconnect after
        # see-other-host goes back to the port given to connect(), so we follow it ourselves:
        # plain TCP to the new address, same domain, same TLS policy.)
        client = slixmpp.ClientXMPP(dom, "", sasl_mech=MECH)
        client.ca_certs = env["XMPP_CA_FILE"]
        client.enable_direct_tls = False
        target = asyncio.get_running_loop().create_future()

        def on_error(error):
            if not target.done():
                target.set_result((error["condition"], error["see_other_host"]))
                client.abort()

        client.add_event_handler("stream_error", on_error)
        client.connect(env["XMPP_HOST"], port)
        condition, other = await asyncio.wait_for(target, 5)
        assert condition == "see-other-host"
        host, _, other_port = other.rpartition(":")
        c = await login(env, dom, tokens("alice")["access_token"], port=int(other_port))
        try:
            assert host == env["XMPP_HOST"]
            assert c.boundjid.bare == f"alice@{dom}"
        finally:
            await disconnect(c)

    run(go())


def test_the_retired_service_offers_no_carbons_and_no_archive(env, dom, tokens):
    # The Messenger profile stays the retired service: what standard servers add is absent, so
    # the bridge's discovery finds nothing to use there.
    async def go():
        c = await xmpp_connect(env, dom, token=tokens("alice")["access_token"], mech=MECH)
        try:
            server = await c.plugin["xep_0030"].get_info(jid=dom)
            account = await c.plugin["xep_0030"].get_info(jid=c.boundjid.bare)
            features = set(server["disco_info"]["features"]) | set(account["disco_info"]["features"])
            assert "urn:xmpp:carbons:2" not in features, features
            assert "urn:xmpp:mam:2" not in features, features
        finally:
            await disconnect(c)

    run(go())
