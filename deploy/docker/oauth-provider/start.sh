#!/bin/sh
# Starts the demo's OAuth provider with the client secrets that secrets-init wrote to /secrets
# (the same variables deploy/local/stack passes to server.js).
set -eu
OAUTH_CLIENT_SECRET=$(cat /secrets/oauth_client_secret)
OAUTH_SMOKE_SECRET=$(cat /secrets/oauth_smoke_client_secret)
OAUTH_PROSODY_SECRET=$(cat /secrets/oauth_prosody_secret)
OAUTH_COOKIE_KEY=$(cat /secrets/oauth_cookie_key)
export OAUTH_CLIENT_SECRET OAUTH_SMOKE_SECRET OAUTH_PROSODY_SECRET OAUTH_COOKIE_KEY
exec node server.js
