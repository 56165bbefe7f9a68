"""Synapse as the tests use it: shared-secret registration, the appservice, media, a client."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid

import requests
from nio import AsyncClient, LoginResponse, RoomCreateResponse, RoomSendResponse

from conftest import run


def register(env, user: str, password: str, admin: bool = False) -> dict:
    """Create a user with the shared-secret admin API (HMAC-SHA1 of nonce\\0user\\0pass\\0(not)admin)."""
    url = env["SYNAPSE_URL"] + "/_synapse/admin/v1/register"
    nonce = requests.get(url, timeout=5).json()["nonce"]
    mac = hmac.new(env["SYNAPSE_SHARED_SECRET"].encode(), digestmod=hashlib.sha1)
    mac.update(b"\0".join([nonce.encode(), user.encode(), password.encode(), b"admin" if admin else b"notadmin"]))
    resp = requests.post(url, json={"nonce": nonce, "username": user, "password": password, "admin": admin, "mac": mac.hexdigest()}, timeout=10)
    resp.raise_for_status()
    return resp.json()


def test_health_and_no_public_registration(env):
    assert requests.get(env["SYNAPSE_URL"] + "/health", timeout=5).text == "OK"
    resp = requests.post(env["SYNAPSE_URL"] + "/_matrix/client/v3/register", json={"username": "x", "password": "y"}, timeout=5)
    assert resp.status_code == 403


def test_appservice_registration_is_loaded(env):
    headers = {"Authorization": f"Bearer {env['AS_TOKEN']}"}
    who = requests.get(env["SYNAPSE_URL"] + "/_matrix/client/v3/account/whoami", headers=headers, timeout=5)
    assert who.json()["user_id"] == f"@msnbot:{env['MATRIX_SERVER_NAME']}"
    # A ghost in the exclusive namespace can be asserted with ?user_id= (it is registered on first use).
    ghost = f"@msn_smoke{uuid.uuid4().hex[:8]}:{env['MATRIX_SERVER_NAME']}"
    reg = requests.post(env["SYNAPSE_URL"] + "/_matrix/client/v3/register", headers=headers,
                        json={"type": "m.login.application_service", "username": ghost[1:].split(":")[0]}, timeout=5)
    assert reg.status_code == 200, reg.text
    who = requests.get(env["SYNAPSE_URL"] + "/_matrix/client/v3/account/whoami", params={"user_id": ghost}, headers=headers, timeout=5)
    assert who.json()["user_id"] == ghost


def test_matrix_client_registers_logs_in_sends_and_uploads(env):
    user, password = f"smoke{uuid.uuid4().hex[:8]}", "smokepass"
    register(env, user, password)

    async def go():
        client = AsyncClient(env["SYNAPSE_URL"], f"@{user}:{env['MATRIX_SERVER_NAME']}")
        try:
            assert isinstance(await client.login(password), LoginResponse)
            room = await client.room_create(name="smoke")
            assert isinstance(room, RoomCreateResponse)
            sent = await client.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "hello"})
            assert isinstance(sent, RoomSendResponse)
            await client.room_typing(room.room_id, True)
        finally:
            await client.close()
        # Media uploads work (2 MiB, well under max_upload_size).
        resp = requests.post(env["SYNAPSE_URL"] + "/_matrix/media/v3/upload", data=b"\0" * (2 << 20),
                             headers={"Authorization": f"Bearer {client.access_token}", "Content-Type": "application/octet-stream"}, timeout=30)
        assert resp.status_code == 200 and resp.json()["content_uri"].startswith("mxc://"), resp.text

    run(go())
