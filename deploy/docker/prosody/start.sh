#!/bin/sh
# Starts the demo's Prosody: a CA and a server certificate in /tls on the first start (the
# bridge trusts /tls/ca.crt through the shared volume), the introspection secret from
# /secrets, then Prosody in the foreground. Same certificate names as deploy/local/stack,
# plus DNS:prosody (the service name the other containers use).
set -eu
d=/tls
mkdir -p /var/lib/prosody-demo/data
if [ ! -s "$d/server.crt" ] || [ ! -s "$d/ca.crt" ]; then
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=messenger-bridge demo CA" \
        -keyout "$d/ca.key" -out "$d/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=messenger.localhost" \
        -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=DNS:messenger.localhost,DNS:xmpp.localhost,DNS:localhost,DNS:prosody,IP:127.0.0.1" >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 825 -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
    chmod 0644 "$d/ca.crt"
    echo "prosody-demo: generated the demo CA and server certificate in $d" >&2
fi
PROSODY_CLIENT_SECRET=$(cat /secrets/oauth_prosody_secret)
export PROSODY_CLIENT_SECRET
prosodyctl --config /etc/prosody-demo/prosody.cfg.lua check config
exec prosody -F --config /etc/prosody-demo/prosody.cfg.lua
