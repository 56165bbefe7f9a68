#!/bin/sh
# docker-compose.yml's demo-setup (run once before the bridge starts, like deploy/local/demo up):
# the Matrix account demo/demopass, linked to the Messenger-profile account
# alice@messenger.localhost with real tokens from the OAuth provider. Idempotent.
#   setup.sh            register + link
#   setup.sh contact    run Bob, the contact who answers (docker-compose.yml's contact-bob)
set -eu
export STACK_DIR=/tmp/demo-env
mkdir -p "$STACK_DIR"
# The keys tests/stack/oauth_flow.py reads (as in $STACK_DIR/env of the native stack), with the
# compose service names.
cat >"$STACK_DIR/env" <<ENV
OAUTH_AUTHORIZE_URL=http://oauth:29318/oauth20_authorize.srf
OAUTH_TOKEN_URL=http://oauth:29318/oauth20_token.srf
OAUTH_DEVICE_URL=http://oauth:29318/oauth20_connect.srf
OAUTH_REVOKE_URL=http://oauth:29318/oauth20_revoke.srf
OAUTH_CLIENT_SECRET=$(cat /secrets/oauth_client_secret)
OAUTH_REDIRECT_URI=http://127.0.0.1:29317/login/callback
OAUTH_SMOKE_CLIENT_SECRET=$(cat /secrets/oauth_smoke_client_secret)
OAUTH_SMOKE_REDIRECT_URI=http://127.0.0.1:29399/callback
ENV

if [ "${1:-}" = contact ]; then
    token=$(python /opt/demo/oauth_flow.py bob | python -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    exec python /opt/demo/demo-contact.py --jid messenger.localhost --token="$token" \
        --to alice@messenger.localhost --ca /tls/ca.crt --host prosody --port 5222
fi

python - http://synapse:8008 "$(cat /secrets/synapse_shared_secret)" <<'PY'
import hashlib, hmac, json, sys, urllib.error, urllib.request
url, secret = sys.argv[1] + "/_synapse/admin/v1/register", sys.argv[2].encode()
nonce = json.load(urllib.request.urlopen(url))["nonce"]
mac = hmac.new(secret, f"{nonce}\0demo\0demopass\0notadmin".encode(), hashlib.sha1).hexdigest()
body = json.dumps({"nonce": nonce, "username": "demo", "password": "demopass", "admin": False, "mac": mac}).encode()
try:
    urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}))
    print("demo-setup: created the Matrix user @demo:localhost", file=sys.stderr)
except urllib.error.HTTPError as e:
    if b"M_USER_IN_USE" not in e.read():
        raise
PY
python /opt/demo/oauth_flow.py alice --client messenger-bridge \
    | messenger-bridge link --user @demo:localhost --jid alice@messenger.localhost
