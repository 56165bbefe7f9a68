"""The second standard XMPP server: Debian's ejabberd on 127.0.0.1:$EJABBERD_PORT, host
$EJABBERD_DOMAIN (deploy/local/ejabberd/ejabberd.yml.in). The seeded accounts log in with
passwords over STARTTLS; carbons, the archive (MAM) and stream management are on; in-band
registration creates fresh accounts."""

from __future__ import annotations

import re
import secrets
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from conftest import AuthFailed, disconnect, run, wait_until, xmpp_connect
from xmpp_raw import RawXMPP


@pytest.fixture(scope="module")
def dom(env) -> str:
    return env["EJABBERD_DOMAIN"]


@pytest.fixture(scope="module")
def port(env) -> int:
    return int(env["EJABBERD_PORT"])


def login(env, dom, port, user, password, mech="PLAIN"):
    return xmpp_connect(env, dom, jid=f"{user}@{dom}", password=password, mech=mech, port=port)


def raw_login(env, dom, port, user, password) -> tuple[RawXMPP, str]:
    """STARTTLS, SASL PLAIN, stream restart: (connection, features after authentication)."""
    x = RawXMPP(env, dom, port=port)
    x.starttls()
    name, xml = x.auth("PLAIN", RawXMPP.b64(f"\0{user}\0{password}"))
    assert name == "success", xml
    x.buf = ""
    return x, x.open_stream()


def test_starttls_required_then_password_mechanisms(env, dom, port):
    with RawXMPP(env, dom, port=port) as x:
        features = x.open_stream()
        assert re.search(r"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>", features), features
        assert RawXMPP.mechanisms(features) == []
    with RawXMPP(env, dom, port=port) as x:
        mechs = RawXMPP.mechanisms(x.starttls())
        # ejabberd also offers SCRAM-SHA-1-PLUS (channel binding); no DIGEST-MD5, no X-OAUTH2.
        assert {"PLAIN", "SCRAM-SHA-1"} <= set(mechs) <= {"PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS"}, mechs


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "PLAIN", None])
def test_seeded_account_logs_in(env, dom, port, mech):
    async def go():
        c = await login(env, dom, port, "alice", "alicepass", mech)
        try:
            assert c.boundjid.bare == f"alice@{dom}"
            names = {str(j): c.client_roster[j]["name"] for j in c.client_roster if str(j) != c.boundjid.bare}
            assert names == {f"bob@{dom}": "Bob Builder", f"carol@{dom}": "Carol Singer"}
            assert c.client_roster[f"bob@{dom}"]["subscription"] == "both"
            vcard = await c.plugin["xep_0054"].get_vcard(f"bob@{dom}")
            assert vcard["vcard_temp"]["FN"] == "Bob Builder"
            assert vcard["vcard_temp"]["PHOTO"]["TYPE"] == "image/png"
        finally:
            await disconnect(c)

    run(go())


def test_wrong_password_is_refused(env, dom, port):
    with pytest.raises(AuthFailed):
        run(login(env, dom, port, "alice", "wrong"))


def test_stream_management_with_resumption(env, dom, port):
    x, features = raw_login(env, dom, port, "bob", "bobpass")
    with x:
        assert "<sm xmlns='urn:xmpp:sm:3'/>" in features, features
        x.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        x.read_until(r"<jid>[^<]+</jid>")
        x.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        enabled = x.read_until(r"<(?:enabled|failed)\b[^>]*>").group(0)
        assert "<enabled" in enabled and "resume='true'" in enabled and "max='300'" in enabled, enabled


def test_carbons_and_the_archive_are_advertised(env, dom, port):
    async def go():
        c = await login(env, dom, port, "alice", "alicepass")
        try:
            server = await c.plugin["xep_0030"].get_info(jid=dom)
            assert {"urn:xmpp:carbons:2", "urn:xmpp:mam:2"} <= set(server["disco_info"]["features"])
            account = await c.plugin["xep_0030"].get_info(jid=c.boundjid.bare)
            assert {"urn:xmpp:mam:2", "urn:xmpp:sid:0"} <= set(account["disco_info"]["features"])
        finally:
            await disconnect(c)

    run(go())


def test_message_arrives_and_is_archived(env, dom, port):
    async def go():
        alice = await login(env, dom, port, "alice", "alicepass")
        bob = await login(env, dom, port, "bob", "bobpass")
        try:
            text = f"ejabberd smoke {secrets.token_hex(4)}"
            since = datetime.now(timezone.utc) - timedelta(seconds=30)
            alice.send_message(mto=f"bob@{dom}", mbody=text, mtype="chat")
            assert await wait_until(lambda: any(m["body"] == text for m in bob.inbox), 5)
            got = next(m for m in bob.inbox if m["body"] == text)
            # XEP-0359: the archive's id, stamped by the receiving account's bare JID.
            sid = got.xml.find("{urn:xmpp:sid:0}stanza-id")
            assert sid is not None and sid.get("by") == f"bob@{dom}", str(got)
            for c, peer in ((bob, f"alice@{dom}"), (alice, f"bob@{dom}")):
                c.register_plugin("xep_0313")
                iq = await c.plugin["xep_0313"].retrieve(with_jid=peer, start=since, timeout=5)
                bodies = [r["mam_result"]["forwarded"]["stanza"]["body"] for r in iq["mam"]["results"]]
                assert text in bodies, (c.boundjid, bodies)
            ids = [r["mam_result"]["id"] for r in iq["mam"]["results"]]
            assert all(ids), ids
        finally:
            await disconnect(alice, bob)

    run(go())


def test_carbons_copy_to_the_other_resource(env, dom, port):
    async def go():
        phone = await login(env, dom, port, "carol", "carolpass")
        laptop = await login(env, dom, port, "carol", "carolpass")
        bob = await login(env, dom, port, "bob", "bobpass")
        try:
            phone.register_plugin("xep_0280")
            received, sent = [], []
            phone.add_event_handler("carbon_received", received.append)
            phone.add_event_handler("carbon_sent", sent.append)
            await phone.plugin["xep_0280"].enable()
            bob.send_message(mto=laptop.boundjid.full, mbody="to the laptop", mtype="chat")
            laptop.send_message(mto=f"bob@{dom}", mbody="from the laptop", mtype="chat")
            assert await wait_until(lambda: received and sent, 5), (received, sent)
            assert received[0]["carbon_received"]["body"] == "to the laptop"
            assert sent[0]["carbon_sent"]["body"] == "from the laptop"
        finally:
            await disconnect(phone, laptop, bob)

    run(go())


def test_in_band_registration_creates_a_fresh_account(env, dom, port):
    user, password = f"fresh{secrets.token_hex(4)}", secrets.token_hex(8)
    with RawXMPP(env, dom, port=port) as x:
        x.starttls()
        x.send(f"<iq type='set' id='reg1'><query xmlns='jabber:iq:register'><username>{user}</username>"
               f"<password>{password}</password></query></iq>")
        reply = x.read_until(r"<iq[^>]*id='reg1'[^>]*?(?:/>|>.*?</iq>)").group(0)
        assert "type='result'" in reply, reply
    x, _ = raw_login(env, dom, port, user, password)
    with x:  # and away again, so the database does not grow with every run
        x.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        assert x.read_until(r"<jid>([^<]+)</jid>").group(1).startswith(f"{user}@{dom}/")
        x.send("<iq type='set' id='unreg'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        assert "type='result'" in x.read_until(r"<iq[^>]*id='unreg'[^>]*>").group(0)


def test_burst_is_not_throttled(env, dom, port):
    """Tests send unpaced bursts: 300 messages in one go all arrive, in order, within seconds."""

    async def go():
        dave = await login(env, dom, port, "dave", "davepass")
        alice = await login(env, dom, port, "alice", "alicepass")
        try:
            tag = secrets.token_hex(3)
            for i in range(300):
                dave.send_message(mto=alice.boundjid.full, mbody=f"{tag} {i}", mtype="chat")
            mine = lambda: [m["body"] for m in alice.inbox if m["body"].startswith(tag)]  # noqa: E731
            assert await wait_until(lambda: len(mine()) == 300, 10), len(mine())
            assert mine() == [f"{tag} {i}" for i in range(300)]
        finally:
            await disconnect(dave, alice)

    run(go())


def test_node_listens_on_loopback_only(env):
    lines = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    mine = [line.split()[4] for line in lines if f"pid={env['EJABBERD_PID']}," in line]
    assert sorted(mine) == sorted([f"127.0.0.1:{env['EJABBERD_PORT']}", f"127.0.0.1:{env['EJABBERD_DIST_PORT']}"])
