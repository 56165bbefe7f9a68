"""Drive the stack's OAuth 2.0 provider like a browser would, without a browser.

Used by the smoke test, and usable from other tests as a command:

    $STACK_DIR/clients-venv/bin/python tests/stack/oauth_flow.py alice [--client messenger-bridge] [--device]

prints the token response (JSON) of an authorization-code flow with PKCE (RFC 7636) for the
seeded account `alice` (password `alicepass`), scopes wl.messenger wl.offline_access wl.basic.

The provider's pages are plain HTML forms (deploy/local/oauth-provider/server.js): the
authorize request redirects to /interaction/<uid> (sign-in form: fields `login`, `password`,
posted to /interaction/<uid>/login), then to a consent page (posted to
/interaction/<uid>/confirm), then to the client's redirect_uri with ?code=&state=. We follow the
redirects by hand and stop at the redirect_uri, which nothing needs to serve.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
import time
from urllib.parse import parse_qs, urlencode, urljoin, urlparse

import requests

DEFAULT_SCOPES = "wl.messenger wl.offline_access wl.basic"


def load_env(path: str | None = None) -> dict[str, str]:
    """Read $STACK_DIR/env (KEY=value lines) written by `deploy/local/stack up`."""
    if path is None:
        stack_dir = os.environ.get("STACK_DIR") or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "..", "..", ".stack"
        )
        path = os.path.join(stack_dir, "env")
    env: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                env[key] = value
    return env


def client_credentials(env: dict[str, str], client: str) -> tuple[str, str | None, str]:
    """(client_id, client_secret, redirect_uri) of a seeded client (no secret: a public client)."""
    if client == "messenger-bridge-public":
        return client, None, env["OAUTH_REDIRECT_URI"]
    if client == "messenger-bridge":
        return client, env["OAUTH_CLIENT_SECRET"], env["OAUTH_REDIRECT_URI"]
    if client == "smoke-test":
        return client, env["OAUTH_SMOKE_CLIENT_SECRET"], env["OAUTH_SMOKE_REDIRECT_URI"]
    raise ValueError(f"unknown client {client}")


def _client_auth(client_id: str, secret: str | None, data: dict) -> tuple | None:
    """HTTP basic auth for a confidential client; a public client sends client_id in the form."""
    if secret is None:
        data["client_id"] = client_id
        return None
    return (client_id, secret)


def pkce_pair() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(
    env: dict[str, str],
    user: str,
    password: str | None = None,
    scope: str = DEFAULT_SCOPES,
    client: str = "smoke-test",
    deny: bool = False,
) -> dict:
    """Run the authorization-code flow with PKCE; return the token endpoint's JSON."""
    client_id, secret, redirect_uri = client_credentials(env, client)
    password = password if password is not None else f"{user}pass"
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    url = env["OAUTH_AUTHORIZE_URL"] + "?" + urlencode(
        {
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    query = _walk(requests.Session(), url, user, password, deny, stop=lambda u: u.startswith(redirect_uri))
    if "error" in query:
        raise PermissionError(f"authorization refused: {query}")
    if query.get("state") != [state]:
        raise RuntimeError("state mismatch")
    return exchange_code(env, client, query["code"][0], verifier)


def _walk(http: requests.Session, url: str, user: str, password: str, deny: bool, stop) -> dict:
    """Follow redirects and fill in the provider's forms until `stop(url)` is true for a
    redirect target (returns its query) or a final page is reached (returns {"page": html})."""
    method, data = "GET", None
    login_pages: set[str] = set()
    for _ in range(30):
        resp = http.request(method, url, data=data, allow_redirects=False, timeout=10)
        method, data = "GET", None
        if resp.is_redirect:
            url = urljoin(url, resp.headers["Location"])
            if stop(url):
                return parse_qs(urlparse(url).query)
            continue
        if resp.status_code != 200:
            raise RuntimeError(f"unexpected page {resp.status_code} at {url}: {resp.text[:300]}")
        actions = re.findall(r'action="([^"]+)"', resp.text)
        if 'name="login"' in resp.text:
            if url in login_pages:
                raise PermissionError("sign-in refused: " + _error_text(resp.text))
            login_pages.add(url)
            url, method, data = urljoin(url, actions[0]), "POST", {"login": user, "password": password}
        elif "/interaction/" in url and actions:
            target = next(a for a in actions if a.endswith("/abort" if deny else "/confirm"))
            url, method, data = urljoin(url, target), "POST", {}
        elif 'name="xsrf"' in resp.text and actions:
            # oidc-provider's device-flow pages (user code confirmation): post their hidden fields.
            fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', resp.text))
            if deny and "confirm" in fields:
                fields["abort"] = "yes"
            url, method, data = urljoin(url, actions[0]), "POST", fields
        else:
            return {"page": resp.text}
    raise RuntimeError("too many steps in the authorization flow")


def device_flow(
    env: dict[str, str], user: str, scope: str = DEFAULT_SCOPES, client: str = "messenger-bridge"
) -> dict:
    """RFC 8628 device authorization grant: start it, approve the user code in the provider's
    pages as `user`, then poll the token endpoint; return the token response."""
    client_id, secret, _ = client_credentials(env, client)
    start = requests.post(env["OAUTH_DEVICE_URL"], data={"scope": scope}, auth=(client_id, secret), timeout=10)
    start.raise_for_status()
    grant = start.json()
    final = _walk(requests.Session(), grant["verification_uri_complete"], user, f"{user}pass", False, stop=lambda u: False)
    if "Success" not in final.get("page", ""):
        raise RuntimeError(f"device approval did not succeed: {final}")
    for _ in range(20):
        resp = requests.post(
            env["OAUTH_TOKEN_URL"],
            data={"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": grant["device_code"]},
            auth=(client_id, secret),
            timeout=10,
        )
        if resp.status_code == 200:
            return resp.json()
        if resp.json().get("error") not in ("authorization_pending", "slow_down"):
            raise PermissionError(resp.text)
        time.sleep(grant.get("interval", 1))
    raise TimeoutError("device flow: no token")


def _error_text(html: str) -> str:
    m = re.search(r'id="error"[^>]*>([^<]*)<', html)
    return m.group(1) if m else "unknown error"


def exchange_code(env: dict[str, str], client: str, code: str, verifier: str) -> dict:
    client_id, secret, redirect_uri = client_credentials(env, client)
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    auth = _client_auth(client_id, secret, data)
    resp = requests.post(env["OAUTH_TOKEN_URL"], data=data, auth=auth, timeout=10)
    resp.raise_for_status()
    return resp.json()


def refresh(env: dict[str, str], refresh_token: str, client: str = "smoke-test") -> requests.Response:
    client_id, secret, _ = client_credentials(env, client)
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    auth = _client_auth(client_id, secret, data)
    return requests.post(env["OAUTH_TOKEN_URL"], data=data, auth=auth, timeout=10)


def revoke(env: dict[str, str], token: str, client: str = "smoke-test") -> None:
    client_id, secret, _ = client_credentials(env, client)
    resp = requests.post(env["OAUTH_REVOKE_URL"], data={"token": token}, auth=(client_id, secret), timeout=10)
    resp.raise_for_status()


def introspect(env: dict[str, str], token: str, client: str = "smoke-test") -> dict:
    client_id, secret, _ = client_credentials(env, client)
    resp = requests.post(env["OAUTH_INTROSPECT_URL"], data={"token": token}, auth=(client_id, secret), timeout=10)
    resp.raise_for_status()
    return resp.json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("user")
    parser.add_argument("--password")
    parser.add_argument("--scope", default=DEFAULT_SCOPES)
    parser.add_argument("--client", default="smoke-test", choices=["smoke-test", "messenger-bridge", "messenger-bridge-public"])
    parser.add_argument("--device", action="store_true", help="use the device authorization grant (RFC 8628)")
    parser.add_argument("--env", help="path of the stack env file (default $STACK_DIR/env)")
    args = parser.parse_args()
    env = load_env(args.env)
    if args.device:
        print(json.dumps(device_flow(env, args.user, args.scope, args.client)))
    else:
        print(json.dumps(authorize(env, args.user, args.password, args.scope, args.client)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
