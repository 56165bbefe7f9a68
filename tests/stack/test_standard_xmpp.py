"""The standard XMPP host (xmpp.localhost): every SASL mechanism the bridge may meet on an
"any XMPP server" login, and the standard behaviour the Messenger profile takes away."""

from __future__ import annotations

import asyncio
import json
import base64

import pytest

from conftest import AuthFailed, disconnect, run, xmpp_connect
from xmpp_raw import RawXMPP


@pytest.fixture(scope="module")
def dom(env) -> str:
    return env["XMPP_STANDARD_DOMAIN"]


def test_mechanisms_offered_after_starttls(env, dom):
    with RawXMPP(env, dom) as x:
        assert RawXMPP.mechanisms(x.open_stream()) == []
    with RawXMPP(env, dom) as x:
        assert set(RawXMPP.mechanisms(x.starttls())) == {"SCRAM-SHA-1", "PLAIN", "OAUTHBEARER", "X-OAUTH2"}


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "PLAIN"])
def test_password_login_with_slixmpp(env, dom, mech):
    async def go():
        c = await xmpp_connect(env, dom, jid=f"alice@{dom}", password="alicepass", mech=mech)
        try:
            assert c.boundjid.bare == f"alice@{dom}"
            names = {str(j): c.client_roster[j]["name"] for j in c.client_roster if str(j) != c.boundjid.bare}
            assert names == {f"bob@{dom}": "Bob Builder", f"carol@{dom}": "Carol Singer"}
        finally:
            await disconnect(c)

    run(go())


def test_wrong_password_is_refused(env, dom):
    with pytest.raises(AuthFailed):
        run(xmpp_connect(env, dom, jid=f"alice@{dom}", password="wrong", mech="PLAIN"))


def oauthbearer(token: str, authzid: str | None) -> str:
    gs2 = f"n,a={authzid}," if authzid else "n,,"
    return RawXMPP.b64(f"{gs2}\x01auth=Bearer {token}\x01\x01")


@pytest.mark.parametrize("authzid", [None, "bob@xmpp.localhost"])
def test_oauthbearer_login(env, dom, tokens, authzid):
    with RawXMPP(env, dom) as x:
        x.starttls()
        name, xml = x.auth("OAUTHBEARER", oauthbearer(tokens("bob")["access_token"], authzid))
        assert name == "success", xml
        assert x.bind().startswith(f"bob@{dom}/")


def test_oauthbearer_failure_follows_rfc7628(env, dom, tokens):
    # bob's token, claimed for alice: error challenge with JSON, the client sends %x01, failure.
    with RawXMPP(env, dom) as x:
        x.starttls()
        name, xml = x.auth("OAUTHBEARER", oauthbearer(tokens("bob")["access_token"], f"alice@{dom}"))
        assert name == "challenge", xml
        payload = json.loads(base64.b64decode(xml.split(">", 1)[1].rsplit("<", 1)[0]))
        assert payload["status"] == "invalid_token"
        name, xml = x.response(RawXMPP.b64("\x01"))
        assert name == "failure" and "not-authorized" in xml, xml


def test_x_oauth2_login(env, dom, tokens):
    token = tokens("carol")["access_token"]
    with RawXMPP(env, dom) as x:
        x.starttls()
        name, xml = x.auth("X-OAUTH2", RawXMPP.b64(f"\0carol\0{token}"))
        assert name == "success", xml
        assert x.bind().startswith(f"carol@{dom}/")
    with RawXMPP(env, dom) as x:
        x.starttls()
        name, xml = x.auth("X-OAUTH2", RawXMPP.b64(f"\0alice\0{token}"))  # not carol's token owner
        assert name == "failure" and "not-authorized" in xml, xml


def test_presence_probe_is_answered_here(env, dom):
    """The contrast to the Messenger host: a standard server answers probes (RFC 6121 §4.3)."""

    async def go():
        bob = await xmpp_connect(env, dom, jid=f"bob@{dom}", password="bobpass")
        alice = await xmpp_connect(env, dom, jid=f"alice@{dom}", password="alicepass")
        try:
            seen = []
            alice.add_event_handler("presence", lambda p: seen.append(p))
            await asyncio.sleep(0.5)
            seen.clear()
            alice.send_presence(pto=f"bob@{dom}", ptype="probe")
            await asyncio.sleep(1.0)
            assert [p for p in seen if p["from"].bare == f"bob@{dom}"] != []
        finally:
            await disconnect(alice, bob)

    run(go())


def test_carbons_and_the_archive_are_offered(env, dom):
    # What today's servers offer and the bridge finds by discovery (issue #15).
    async def go():
        c = await xmpp_connect(env, dom, jid=f"alice@{dom}", password="alicepass", mech="SCRAM-SHA-1")
        try:
            server = await c.plugin["xep_0030"].get_info(jid=dom)
            assert "urn:xmpp:carbons:2" in server["disco_info"]["features"]
            account = await c.plugin["xep_0030"].get_info(jid=c.boundjid.bare)
            assert "urn:xmpp:mam:2" in account["disco_info"]["features"]
        finally:
            await disconnect(c)

    run(go())
