#!/bin/sh
# docker-compose.yml's secrets-init: the demo's secrets, generated once into the `secrets`
# volume (the same set deploy/local/stack keeps in $STACK_DIR/secrets), plus the bridge's
# PostgreSQL URL. Runs as root in the bridge image; files stay readable by the demo's
# containers that mount the volume (each runs as its own user). Idempotent.
set -eu
d=/secrets
umask 022
rand() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
for name in synapse_shared_secret synapse_macaroon_secret synapse_form_secret \
    oauth_client_secret oauth_smoke_client_secret oauth_prosody_secret oauth_cookie_key \
    postgres_password metrics_token; do
    if [ ! -s "$d/$name" ]; then
        rand >"$d/$name.tmp" && mv "$d/$name.tmp" "$d/$name"
        echo "secrets-init: generated $name" >&2
    fi
done
if [ ! -s "$d/database_url" ]; then
    printf 'postgres://bridge:%s@postgres:5432/messenger_bridge\n' "$(cat "$d/postgres_password")" >"$d/database_url"
fi
if [ ! -s "$d/encryption_key" ]; then
    /usr/local/bin/messenger-bridge generate-key >"$d/encryption_key"
    echo "secrets-init: generated the bridge's database encryption key" >&2
fi
chmod 0444 "$d"/*
