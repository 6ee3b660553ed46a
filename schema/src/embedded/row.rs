//! Rows to domain types and back: the column lists the queries select, and the spelling of every
//! enum in storage (the same strings the API uses). A stored value that does not parse is an
//! `Internal` error, never a panic.

use engine::conversation::{Conversation, ConversationState, Reason};
use engine::message::{
    Amended, Author, Change, DeliveryStatus, Direction, MessageKind, OutboxItem, StoredMessage,
};
use engine::{ContactId, MessageId, TenantId, Timestamp};
use rusqlite::Row;

use super::error::{DbError, DbResult};

/// The columns [`message`] reads, in order.
pub(crate) const MESSAGE_COLUMNS: &str = "id, tenant, contact, direction, author, kind, text, provider_id, at, status, expires_at, amendment, amended_at";

/// The columns [`conversation`] reads, in order.
pub(crate) const CONVERSATION_COLUMNS: &str =
    "tenant, contact, state, reason, updated_at, last_message_at, human_deadline, human_answered";

/// The columns [`outbox_item`] reads, in order.
pub(crate) const OUTBOX_COLUMNS: &str = "seq, tenant, contact, message_id, text, attempts";

pub(crate) fn message(row: &Row<'_>) -> DbResult<StoredMessage> {
    message_at(row, 0)
}

/// [`message`] from [`MESSAGE_COLUMNS`] selected from column `base` on.
pub(crate) fn message_at(row: &Row<'_>, base: usize) -> DbResult<StoredMessage> {
    let status: Option<String> = row.get(base + 9)?;
    Ok(StoredMessage {
        id: MessageId(row.get(base)?),
        tenant: tenant_id(&row.get::<_, String>(base + 1)?)?,
        contact: contact_id(&row.get::<_, String>(base + 2)?)?,
        direction: parse_direction(&row.get::<_, String>(base + 3)?)?,
        author: parse_author(&row.get::<_, String>(base + 4)?)?,
        kind: parse_kind(&row.get::<_, String>(base + 5)?)?,
        text: row.get(base + 6)?,
        provider_id: row.get(base + 7)?,
        at: Timestamp(row.get(base + 8)?),
        status: status.as_deref().map(parse_status).transpose()?,
        expires_at: Timestamp(row.get(base + 10)?),
        amended: match (
            row.get::<_, Option<String>>(base + 11)?,
            row.get::<_, Option<i64>>(base + 12)?,
        ) {
            (Some(change), Some(at)) => Some(Amended {
                change: Change::parse(&change)
                    .ok_or_else(|| DbError::corrupt("message amendment", &change))?,
                at: Timestamp(at),
            }),
            _ => None,
        },
    })
}

pub(crate) fn conversation(row: &Row<'_>) -> DbResult<Conversation> {
    let state: String = row.get(2)?;
    let reason: Option<String> = row.get(3)?;
    Ok(Conversation {
        tenant: tenant_id(&row.get::<_, String>(0)?)?,
        contact: contact_id(&row.get::<_, String>(1)?)?,
        state: ConversationState::parse(&state)
            .ok_or_else(|| DbError::corrupt("conversation state", &state))?,
        reason: reason
            .as_deref()
            .map(|r| Reason::parse(r).ok_or_else(|| DbError::corrupt("conversation reason", r)))
            .transpose()?,
        updated_at: Timestamp(row.get(4)?),
        last_message_at: row.get::<_, Option<i64>>(5)?.map(Timestamp),
        human_deadline: row.get::<_, Option<i64>>(6)?.map(Timestamp),
        human_answered: row.get(7)?,
    })
}

pub(crate) fn outbox_item(row: &Row<'_>) -> DbResult<OutboxItem> {
    Ok(OutboxItem {
        seq: seq(row.get(0)?)?,
        tenant: tenant_id(&row.get::<_, String>(1)?)?,
        contact: contact_id(&row.get::<_, String>(2)?)?,
        message_id: MessageId(row.get(3)?),
        text: row.get(4)?,
        attempts: u32::try_from(row.get::<_, i64>(5)?)
            .map_err(|_| DbError::corrupt("outbox attempts", "negative"))?,
    })
}

pub(crate) fn tenant_id(value: &str) -> DbResult<TenantId> {
    TenantId::parse(value).map_err(|_| DbError::corrupt("tenant id", value))
}

pub(crate) fn contact_id(value: &str) -> DbResult<ContactId> {
    ContactId::parse(value).map_err(|_| DbError::corrupt("contact id", value))
}

/// Inbox and outbox seqs are SQLite rowids: positive `i64`s.
pub(crate) fn seq(value: i64) -> DbResult<u64> {
    u64::try_from(value).map_err(|_| DbError::corrupt("seq", &value.to_string()))
}

pub(crate) fn direction_str(direction: Direction) -> &'static str {
    match direction {
        Direction::In => "in",
        Direction::Out => "out",
    }
}

pub(crate) fn author_str(author: Author) -> &'static str {
    match author {
        Author::Contact => "contact",
        Author::Assistant => "assistant",
        Author::Human => "human",
    }
}

pub(crate) fn parse_status(value: &str) -> DbResult<DeliveryStatus> {
    DeliveryStatus::parse(value).ok_or_else(|| DbError::corrupt("delivery status", value))
}

fn parse_direction(value: &str) -> DbResult<Direction> {
    match value {
        "in" => Ok(Direction::In),
        "out" => Ok(Direction::Out),
        other => Err(DbError::corrupt("direction", other)),
    }
}

fn parse_author(value: &str) -> DbResult<Author> {
    match value {
        "contact" => Ok(Author::Contact),
        "assistant" => Ok(Author::Assistant),
        "human" => Ok(Author::Human),
        other => Err(DbError::corrupt("author", other)),
    }
}

fn parse_kind(value: &str) -> DbResult<MessageKind> {
    MessageKind::parse(value).ok_or_else(|| DbError::corrupt("message kind", value))
}
