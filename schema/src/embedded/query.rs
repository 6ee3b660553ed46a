//! The reads, as functions over a read-only connection. Each statement sees one committed state.

use engine::conversation::{Conversation, ConversationState};
use engine::message::{InboxEntry, InboxKind, OutboxItem, StoredMessage};
use engine::ports::{DueDeadline, Knowledge, Page};
use engine::tenant::Tenant;
use engine::{ContactId, TenantId, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};

use super::error::{DbError, DbResult};
use super::row::{self, CONVERSATION_COLUMNS, MESSAGE_COLUMNS, OUTBOX_COLUMNS};

pub(crate) fn ping(conn: &Connection) -> DbResult<()> {
    conn.prepare_cached("SELECT count(*) FROM tenants")?
        .query_row([], |_| Ok(()))?;
    Ok(())
}

pub(crate) fn get_tenant(conn: &Connection, id: &TenantId) -> DbResult<Option<Tenant>> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM tenants WHERE id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))
        .optional()?;
    Ok(body.as_deref().map(serde_json::from_str).transpose()?)
}

/// Every tenant, by id.
pub(crate) fn list_tenants(conn: &Connection) -> DbResult<Vec<Tenant>> {
    let mut statement = conn.prepare_cached("SELECT body FROM tenants ORDER BY id")?;
    let tenants = statement
        .query_and_then([], |r| -> DbResult<Tenant> {
            Ok(serde_json::from_str(&r.get::<_, String>(0)?)?)
        })?
        .collect::<DbResult<Vec<_>>>()?;
    Ok(tenants)
}

pub(crate) fn get_knowledge(conn: &Connection, tenant: &TenantId) -> DbResult<Option<Knowledge>> {
    conn.prepare_cached("SELECT text, chunks, updated_at FROM knowledge WHERE tenant = ?1")?
        .query_and_then([tenant.as_str()], |r| -> DbResult<Knowledge> {
            Ok(Knowledge {
                text: r.get(0)?,
                chunks: serde_json::from_str(&r.get::<_, String>(1)?)?,
                updated_at: Timestamp(r.get(2)?),
            })
        })?
        .next()
        .transpose()
}

/// Inbox entries not done, oldest first.
pub(crate) fn pending_inbox(conn: &Connection) -> DbResult<Vec<InboxEntry>> {
    let mut statement =
        conn.prepare_cached("SELECT seq, kind, message FROM inbox WHERE done = 0 ORDER BY seq")?;
    let entries = statement
        .query_and_then([], |r| -> DbResult<InboxEntry> {
            let kind: String = r.get(1)?;
            Ok(InboxEntry {
                seq: row::seq(r.get(0)?)?,
                kind: InboxKind::parse(&kind)
                    .ok_or_else(|| DbError::corrupt("inbox kind", &kind))?,
                message: serde_json::from_str(&r.get::<_, String>(2)?)?,
            })
        })?
        .collect::<DbResult<Vec<_>>>()?;
    Ok(entries)
}

pub(crate) fn load_conversation(
    conn: &Connection,
    tenant: &TenantId,
    contact: &ContactId,
) -> DbResult<Option<Conversation>> {
    conn.prepare_cached(&format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant = ?1 AND contact = ?2"
    ))?
    .query_and_then([tenant.as_str(), contact.as_str()], row::conversation)?
    .next()
    .transpose()
}

/// A page of conversations, most recent activity first, strictly after `after` (the previous
/// page's last `(activity, contact)`). One row more than `limit` is read to know whether another
/// page follows.
pub(crate) fn list_conversations(
    conn: &Connection,
    tenant: &TenantId,
    state: Option<ConversationState>,
    limit: usize,
    after: Option<(i64, String)>,
) -> DbResult<Page<Conversation>> {
    // With no cursor, start above every possible key: any activity, and a contact greater than any
    // digit string.
    let (after_activity, after_contact) = after.unwrap_or((i64::MAX, "~".to_owned()));
    let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let state_filter = if state.is_some() {
        "AND state = ?5"
    } else {
        "AND ?5 IS NULL"
    };
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations
         WHERE tenant = ?1 {state_filter} AND (activity, contact) < (?2, ?3)
         ORDER BY activity DESC, contact DESC LIMIT ?4"
    ))?;
    let mut items = statement
        .query_and_then(
            params![
                tenant.as_str(),
                after_activity,
                after_contact,
                fetch,
                state.map(ConversationState::as_str)
            ],
            row::conversation,
        )?
        .collect::<DbResult<Vec<_>>>()?;
    let more = items.len() > limit;
    items.truncate(limit);
    let next_cursor = if more {
        items.last().map(cursor_of)
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// History newest first (the later write first at equal times), never an expired message.
pub(crate) fn history(
    conn: &Connection,
    tenant: &TenantId,
    contact: &ContactId,
    limit: usize,
    before: Option<Timestamp>,
    now: Timestamp,
) -> DbResult<Vec<StoredMessage>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
         WHERE tenant = ?1 AND contact = ?2 AND at < ?3 AND expires_at > ?4
         ORDER BY at DESC, seq DESC LIMIT ?5"
    ))?;
    let messages = statement
        .query_and_then(
            params![
                tenant.as_str(),
                contact.as_str(),
                before.map_or(i64::MAX, Timestamp::as_millis),
                now.as_millis(),
                i64::try_from(limit).unwrap_or(i64::MAX),
            ],
            row::message,
        )?
        .collect::<DbResult<Vec<_>>>()?;
    Ok(messages)
}

/// Deadlines at or before `now`, earliest first.
pub(crate) fn due_deadlines(
    conn: &Connection,
    now: Timestamp,
    limit: usize,
) -> DbResult<Vec<DueDeadline>> {
    let mut statement = conn.prepare_cached(
        "SELECT tenant, contact, human_deadline FROM conversations
         WHERE human_deadline IS NOT NULL AND human_deadline <= ?1
         ORDER BY human_deadline, tenant, contact LIMIT ?2",
    )?;
    let due = statement
        .query_and_then(
            params![now.as_millis(), i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| -> DbResult<_> {
                Ok(DueDeadline {
                    tenant: row::tenant_id(&r.get::<_, String>(0)?)?,
                    contact: row::contact_id(&r.get::<_, String>(1)?)?,
                    deadline: Timestamp(r.get(2)?),
                })
            },
        )?
        .collect::<DbResult<Vec<_>>>()?;
    Ok(due)
}

pub(crate) fn state_counts(conn: &Connection) -> DbResult<Vec<(TenantId, ConversationState, u64)>> {
    let mut statement = conn.prepare_cached(
        "SELECT tenant, state, count(*) FROM conversations GROUP BY tenant, state ORDER BY tenant, state",
    )?;
    let counts = statement
        .query_and_then([], |r| -> DbResult<_> {
            let state: String = r.get(1)?;
            Ok((
                row::tenant_id(&r.get::<_, String>(0)?)?,
                ConversationState::parse(&state)
                    .ok_or_else(|| DbError::corrupt("conversation state", &state))?,
                u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            ))
        })?
        .collect::<DbResult<Vec<_>>>()?;
    Ok(counts)
}

/// Outbox entries not done, oldest first.
pub(crate) fn pending_outbox(conn: &Connection) -> DbResult<Vec<OutboxItem>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE done = 0 ORDER BY seq"
    ))?;
    let items = statement
        .query_and_then([], row::outbox_item)?
        .collect::<DbResult<Vec<_>>>()?;
    Ok(items)
}

/// Whether an outbound message with this provider id was written by Conversa (not a human).
pub(crate) fn is_own_message(
    conn: &Connection,
    tenant: &TenantId,
    provider_id: &str,
) -> DbResult<bool> {
    let own = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM messages
             WHERE tenant = ?1 AND provider_id = ?2 AND direction = 'out' AND author <> 'human')",
        )?
        .query_row([tenant.as_str(), provider_id], |r| r.get(0))?;
    Ok(own)
}

/// The cursor after `conversation`: `activity_millis:contact`, the format every store uses.
fn cursor_of(conversation: &Conversation) -> String {
    let activity = conversation
        .last_message_at
        .unwrap_or(conversation.updated_at);
    format!("{}:{}", activity.as_millis(), conversation.contact)
}
