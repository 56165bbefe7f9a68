// A small persistent storage adapter for oidc-provider.
//
// oidc-provider keeps its models (sessions, grants, codes, access and refresh tokens, device
// codes, interactions) in an adapter. Its built-in adapter is in-memory only, so every token
// would be lost on `deploy/local/stack restart oauth` — and the bridge's restart tests need its
// stored refresh tokens to survive a provider restart, as they would with a real provider.
//
// This adapter keeps everything in one Map and writes it to a JSON file after each change
// (write to a temporary file, then rename, so a crash never leaves a torn file). The data set of
// a test stack is tiny (hundreds of records), so lookups by uid / user code / grant id simply
// scan. Expired records are dropped when the file is loaded and when they are read.
//
// The adapter interface is the one documented by oidc-provider (upsert, find, findByUid,
// findByUserCode, consume, destroy, revokeByGrantId).

import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';

const nowSec = () => Math.floor(Date.now() / 1000);

export function createFileAdapter(file) {
  const records = new Map(); // "Model:id" -> { payload, expiresAt (epoch s) | null }

  if (file && existsSync(file)) {
    try {
      const data = JSON.parse(readFileSync(file, 'utf8'));
      for (const [key, rec] of Object.entries(data)) {
        if (rec.expiresAt === null || rec.expiresAt > nowSec()) records.set(key, rec);
      }
    } catch (err) {
      console.error(`oauth-provider: ignoring unreadable store ${file}: ${err.message}`);
    }
  }

  function save() {
    if (!file) return;
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, JSON.stringify(Object.fromEntries(records)));
    renameSync(tmp, file);
  }

  function live(key) {
    const rec = records.get(key);
    if (!rec) return undefined;
    if (rec.expiresAt !== null && rec.expiresAt <= nowSec()) {
      records.delete(key);
      return undefined;
    }
    return rec;
  }

  class FileAdapter {
    constructor(model) {
      this.model = model;
    }

    key(id) {
      return `${this.model}:${id}`;
    }

    async upsert(id, payload, expiresIn) {
      const expiresAt = typeof expiresIn === 'number' ? nowSec() + expiresIn : null;
      records.set(this.key(id), { payload, expiresAt });
      save();
    }

    async find(id) {
      return live(this.key(id))?.payload;
    }

    async findByUid(uid) {
      return this.findBy((p) => p.uid === uid);
    }

    async findByUserCode(userCode) {
      return this.findBy((p) => p.userCode === userCode);
    }

    findBy(pred) {
      const prefix = `${this.model}:`;
      for (const key of records.keys()) {
        if (!key.startsWith(prefix)) continue;
        const rec = live(key);
        if (rec && pred(rec.payload)) return rec.payload;
      }
      return undefined;
    }

    async consume(id) {
      const rec = live(this.key(id));
      if (rec) {
        rec.payload.consumed = nowSec();
        save();
      }
    }

    async destroy(id) {
      if (records.delete(this.key(id))) save();
    }

    async revokeByGrantId(grantId) {
      let changed = false;
      for (const [key, rec] of records) {
        if (rec.payload.grantId === grantId) {
          records.delete(key);
          changed = true;
        }
      }
      if (changed) save();
    }
  }

  return FileAdapter;
}
