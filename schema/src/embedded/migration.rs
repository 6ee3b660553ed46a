//! The embedded store's tables and their migrations, applied by the writer at open.
//!
//! Migrations are numbered by position in [`MIGRATIONS`]; `PRAGMA user_version` records how many
//! ran. Never edit one that has shipped: append a new one.

use rusqlite::Connection;

use super::error::{DbError, DbResult};

/// Every migration, oldest first. Index `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1_INITIAL, V2_AMENDMENTS];

/// Version 1: every table of the store.
///
/// Timestamps are milliseconds since the Unix epoch; enums are stored with the API's spelling.
const V1_INITIAL: &str = r"
-- One row per tenant; the whole engine::tenant::Tenant as JSON.
CREATE TABLE tenants (
    id   TEXT PRIMARY KEY,
    body TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- One row per tenant: the knowledge text and its chunks (a JSON array).
CREATE TABLE knowledge (
    tenant     TEXT PRIMARY KEY,
    text       TEXT NOT NULL,
    chunks     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- One row per conversation. `activity` is what listings sort by.
CREATE TABLE conversations (
    tenant          TEXT NOT NULL,
    contact         TEXT NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT,
    updated_at      INTEGER NOT NULL,
    last_message_at INTEGER,
    human_deadline  INTEGER,
    human_answered  INTEGER NOT NULL,
    activity        INTEGER GENERATED ALWAYS AS (coalesce(last_message_at, updated_at)) VIRTUAL,
    PRIMARY KEY (tenant, contact)
) STRICT, WITHOUT ROWID;
-- Listing, most recent activity first, keyset-paginated on (activity, contact).
CREATE INDEX conversations_by_activity ON conversations (tenant, activity, contact);
-- The same with a state filter (the dashboard's 'waiting for a human' view).
CREATE INDEX conversations_by_state ON conversations (tenant, state, activity, contact);
-- The human-timeout scan.
CREATE INDEX conversations_by_deadline ON conversations (human_deadline) WHERE human_deadline IS NOT NULL;

-- Message history. `seq` (the rowid) orders messages written at the same millisecond.
CREATE TABLE messages (
    seq         INTEGER PRIMARY KEY,
    tenant      TEXT NOT NULL,
    contact     TEXT NOT NULL,
    id          TEXT NOT NULL,
    direction   TEXT NOT NULL,
    author      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    text        TEXT NOT NULL,
    provider_id TEXT,
    at          INTEGER NOT NULL,
    status      TEXT,
    expires_at  INTEGER NOT NULL
) STRICT;
-- History paging, newest first; erasing a contact.
CREATE INDEX messages_by_contact ON messages (tenant, contact, at, seq);
-- Delivery statuses and echo detection look outbound messages up by the provider's id.
CREATE INDEX messages_by_provider_id ON messages (tenant, provider_id)
    WHERE provider_id IS NOT NULL AND direction = 'out';
-- The expiry sweep.
CREATE INDEX messages_by_expiry ON messages (expires_at);

-- Provider message ids already ingested, per tenant, kept until swept.
CREATE TABLE dedupe (
    tenant  TEXT NOT NULL,
    key     TEXT NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX dedupe_by_seen_at ON dedupe (seen_at);

-- Accepted inbound events whose effects are not committed yet. AUTOINCREMENT: a seq is never
-- reused, even after the newest entries are swept.
CREATE TABLE inbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant  TEXT NOT NULL,
    contact TEXT NOT NULL,
    kind    TEXT NOT NULL,
    message TEXT NOT NULL,
    done    INTEGER NOT NULL DEFAULT 0
) STRICT;
-- Pending entries in seq order (done = 0) and the sweep of finished ones (done = 1).
CREATE INDEX inbox_by_done ON inbox (done);
CREATE INDEX inbox_by_contact ON inbox (tenant, contact);

-- Committed sends waiting for the provider. `message_seq` is the history row to update.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant      TEXT NOT NULL,
    contact     TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    message_seq INTEGER NOT NULL,
    text        TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    done        INTEGER NOT NULL DEFAULT 0,
    error       TEXT
) STRICT;
CREATE INDEX outbox_by_done ON outbox (done);
CREATE INDEX outbox_by_contact ON outbox (tenant, contact);
";

/// Version 2: edits and deletions by a message's author (`amendment` is `edited` or `revoked`),
/// and the look-up they need: a contact's message by the provider's id, either direction.
const V2_AMENDMENTS: &str = r"
ALTER TABLE messages ADD COLUMN amendment TEXT;
ALTER TABLE messages ADD COLUMN amended_at INTEGER;
CREATE INDEX messages_by_contact_provider_id ON messages (tenant, contact, provider_id, at)
    WHERE provider_id IS NOT NULL;
";

/// Brings the database to the newest schema, each migration in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> DbResult<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if current > known {
        return Err(DbError::Engine(engine::EngineError::Internal(format!(
            "the database has schema version {current}, newer than this build knows ({known})"
        ))));
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "embedded store schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_are_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
