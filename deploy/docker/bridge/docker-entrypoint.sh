#!/bin/sh
# Entrypoint of the messenger-bridge image. First start, the mautrix way:
#   1. no config at $MB_CONFIG (default /data/config.yaml): write one from config.example.yaml
#      (listening on 0.0.0.0:29317, SQLite and the registration in /data, a new encryption
#      key), say what to edit, exit;
#   2. no registration at $MB__APPSERVICE__REGISTRATION (default /data/registration.yaml):
#      generate it (new tokens), say to give it to the homeserver, exit;
#   3. otherwise run the given command (default `run`).
# `init` does 2 without exiting early and then exits 0 (docker-compose.yml's bridge-init).
# If MB_DATABASE_ENCRYPTION_KEY_FILE names a missing file, a new key is written there.
set -eu

bin=/usr/local/bin/messenger-bridge
export MB_CONFIG="${MB_CONFIG:-/data/config.yaml}"
export MB__APPSERVICE__REGISTRATION="${MB__APPSERVICE__REGISTRATION:-/data/registration.yaml}"
reg=$MB__APPSERVICE__REGISTRATION
cmd=${1:-run}

say() { printf 'messenger-bridge (docker): %s\n' "$*" >&2; }

if [ -n "${MB_DATABASE_ENCRYPTION_KEY_FILE:-}" ] && [ ! -s "$MB_DATABASE_ENCRYPTION_KEY_FILE" ]; then
    (umask 077 && "$bin" generate-key >"$MB_DATABASE_ENCRYPTION_KEY_FILE")
    say "wrote a new database encryption key to $MB_DATABASE_ENCRYPTION_KEY_FILE (keep it: without it stored tokens are lost)"
fi

if [ ! -f "$MB_CONFIG" ]; then
    key=$("$bin" generate-key)
    (umask 077 && sed \
        -e 's|^  listen: 127\.0\.0\.1:29317|  listen: 0.0.0.0:29317|' \
        -e "s|^  registration: registration\.yaml|  registration: $reg|" \
        -e 's|^  url: sqlite:///var/lib/messenger-bridge/bridge\.db|  url: sqlite:///data/bridge.db|' \
        -e "s|^  encryption_key: \"\"|  encryption_key: \"$key\"|" \
        /usr/share/messenger-bridge/config.example.yaml >"$MB_CONFIG")
    say "no configuration found: wrote $MB_CONFIG from config.example.yaml (with a new encryption key)."
    say "Edit it (homeserver, xmpp, oauth, bridge.permissions), then start the container again."
    exit 0
fi

if [ ! -f "$reg" ]; then
    "$bin" generate-registration -o "$reg"
    if [ "$cmd" != init ]; then
        say "no registration found: generated $reg with new tokens."
        say "Give it to the homeserver (Synapse: app_service_config_files), restart the homeserver, then start this container again."
        exit 0
    fi
fi

# The root filesystem is read-only: a contact's file without a length is counted in a
# temporary copy under /data (the volume), unless TMPDIR says otherwise.
if [ -z "${TMPDIR:-}" ] && [ -d /data ] && [ -w /data ]; then
    mkdir -p /data/tmp && export TMPDIR=/data/tmp
fi

case $cmd in
    init) say "registration at $reg is ready"; exit 0 ;;
    run | check-config | check-xmpp | generate-registration | generate-key | link | healthcheck | version) exec "$bin" "$@" ;;
    *) exec "$@" ;;
esac
