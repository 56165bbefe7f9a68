"""The OAuth 2.0 provider's Live Connect profile, as a client sees it."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import requests

import oauth_flow


def test_discovery_has_the_live_connect_endpoints_and_scopes(env):
    meta = requests.get(env["OAUTH_ISSUER"] + "/.well-known/openid-configuration", timeout=5).json()
    assert meta["authorization_endpoint"] == env["OAUTH_AUTHORIZE_URL"]
    assert meta["token_endpoint"] == env["OAUTH_TOKEN_URL"]
    assert meta["device_authorization_endpoint"] == env["OAUTH_DEVICE_URL"]
    assert meta["introspection_endpoint"] == env["OAUTH_INTROSPECT_URL"]
    assert meta["revocation_endpoint"] == env["OAUTH_REVOKE_URL"]
    assert {"wl.messenger", "wl.offline_access", "wl.basic", "wl.signin"} <= set(meta["scopes_supported"])
    assert env["OAUTH_AUTHORIZE_URL"].endswith("/oauth20_authorize.srf")
    assert env["OAUTH_TOKEN_URL"].endswith("/oauth20_token.srf")


def test_bridge_client_code_flow_and_rotating_refresh_tokens(env):
    first = oauth_flow.authorize(env, "alice", client="messenger-bridge")
    second = oauth_flow.refresh(env, first["refresh_token"], client="messenger-bridge")
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]  # rotated
    assert second["access_token"] != first["access_token"]
    assert oauth_flow.introspect(env, second["access_token"], client="messenger-bridge")["sub"] == "alice"
    reused = oauth_flow.refresh(env, first["refresh_token"], client="messenger-bridge")
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"


def test_no_refresh_token_without_offline_access(env):
    t = oauth_flow.authorize(env, "bob", scope="wl.messenger wl.basic")
    assert "refresh_token" not in t
    assert t["scope"] == "wl.messenger wl.basic"


def test_pkce_is_required(env):
    url = env["OAUTH_AUTHORIZE_URL"] + "?" + urlencode({
        "client_id": env["OAUTH_CLIENT_ID"], "response_type": "code", "redirect_uri": env["OAUTH_REDIRECT_URI"],
        "scope": "wl.messenger", "state": secrets.token_urlsafe(8),
    })
    resp = requests.get(url, allow_redirects=False, timeout=5)
    assert resp.is_redirect
    location = resp.headers["Location"]
    assert location.startswith(env["OAUTH_REDIRECT_URI"])
    query = parse_qs(urlparse(location).query)
    assert query["error"] == ["invalid_request"]
    assert "PKCE" in query["error_description"][0]


def test_wrong_password_and_denied_consent(env):
    with pytest.raises(PermissionError, match="sign-in refused"):
        oauth_flow.authorize(env, "alice", password="not-alices-password")
    with pytest.raises(PermissionError, match="access_denied"):
        oauth_flow.authorize(env, "alice", deny=True)


def test_device_code_grant(env):
    t = oauth_flow.device_flow(env, "carol")
    assert t["access_token"] and t["refresh_token"]
    assert oauth_flow.introspect(env, t["access_token"], client="messenger-bridge")["sub"] == "carol"


def test_revocation(env):
    t = oauth_flow.authorize(env, "dave")
    assert oauth_flow.introspect(env, t["access_token"])["active"] is True
    oauth_flow.revoke(env, t["access_token"])
    assert oauth_flow.introspect(env, t["access_token"])["active"] is False
