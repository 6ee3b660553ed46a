//! The writes, as functions over the writer's connection. Each runs inside the writer's group
//! transaction and its own savepoint, so each is atomic: it stores everything or nothing.

use engine::conversation::{Conversation, ConversationState};
use engine::message::{
    AMEND_LOOKBACK_DAYS, Amendment, DeliveryStatus, Direction, InboxEntry, IngestItem,
    IngestOutcome, OutboxItem, StoredMessage,
};
use engine::ports::{ConversationCommit, DeliveryUpdate, SweepReport};
use engine::{ContactId, EngineError, MessageId, TenantId, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};

use super::error::DbResult;
use super::row::{self, MESSAGE_COLUMNS};

pub(crate) fn create_tenant(conn: &Connection, id: &TenantId, body: &str) -> DbResult<()> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO tenants (id, body) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![id.as_str(), body])?;
    if inserted == 0 {
        return Err(EngineError::Conflict(format!("tenant {id} exists")).into());
    }
    Ok(())
}

pub(crate) fn update_tenant(conn: &Connection, id: &TenantId, body: &str) -> DbResult<()> {
    let updated = conn
        .prepare_cached("UPDATE tenants SET body = ?2 WHERE id = ?1")?
        .execute(params![id.as_str(), body])?;
    if updated == 0 {
        return Err(EngineError::not_found(format!("tenant {id}")).into());
    }
    Ok(())
}

/// Deletes the tenant's row and every row that belongs to it.
pub(crate) fn delete_tenant(conn: &Connection, id: &TenantId) -> DbResult<bool> {
    let existed = conn
        .prepare_cached("DELETE FROM tenants WHERE id = ?1")?
        .execute([id.as_str()])?
        > 0;
    for table in [
        "knowledge",
        "conversations",
        "messages",
        "dedupe",
        "inbox",
        "outbox",
    ] {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE tenant = ?1"))?
            .execute([id.as_str()])?;
    }
    Ok(existed)
}

pub(crate) fn put_knowledge(
    conn: &Connection,
    tenant: &TenantId,
    text: &str,
    chunks_json: &str,
    updated_at: Timestamp,
) -> DbResult<()> {
    conn.prepare_cached(
        "INSERT INTO knowledge (tenant, text, chunks, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (tenant) DO UPDATE SET text = excluded.text, chunks = excluded.chunks,
                                            updated_at = excluded.updated_at",
    )?
    .execute(params![
        tenant.as_str(),
        text,
        chunks_json,
        updated_at.as_millis()
    ])?;
    Ok(())
}

/// For each item whose dedupe key is new: the key, the history row, the conversation (created in
/// `IA_ATIVA` if missing, `last_message_at` moved forward) and, when asked, the inbox entry.
pub(crate) fn ingest(
    conn: &Connection,
    tenant: &TenantId,
    items: Vec<IngestItem>,
    now: Timestamp,
) -> DbResult<Vec<IngestOutcome>> {
    if let Some(item) = items.iter().find(|item| &item.message.tenant != tenant) {
        return Err(EngineError::invalid(
            "tenant",
            format!(
                "message {} belongs to tenant {}, not {tenant}",
                item.message.id, item.message.tenant
            ),
        )
        .into());
    }
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let seen = conn
            .prepare_cached("INSERT INTO dedupe (tenant, key, seen_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")?
            .execute(params![tenant.as_str(), item.dedupe_key, now.as_millis()])?
            == 0;
        if seen {
            outcomes.push(IngestOutcome::Duplicate);
            continue;
        }
        let message = item.message;
        insert_message(conn, &message)?;
        conn.prepare_cached(
            "INSERT INTO conversations
                 (tenant, contact, state, reason, updated_at, last_message_at, human_deadline, human_answered)
             VALUES (?1, ?2, ?3, NULL, ?4, ?5, NULL, 0)
             ON CONFLICT (tenant, contact) DO UPDATE
                 SET last_message_at = max(coalesce(last_message_at, excluded.last_message_at),
                                           excluded.last_message_at)",
        )?
        .execute(params![
            tenant.as_str(),
            message.contact.as_str(),
            ConversationState::IaAtiva.as_str(),
            now.as_millis(),
            message.at.as_millis(),
        ])?;
        let entry = match item.inbox {
            None => None,
            Some(kind) => {
                conn.prepare_cached(
                    "INSERT INTO inbox (tenant, contact, kind, message) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    tenant.as_str(),
                    message.contact.as_str(),
                    kind.as_str(),
                    serde_json::to_string(&message)?,
                ])?;
                Some(InboxEntry {
                    seq: row::seq(conn.last_insert_rowid())?,
                    kind,
                    message,
                })
            }
        };
        outcomes.push(IngestOutcome::Recorded(entry));
    }
    Ok(outcomes)
}

/// Stores a conversation change: the record, the consumed inbox entries marked done, the outbound
/// messages appended to the history, one outbox entry each (returned in order).
pub(crate) fn commit(conn: &Connection, commit: ConversationCommit) -> DbResult<Vec<OutboxItem>> {
    let ConversationCommit {
        conversation,
        consumed_inbox,
        outbound,
    } = commit;
    if let Some(message) = outbound
        .iter()
        .find(|m| m.tenant != conversation.tenant || m.contact != conversation.contact)
    {
        return Err(EngineError::invalid(
            "outbound",
            format!(
                "message {} belongs to another conversation than {}",
                message.id, conversation.contact
            ),
        )
        .into());
    }
    let last_outbound_at = outbound.iter().map(|m| m.at).max();
    upsert_conversation(conn, &conversation, last_outbound_at)?;
    for seq in consumed_inbox {
        // A seq beyond i64 cannot exist: nothing to mark.
        if let Ok(seq) = i64::try_from(seq) {
            conn.prepare_cached("UPDATE inbox SET done = 1 WHERE seq = ?1")?
                .execute([seq])?;
        }
    }
    let mut items = Vec::with_capacity(outbound.len());
    for message in outbound {
        let message_seq = insert_message(conn, &message)?;
        conn.prepare_cached(
            "INSERT INTO outbox (tenant, contact, message_id, message_seq, text) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            message.tenant.as_str(),
            message.contact.as_str(),
            message.id.as_str(),
            message_seq,
            message.text,
        ])?;
        items.push(OutboxItem {
            seq: row::seq(conn.last_insert_rowid())?,
            tenant: message.tenant,
            contact: message.contact,
            message_id: message.id,
            text: message.text,
            attempts: 0,
        });
    }
    Ok(items)
}

pub(crate) fn erase_contact(
    conn: &Connection,
    tenant: &TenantId,
    contact: &ContactId,
) -> DbResult<()> {
    for table in ["messages", "conversations", "inbox", "outbox"] {
        conn.prepare_cached(&format!(
            "DELETE FROM {table} WHERE tenant = ?1 AND contact = ?2"
        ))?
        .execute([tenant.as_str(), contact.as_str()])?;
    }
    Ok(())
}

/// The provider accepted the send: the entry is done; the message gets the provider's id (when
/// given) and `sent`, unless its status is already further along.
pub(crate) fn outbox_sent(conn: &Connection, seq: u64, provider_id: Option<&str>) -> DbResult<()> {
    let Some(message_seq) = finish_outbox_entry(conn, seq, None)? else {
        return Ok(());
    };
    let status: Option<Option<String>> = conn
        .prepare_cached("SELECT status FROM messages WHERE seq = ?1")?
        .query_row([message_seq], |r| r.get(0))
        .optional()?;
    let Some(status) = status else {
        return Ok(());
    };
    let current = status.as_deref().map(row::parse_status).transpose()?;
    let status = if current.is_none_or(|s| s.advances_to(DeliveryStatus::Sent)) {
        Some(DeliveryStatus::Sent)
    } else {
        current
    };
    conn.prepare_cached(
        "UPDATE messages SET provider_id = coalesce(?2, provider_id), status = ?3 WHERE seq = ?1",
    )?
    .execute(params![
        message_seq,
        provider_id,
        status.map(DeliveryStatus::as_str)
    ])?;
    Ok(())
}

/// The send failed for good: the entry is done and the message `failed`.
pub(crate) fn outbox_failed(conn: &Connection, seq: u64, error: &str) -> DbResult<()> {
    if let Some(message_seq) = finish_outbox_entry(conn, seq, Some(error))? {
        conn.prepare_cached("UPDATE messages SET status = ?2 WHERE seq = ?1")?
            .execute(params![message_seq, DeliveryStatus::Failed.as_str()])?;
    }
    Ok(())
}

/// Applies an edit or deletion to the contact's message with this provider id (see
/// `Store::amend_message`).
pub(crate) fn amend_message(
    conn: &Connection,
    tenant: &TenantId,
    contact: &ContactId,
    provider_id: &str,
    amendment: &Amendment,
    now: Timestamp,
) -> DbResult<Option<StoredMessage>> {
    let since = now.plus_days(-AMEND_LOOKBACK_DAYS);
    let found = conn
        .prepare_cached(&format!(
            "SELECT seq, {MESSAGE_COLUMNS} FROM messages
             WHERE tenant = ?1 AND contact = ?2 AND provider_id = ?3 AND at >= ?4 AND expires_at > ?5
             ORDER BY at DESC, seq DESC LIMIT 1"
        ))?
        .query_row(
            params![tenant.as_str(), contact.as_str(), provider_id, since.0, now.0],
            |r| {
                let seq: i64 = r.get(0)?;
                Ok((seq, row::message_at(r, 1)))
            },
        )
        .optional()?;
    let Some((seq, message)) = found else {
        return Ok(None);
    };
    let mut message = message?;
    if !message.amend(amendment, now) {
        return Ok(None);
    }
    let amended = message
        .amended
        .as_ref()
        .map(|a| (a.change.as_str(), a.at.0));
    conn.prepare_cached(
        "UPDATE messages SET text = ?2, amendment = ?3, amended_at = ?4 WHERE seq = ?1",
    )?
    .execute(params![
        seq,
        message.text,
        amended.map(|a| a.0),
        amended.map(|a| a.1)
    ])?;
    Ok(Some(message))
}

/// Moves the outbound message with this provider id forward, if `status` is newer.
pub(crate) fn record_delivery(
    conn: &Connection,
    tenant: &TenantId,
    provider_id: &str,
    status: DeliveryStatus,
) -> DbResult<Option<DeliveryUpdate>> {
    let found = conn
        .prepare_cached(
            "SELECT seq, contact, id, status FROM messages
             WHERE tenant = ?1 AND provider_id = ?2 AND direction = 'out'
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([tenant.as_str(), provider_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?;
    let Some((message_seq, contact, message_id, current)) = found else {
        return Ok(None);
    };
    let current = current
        .as_deref()
        .map(row::parse_status)
        .transpose()?
        .unwrap_or(DeliveryStatus::Pending);
    if !current.advances_to(status) {
        return Ok(None);
    }
    conn.prepare_cached("UPDATE messages SET status = ?2 WHERE seq = ?1")?
        .execute(params![message_seq, status.as_str()])?;
    Ok(Some(DeliveryUpdate {
        contact: row::contact_id(&contact)?,
        message_id: MessageId(message_id),
        status,
    }))
}

/// How many rows one sweep step deletes per table at most, so a large sweep never holds the writer
/// (and every webhook behind it) for long.
pub(crate) const SWEEP_STEP: i64 = 2000;

/// What one sweep step removed (the outbox is not part of [`SweepReport`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SweepStep {
    pub(crate) report: SweepReport,
    pub(crate) outbox_entries: u64,
}

impl SweepStep {
    /// Whether some table may still hold rows to sweep.
    pub(crate) fn more(&self) -> bool {
        let full = |n: u64| i64::try_from(n).is_ok_and(|n| n >= SWEEP_STEP);
        full(self.report.messages)
            || full(self.report.dedupe_keys)
            || full(self.report.inbox_entries)
            || full(self.outbox_entries)
    }
}

/// Deletes up to [`SWEEP_STEP`] rows of each kind: expired messages, dedupe keys seen before
/// `dedupe_before`, done inbox and outbox entries.
pub(crate) fn sweep_step(
    conn: &Connection,
    now: Timestamp,
    dedupe_before: Timestamp,
) -> DbResult<SweepStep> {
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let messages = conn
        .prepare_cached(
            "DELETE FROM messages WHERE seq IN
                 (SELECT seq FROM messages WHERE expires_at <= ?1 LIMIT ?2)",
        )?
        .execute(params![now.as_millis(), SWEEP_STEP])?;
    let dedupe_keys = conn
        .prepare_cached(
            "DELETE FROM dedupe WHERE (tenant, key) IN
                 (SELECT tenant, key FROM dedupe WHERE seen_at < ?1 LIMIT ?2)",
        )?
        .execute(params![dedupe_before.as_millis(), SWEEP_STEP])?;
    let inbox_entries = conn
        .prepare_cached(
            "DELETE FROM inbox WHERE seq IN (SELECT seq FROM inbox WHERE done = 1 LIMIT ?1)",
        )?
        .execute([SWEEP_STEP])?;
    let outbox_entries = conn
        .prepare_cached(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE done = 1 LIMIT ?1)",
        )?
        .execute([SWEEP_STEP])?;
    Ok(SweepStep {
        report: SweepReport {
            messages: count(messages),
            dedupe_keys: count(dedupe_keys),
            inbox_entries: count(inbox_entries),
        },
        outbox_entries: count(outbox_entries),
    })
}

/// Appends a message to the history; returns its row's seq.
fn insert_message(conn: &Connection, message: &StoredMessage) -> DbResult<i64> {
    conn.prepare_cached(
        "INSERT INTO messages
             (tenant, contact, id, direction, author, kind, text, provider_id, at, status, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        message.tenant.as_str(),
        message.contact.as_str(),
        message.id.as_str(),
        row::direction_str(message.direction),
        row::author_str(message.author),
        message.kind.as_str(),
        message.text,
        message.provider_id,
        message.at.as_millis(),
        message.status.map(DeliveryStatus::as_str),
        message.expires_at.as_millis(),
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Writes the conversation record. `last_message_at` never moves back: the stored value, the
/// record's and the newest outbound message's, whichever is latest (a commit built from a snapshot
/// older than a concurrent ingest must not undo that ingest's activity).
fn upsert_conversation(
    conn: &Connection,
    c: &Conversation,
    last_outbound_at: Option<Timestamp>,
) -> DbResult<()> {
    let last_message_at = c.last_message_at.max(last_outbound_at);
    conn.prepare_cached(
        "INSERT INTO conversations
             (tenant, contact, state, reason, updated_at, last_message_at, human_deadline, human_answered)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (tenant, contact) DO UPDATE SET
             state = excluded.state,
             reason = excluded.reason,
             updated_at = excluded.updated_at,
             last_message_at = CASE
                 WHEN last_message_at IS NULL THEN excluded.last_message_at
                 WHEN excluded.last_message_at IS NULL THEN last_message_at
                 ELSE max(last_message_at, excluded.last_message_at) END,
             human_deadline = excluded.human_deadline,
             human_answered = excluded.human_answered",
    )?
    .execute(params![
        c.tenant.as_str(),
        c.contact.as_str(),
        c.state.as_str(),
        c.reason.map(|r| r.as_str()),
        c.updated_at.as_millis(),
        last_message_at.map(Timestamp::as_millis),
        c.human_deadline.map(Timestamp::as_millis),
        c.human_answered,
    ])?;
    Ok(())
}

/// Marks an outbox entry done (recording `error` if given); returns its message's row when the
/// entry exists and the message still does (same tenant, contact and id).
fn finish_outbox_entry(conn: &Connection, seq: u64, error: Option<&str>) -> DbResult<Option<i64>> {
    let Ok(seq) = i64::try_from(seq) else {
        return Ok(None);
    };
    let entry = conn
        .prepare_cached(
            "SELECT tenant, contact, message_id, message_seq FROM outbox WHERE seq = ?1",
        )?
        .query_row([seq], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    let Some((tenant, contact, message_id, message_seq)) = entry else {
        return Ok(None);
    };
    conn.prepare_cached("UPDATE outbox SET done = 1, error = coalesce(?2, error) WHERE seq = ?1")?
        .execute(params![seq, error])?;
    // The history row may be gone (expired and swept) and, in principle, its rowid reused: check
    // that it is still the same message.
    let still_there = conn
        .prepare_cached(
            "SELECT 1 FROM messages
             WHERE seq = ?1 AND tenant = ?2 AND contact = ?3 AND id = ?4 AND direction = ?5",
        )?
        .query_row(
            params![
                message_seq,
                tenant,
                contact,
                message_id,
                row::direction_str(Direction::Out)
            ],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    Ok(still_there.then_some(message_seq))
}
