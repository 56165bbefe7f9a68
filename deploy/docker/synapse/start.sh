#!/bin/sh
# Starts the demo's Synapse with the native stack's own config template
# (deploy/local/synapse/homeserver.yaml.in, mounted at /conf/homeserver.yaml.in) rendered with
# the compose values and the secrets from /secrets, then compose.yaml on top of it (listeners on
# every interface of the container, logs on the console, the public URL). Keys are generated
# on the first start, as deploy/local/stack does. Runs Synapse as uid 991 (the image's user).
set -eu
secret() { cat "/secrets/$1"; }
sed -e 's|@STATE@|/data|g' -e 's|@BIND@|0.0.0.0|g' -e 's|@PORT@|8008|g' \
    -e 's|@SERVER_NAME@|localhost|g' \
    -e "s|@SHARED_SECRET@|$(secret synapse_shared_secret)|g" \
    -e "s|@MACAROON_SECRET@|$(secret synapse_macaroon_secret)|g" \
    -e "s|@FORM_SECRET@|$(secret synapse_form_secret)|g" \
    -e 's|@AS_REGISTRATION@|/registration/registration.yaml|g' \
    -e 's|@DP_REGISTRATION@|/registration/doublepuppet.yaml|g' \
    /conf/homeserver.yaml.in >/data/homeserver.yaml
# Double puppeting is optional: without its registration (the demo makes none), its line goes.
if [ ! -f /registration/doublepuppet.yaml ]; then
    sed -i '\|/registration/doublepuppet.yaml|d' /data/homeserver.yaml
fi
if grep -q '@[A-Z_]*@' /data/homeserver.yaml; then
    echo "synapse-demo: unreplaced placeholder in homeserver.yaml" >&2
    exit 1
fi
mkdir -p /data/media_store
chown -R 991:991 /data
chmod 0600 /data/homeserver.yaml
run() { setpriv --reuid=991 --regid=991 --clear-groups -- "$@"; }
if [ ! -s /data/signing.key ]; then
    run python -m synapse.app.homeserver -c /data/homeserver.yaml -c /conf/compose.yaml --generate-keys
fi
exec setpriv --reuid=991 --regid=991 --clear-groups -- \
    python -m synapse.app.homeserver -c /data/homeserver.yaml -c /conf/compose.yaml
