-- store: initial schema (PostgreSQL). Ids are opaque strings; timestamps are unix milliseconds.

CREATE TABLE linked_users (
    matrix_user      TEXT    PRIMARY KEY NOT NULL,
    jid              TEXT    NOT NULL UNIQUE,
    server_profile   TEXT    NOT NULL CHECK (server_profile IN ('messenger', 'standard')),
    connection_state TEXT    NOT NULL,
    management_room  TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL
);

-- Encrypted secrets (OAuth access/refresh tokens, XMPP password), one row per user and slot.
-- `sealed` is nonce || XChaCha20-Poly1305 ciphertext; the AEAD associated data binds it to
-- (matrix_user, slot), so a row copied to another user or slot fails to decrypt.
CREATE TABLE user_secrets (
    matrix_user TEXT    NOT NULL REFERENCES linked_users (matrix_user) ON DELETE CASCADE,
    slot        TEXT    NOT NULL CHECK (slot IN ('oauth_access', 'oauth_refresh', 'password')),
    key_id      TEXT    NOT NULL,
    sealed      BYTEA   NOT NULL,
    expires_at  BIGINT,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (matrix_user, slot)
);
CREATE INDEX user_secrets_key_id ON user_secrets (key_id);

CREATE TABLE ghosts (
    jid          TEXT    PRIMARY KEY NOT NULL,
    matrix_user  TEXT    NOT NULL UNIQUE,
    display_name TEXT,
    avatar_hash  TEXT,
    avatar_mxc   TEXT,
    updated_at   BIGINT  NOT NULL
);

CREATE TABLE portals (
    matrix_user TEXT    NOT NULL REFERENCES linked_users (matrix_user) ON DELETE CASCADE,
    contact_jid TEXT    NOT NULL,
    room_id     TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (matrix_user, contact_jid)
);

CREATE TABLE message_map (
    room_id         TEXT    NOT NULL REFERENCES portals (room_id) ON DELETE CASCADE,
    matrix_event_id TEXT    NOT NULL,
    xmpp_stanza_id  TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    PRIMARY KEY (room_id, matrix_event_id),
    UNIQUE (room_id, xmpp_stanza_id)
);

-- Durable outbox. state: pending | claimed | done | failed. Per (direction, queue_key) the
-- lowest id that is pending or claimed is the head; only the head is ever handed out.
CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    direction       TEXT    NOT NULL CHECK (direction IN ('to_xmpp', 'to_matrix')),
    queue_key       TEXT    NOT NULL,
    dedupe_key      TEXT,
    payload         BYTEA   NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'claimed', 'done', 'failed')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    lease_token     TEXT,
    lease_until     BIGINT,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    finished_at     BIGINT,
    UNIQUE (direction, dedupe_key)
);
CREATE INDEX outbox_queue ON outbox (direction, queue_key, state, id);
CREATE INDEX outbox_state ON outbox (direction, state, id);

CREATE TABLE appservice_txns (
    txn_id      TEXT    PRIMARY KEY NOT NULL,
    fingerprint TEXT    NOT NULL,
    received_at BIGINT  NOT NULL
);
CREATE INDEX appservice_txns_received_at ON appservice_txns (received_at);
