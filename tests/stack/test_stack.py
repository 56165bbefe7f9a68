"""The stack itself: the env file's contract and loopback-only listening sockets."""

from __future__ import annotations

import os
import subprocess

REQUIRED_KEYS = """STACK_DIR SYNAPSE_URL MATRIX_SERVER_NAME SYNAPSE_SHARED_SECRET AS_REGISTRATION AS_TOKEN HS_TOKEN
BRIDGE_AS_URL XMPP_HOST XMPP_PORT XMPP_REDIRECT_PORT XMPP_MESSENGER_DOMAIN XMPP_STANDARD_DOMAIN XMPP_CA_FILE
OAUTH_ISSUER OAUTH_AUTHORIZE_URL OAUTH_TOKEN_URL OAUTH_DEVICE_URL OAUTH_INTROSPECT_URL OAUTH_REVOKE_URL
OAUTH_CLIENT_ID OAUTH_CLIENT_SECRET OAUTH_REDIRECT_URI DATABASE_URL_POSTGRES PROSODY_PID SYNAPSE_PID OAUTH_PID
EJABBERD_HOST EJABBERD_PORT EJABBERD_DOMAIN EJABBERD_CA_FILE EJABBERD_PID""".split()


def test_env_file_has_the_contract_keys(env):
    missing = [k for k in REQUIRED_KEYS if not env.get(k)]
    assert missing == []
    assert env["SYNAPSE_URL"] == "http://127.0.0.1:8008"
    assert env["MATRIX_SERVER_NAME"] == "localhost"
    assert env["XMPP_MESSENGER_DOMAIN"] == "messenger.localhost"
    assert env["XMPP_STANDARD_DOMAIN"] == "xmpp.localhost"
    assert (env["EJABBERD_DOMAIN"], env["EJABBERD_PORT"]) == ("ejabberd.localhost", "5322")
    assert env["OAUTH_CLIENT_ID"] == "messenger-bridge"
    assert os.path.isfile(env["AS_REGISTRATION"]) and os.path.isfile(env["XMPP_CA_FILE"])


def test_appservice_registration_contents(env):
    text = open(env["AS_REGISTRATION"], encoding="utf-8").read()
    for needle in ("id: messenger-bridge", "sender_localpart: msnbot", "rate_limited: false",
                   "receive_ephemeral: true", f'as_token: "{env["AS_TOKEN"]}"', f'hs_token: "{env["HS_TOKEN"]}"',
                   "url: \"http://127.0.0.1:29317\"", "@msn_.*:localhost"):
        assert needle in text, needle


def test_every_listening_socket_is_on_loopback(env):
    pids = {k: env[k] for k in env if k.endswith("_PID")}
    lines = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    seen = {}
    for name, pid in pids.items():
        mine = [line for line in lines if f"pid={pid}," in line]
        seen[name] = mine
        for line in mine:
            local = line.split()[4]
            assert local.startswith("127.0.0.1:"), f"{name} listens on {local}"
    assert seen["PROSODY_PID"] and seen["SYNAPSE_PID"] and seen["OAUTH_PID"] and seen["EJABBERD_PID"]
