-- Where the bridge resumes reading a user's message archive (XEP-0313) after a login on a
-- standard server: `id:<archive id>` of the last archived message it recorded, or
-- `since:<unix ms>` when it has recorded none yet. NULL: never connected to such a server.
ALTER TABLE linked_users ADD COLUMN archive_cursor TEXT;
