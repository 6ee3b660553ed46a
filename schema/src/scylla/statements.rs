//! Every statement the ScyllaDB store runs, prepared once when the store connects.
//!
//! Statements are prepared against the session's keyspace. Lightweight transactions (the ones with
//! `IF`) use the serial consistency of the settings and are never retried blindly (a timed-out LWT
//! may have applied: the callers re-read). Everything else is idempotent: writes name their row
//! exactly, and the few `USING TIMESTAMP` writes carry the version they belong to.

use futures_util::future::try_join_all;
use scylla::client::session::Session;
use scylla::errors::PrepareError;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

macro_rules! statements {
    ($($name:ident: $lwt:literal => $cql:literal,)*) => {
        /// The prepared statements, by name.
        #[derive(Debug)]
        pub(crate) struct Statements {
            $(pub(crate) $name: PreparedStatement,)*
        }

        impl Statements {
            /// Prepares every statement (concurrently) with the store's consistency levels.
            pub(crate) async fn prepare(
                session: &Session,
                consistency: Consistency,
                serial: SerialConsistency,
                page_size: i32,
            ) -> Result<Self, PrepareError> {
                let sources: Vec<(&'static str, bool)> = vec![$(($cql, $lwt),)*];
                let prepared = try_join_all(sources.iter().map(|(cql, _)| session.prepare(*cql))).await?;
                let mut prepared = prepared.into_iter().zip(sources).map(|(mut statement, (_, lwt))| {
                    statement.set_consistency(consistency);
                    statement.set_serial_consistency(Some(serial));
                    statement.set_is_idempotent(!lwt);
                    statement.set_page_size(page_size);
                    statement
                });
                Ok(Self {
                    $($name: prepared.next().expect("one prepared statement per source"),)*
                })
            }
        }
    };
}

statements! {
    health: false => "SELECT release_version FROM system.local",

    // tenants
    tenant_insert: true => "INSERT INTO tenants (id, body) VALUES (?, ?) IF NOT EXISTS",
    tenant_update: true => "UPDATE tenants SET body = ? WHERE id = ? IF EXISTS",
    tenant_get: false => "SELECT body FROM tenants WHERE id = ?",
    tenant_list: false => "SELECT body FROM tenants",
    tenant_delete: true => "DELETE FROM tenants WHERE id = ? IF EXISTS",

    // knowledge
    knowledge_get: false => "SELECT text, version, updated_at FROM knowledge WHERE tenant = ?",
    knowledge_put: false => "INSERT INTO knowledge (tenant, text, version, updated_at) VALUES (?, ?, ?, ?)",
    knowledge_delete: false => "DELETE FROM knowledge WHERE tenant = ?",
    chunk_insert: false => "INSERT INTO knowledge_chunks (tenant, version, chunk, text, embedding, embedding_model) VALUES (?, ?, ?, ?, ?, ?)",
    chunks_get: false => "SELECT chunk, text, embedding, embedding_model FROM knowledge_chunks WHERE tenant = ? AND version = ?",
    chunks_drop: false => "DELETE FROM knowledge_chunks WHERE tenant = ? AND version = ?",

    // conversations (every write is a lightweight transaction on `version`)
    conv_get: false => "SELECT contact, state, reason, updated_at, last_message_at, human_deadline, human_answered, version FROM conversations WHERE tenant = ? AND contact = ?",
    conv_get_many: false => "SELECT contact, state, reason, updated_at, last_message_at, human_deadline, human_answered, version FROM conversations WHERE tenant = ? AND contact IN ?",
    conv_of_tenant: false => "SELECT contact, state, reason, updated_at, last_message_at, human_deadline, human_answered, version FROM conversations WHERE tenant = ?",
    conv_insert: true => "INSERT INTO conversations (tenant, contact, state, reason, updated_at, last_message_at, human_deadline, human_answered, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
    conv_update: true => "UPDATE conversations SET state = ?, reason = ?, updated_at = ?, last_message_at = ?, human_deadline = ?, human_answered = ?, version = ? WHERE tenant = ? AND contact = ? IF version = ?",
    conv_delete: true => "DELETE FROM conversations WHERE tenant = ? AND contact = ? IF EXISTS",
    conv_drop_tenant: false => "DELETE FROM conversations WHERE tenant = ?",
    conv_states: false => "SELECT tenant, state FROM conversations",

    // the activity listing
    act_insert: false => "INSERT INTO conversations_by_activity (tenant, day, activity, contact) VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
    act_delete: false => "DELETE FROM conversations_by_activity USING TIMESTAMP ? WHERE tenant = ? AND day = ? AND activity = ? AND contact = ?",
    act_page: false => "SELECT activity, contact FROM conversations_by_activity WHERE tenant = ? AND day = ?",
    act_page_after: false => "SELECT activity, contact FROM conversations_by_activity WHERE tenant = ? AND day = ? AND (activity, contact) < (?, ?)",
    act_drop_day: false => "DELETE FROM conversations_by_activity WHERE tenant = ? AND day = ?",

    // the waiting-for-a-human listing
    wait_insert: false => "INSERT INTO conversations_waiting (tenant, state, activity, contact) VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
    wait_delete: false => "DELETE FROM conversations_waiting USING TIMESTAMP ? WHERE tenant = ? AND state = ? AND activity = ? AND contact = ?",
    wait_page: false => "SELECT activity, contact FROM conversations_waiting WHERE tenant = ? AND state = ?",
    wait_page_after: false => "SELECT activity, contact FROM conversations_waiting WHERE tenant = ? AND state = ? AND (activity, contact) < (?, ?)",
    wait_drop: false => "DELETE FROM conversations_waiting WHERE tenant = ? AND state = ?",

    // human-timeout deadlines
    deadline_insert: false => "INSERT INTO deadlines (bucket, deadline, tenant, contact) VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
    deadline_delete: false => "DELETE FROM deadlines USING TIMESTAMP ? WHERE bucket = ? AND deadline = ? AND tenant = ? AND contact = ?",
    deadline_due: false => "SELECT deadline, tenant, contact FROM deadlines WHERE bucket = ? AND deadline <= ?",
    deadline_any: false => "SELECT deadline FROM deadlines WHERE bucket = ? LIMIT 1",

    // history
    message_insert: false => "INSERT INTO messages (tenant, contact, at, seq, id, direction, author, kind, text, provider_id, status, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    message_page: false => "SELECT at, seq, id, direction, author, kind, text, provider_id, status, expires_at, amendment, amended_at FROM messages WHERE tenant = ? AND contact = ?",
    message_page_before: false => "SELECT at, seq, id, direction, author, kind, text, provider_id, status, expires_at, amendment, amended_at FROM messages WHERE tenant = ? AND contact = ? AND at < ?",
    message_page_since: false => "SELECT at, seq, id, direction, author, kind, text, provider_id, status, expires_at, amendment, amended_at FROM messages WHERE tenant = ? AND contact = ? AND at >= ?",
    message_amend: false => "UPDATE messages USING TTL ? SET text = ?, amendment = ?, amended_at = ? WHERE tenant = ? AND contact = ? AND at = ? AND seq = ?",
    message_get: false => "SELECT id, direction, author, status, expires_at, TTL(text) FROM messages WHERE tenant = ? AND contact = ? AND at = ? AND seq = ?",
    message_set_status: false => "UPDATE messages USING TTL ? SET status = ? WHERE tenant = ? AND contact = ? AND at = ? AND seq = ?",
    message_set_sent: false => "UPDATE messages USING TTL ? SET provider_id = ?, status = ? WHERE tenant = ? AND contact = ? AND at = ? AND seq = ?",
    message_delete: false => "DELETE FROM messages WHERE tenant = ? AND contact = ? AND at = ? AND seq = ?",
    messages_drop: false => "DELETE FROM messages WHERE tenant = ? AND contact = ?",
    provider_id_insert: false => "INSERT INTO messages_by_provider_id (tenant, provider_id, contact, at, seq, author) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?",
    provider_id_get: false => "SELECT contact, at, seq, author FROM messages_by_provider_id WHERE tenant = ? AND provider_id = ?",
    expiry_insert: false => "INSERT INTO message_expiry (day, shard, expires_at, tenant, contact, at, seq) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    expiry_due: false => "SELECT expires_at, tenant, contact, at, seq FROM message_expiry WHERE day = ? AND shard = ? AND expires_at <= ?",
    expiry_delete: false => "DELETE FROM message_expiry WHERE day = ? AND shard = ? AND expires_at = ? AND tenant = ? AND contact = ? AND at = ? AND seq = ?",
    expiry_any: false => "SELECT expires_at FROM message_expiry WHERE day = ? AND shard = ? LIMIT 1",

    // dedupe
    // The claim leaves `done` unset (null = not done): an LWT's cells carry the coordinator's
    // Paxos timestamp, so a plain `done = true` written after it could lose to a `done = false`
    // written by the claim when the client's clock lags the coordinator's.
    dedupe_claim: true => "INSERT INTO dedupe (tenant, key, seq, at, seen_at, claimed_at) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?",
    dedupe_done: false => "UPDATE dedupe USING TTL ? SET done = true WHERE tenant = ? AND key = ?",
    // An LWT like the claim whose `claimed_at` it overwrites (see above).
    dedupe_release: true => "UPDATE dedupe USING TTL ? SET claimed_at = 0 WHERE tenant = ? AND key = ? IF EXISTS",
    dedupe_get: false => "SELECT seen_at FROM dedupe WHERE tenant = ? AND key = ?",
    dedupe_delete: false => "DELETE FROM dedupe WHERE tenant = ? AND key = ?",
    dedupe_index_insert: false => "INSERT INTO dedupe_by_day (day, shard, seen_at, tenant, key) VALUES (?, ?, ?, ?, ?) USING TTL ?",
    dedupe_index_due: false => "SELECT seen_at, tenant, key FROM dedupe_by_day WHERE day = ? AND shard = ? AND seen_at < ?",
    dedupe_index_all: false => "SELECT seen_at, tenant, key FROM dedupe_by_day WHERE day = ? AND shard = ?",
    dedupe_index_delete: false => "DELETE FROM dedupe_by_day WHERE day = ? AND shard = ? AND seen_at = ? AND tenant = ? AND key = ?",
    dedupe_index_any: false => "SELECT seen_at FROM dedupe_by_day WHERE day = ? AND shard = ? LIMIT 1",

    // inbox
    // `done` stays unset (null = pending): a retried ingest rewrites the same row and must not
    // undo a commit that already marked it done.
    inbox_insert: false => "INSERT INTO inbox (bucket, shard, seq, tenant, contact, kind, message) VALUES (?, ?, ?, ?, ?, ?, ?)",
    inbox_done: false => "UPDATE inbox SET done = true WHERE bucket = ? AND shard = ? AND seq = ?",
    inbox_scan: false => "SELECT seq, tenant, contact, kind, message, done FROM inbox WHERE bucket = ? AND shard = ?",
    inbox_delete: false => "DELETE FROM inbox WHERE bucket = ? AND shard = ? AND seq = ?",
    inbox_drop: false => "DELETE FROM inbox WHERE bucket = ? AND shard = ?",

    // outbox
    outbox_insert: false => "INSERT INTO outbox (bucket, shard, seq, tenant, contact, message_id, at, text, attempts, done) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, false)",
    outbox_get: false => "SELECT tenant, contact, message_id, at, done FROM outbox WHERE bucket = ? AND shard = ? AND seq = ?",
    outbox_finish: false => "UPDATE outbox SET done = true, error = ? WHERE bucket = ? AND shard = ? AND seq = ?",
    outbox_scan: false => "SELECT seq, tenant, contact, message_id, at, text, attempts, done FROM outbox WHERE bucket = ? AND shard = ?",
    outbox_delete: false => "DELETE FROM outbox WHERE bucket = ? AND shard = ? AND seq = ?",
    outbox_drop: false => "DELETE FROM outbox WHERE bucket = ? AND shard = ?",

    // the index of time buckets
    bucket_insert: false => "INSERT INTO time_buckets (kind, scope, bucket) VALUES (?, ?, ?)",
    bucket_list: false => "SELECT bucket FROM time_buckets WHERE kind = ? AND scope = ?",
    bucket_delete: false => "DELETE FROM time_buckets WHERE kind = ? AND scope = ? AND bucket = ?",
    bucket_drop: false => "DELETE FROM time_buckets WHERE kind = ? AND scope = ?",
}
