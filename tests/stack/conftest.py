"""Shared fixtures of the stack smoke test (run with `deploy/local/stack smoke`).

The stack must be up: the tests read $STACK_DIR/env written by `deploy/local/stack up`.
slixmpp clients are created inside coroutines run by `run()` (one event loop per test), so no
asyncio plugin for pytest is needed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest
import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import oauth_flow  # noqa: E402


@pytest.fixture(scope="session")
def env() -> dict[str, str]:
    try:
        return oauth_flow.load_env()
    except FileNotFoundError:
        pytest.exit("the stack is not up: run deploy/local/stack up", returncode=2)


@pytest.fixture(scope="session")
def tokens(env):
    """tokens(user) -> token response of the authorization-code flow (cached per user)."""
    cache: dict[str, dict] = {}

    def get(user: str, fresh: bool = False) -> dict:
        if fresh or user not in cache:
            cache[user] = oauth_flow.authorize(env, user)
        return cache[user]

    return get


def run(coro, timeout: float = 30):
    """Run a coroutine to completion in a fresh event loop."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class AuthFailed(Exception):
    pass


async def xmpp_connect(
    env: dict[str, str],
    domain: str,
    *,
    token: str | None = None,
    jid: str | None = None,
    password: str = "",
    mech: str | None = None,
    port: int | None = None,
    presence: bool = True,
) -> slixmpp.ClientXMPP:
    """Log in with slixmpp; returns the connected client after session start (roster fetched,
    initial presence sent when `presence`). Raises AuthFailed when SASL fails."""
    client = slixmpp.ClientXMPP(jid or domain, password, sasl_mech=mech)
    if token is not None:
        client.credentials["access_token"] = token
    client.ca_certs = env["XMPP_CA_FILE"]
    client.enable_direct_tls = False
    client.enable_plaintext = False
    for plugin in ("xep_0030", "xep_0054", "xep_0085", "xep_0203", "xep_0199"):
        client.register_plugin(plugin)
    # slixmpp fires "message" only for messages with a <body/>; chat states (XEP-0085) come as
    # "chatstate" events, with or without a body.
    client.inbox = []  # type: ignore[attr-defined]
    client.states = []  # type: ignore[attr-defined]
    client.add_event_handler("message", lambda msg: client.inbox.append(msg))
    client.add_event_handler("chatstate", lambda msg: client.states.append(msg))
    # Every <message/>, errors included (a bounce carries the original id, often no body).
    client.all_messages = []  # type: ignore[attr-defined]
    client.register_handler(Callback("all messages", StanzaPath("message"), client.all_messages.append))
    loop = asyncio.get_running_loop()
    started: asyncio.Future[Any] = loop.create_future()

    def fail(reason):
        if not started.done():
            started.set_exception(AuthFailed(str(reason)))

    async def on_start(_):
        await client.get_roster()
        if presence:
            client.send_presence()
        if not started.done():
            started.set_result(True)

    client.add_event_handler("session_start", on_start)
    client.add_event_handler("failed_all_auth", lambda _: fail("authentication failed"))
    client.add_event_handler("connection_failed", lambda e: fail(f"connection failed: {e}"))
    client.connect(env["XMPP_HOST"], port or int(env["XMPP_PORT"]))
    try:
        await asyncio.wait_for(started, 10)
    except BaseException:
        client.disconnect()
        raise
    return client


async def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


async def disconnect(*clients: slixmpp.ClientXMPP) -> None:
    # Wait on the futures disconnect() returns: `client.disconnected` is replaced by a fresh
    # future once a disconnect completes, so awaiting it after another client's wait timed out.
    ends = [c.disconnect() for c in clients]
    for end in ends:
        try:
            await asyncio.wait_for(end, 3)
        except Exception:  # noqa: BLE001 - best effort on teardown
            pass
