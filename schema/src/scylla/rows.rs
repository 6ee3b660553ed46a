//! Rows to domain types: the tuples the statements select, and the spelling of every enum in
//! storage (the API's strings). A stored value that does not parse is an `Internal` error, never a
//! panic.

use engine::conversation::{Conversation, ConversationState, Reason};
use engine::message::{
    Amended, Author, Change, DeliveryStatus, Direction, MessageKind, StoredMessage,
};
use engine::tenant::Tenant;
use engine::{ContactId, EngineError, MessageId, TenantId, Timestamp};

use engine::ports::StoreResult;

/// `conv_get`'s columns: contact, state, reason, updated_at, last_message_at, human_deadline,
/// human_answered, version.
pub(crate) type ConversationRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<bool>,
    Option<i64>,
);

/// `message_page`'s columns: at, seq, id, direction, author, kind, text, provider_id, status,
/// expires_at.
pub(crate) type MessageRow = (
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// A conversation record and the version its compare-and-set is on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub(crate) conversation: Conversation,
    pub(crate) version: i64,
}

impl Record {
    /// What the listings sort by: the last message, else the last update.
    pub(crate) fn activity(&self) -> i64 {
        activity(&self.conversation)
    }
}

pub(crate) fn activity(c: &Conversation) -> i64 {
    c.last_message_at.unwrap_or(c.updated_at).as_millis()
}

pub(crate) fn record(tenant: &TenantId, row: ConversationRow) -> StoreResult<Record> {
    let (contact, state, reason, updated_at, last_message_at, human_deadline, answered, version) =
        row;
    let state = state.unwrap_or_default();
    Ok(Record {
        conversation: Conversation {
            tenant: tenant.clone(),
            contact: contact_id(&contact)?,
            state: ConversationState::parse(&state)
                .ok_or_else(|| bad("conversation state", &state))?,
            reason: reason
                .map(|r| Reason::parse(&r).ok_or_else(|| bad("reason", &r)))
                .transpose()?,
            updated_at: Timestamp(updated_at.unwrap_or(0)),
            last_message_at: last_message_at.map(Timestamp),
            human_deadline: human_deadline.map(Timestamp),
            human_answered: answered.unwrap_or(false),
        },
        version: version.unwrap_or(0),
    })
}

pub(crate) fn message(
    tenant: &TenantId,
    contact: &ContactId,
    row: MessageRow,
) -> StoreResult<StoredMessage> {
    let (
        at,
        _seq,
        id,
        direction,
        author,
        kind,
        text,
        provider_id,
        status,
        expires_at,
        amendment,
        amended_at,
    ) = row;
    let direction = direction.unwrap_or_default();
    let author = author.unwrap_or_default();
    let kind = kind.unwrap_or_default();
    Ok(StoredMessage {
        id: MessageId(id.unwrap_or_default()),
        tenant: tenant.clone(),
        contact: contact.clone(),
        direction: parse_direction(&direction)?,
        author: parse_author(&author)?,
        kind: MessageKind::parse(&kind).ok_or_else(|| bad("message kind", &kind))?,
        text: text.unwrap_or_default(),
        provider_id,
        at: Timestamp(at),
        status: status.as_deref().map(parse_status).transpose()?,
        expires_at: Timestamp(expires_at.unwrap_or(i64::MAX)),
        amended: match (amendment, amended_at) {
            (Some(change), Some(at)) => Some(Amended {
                change: Change::parse(&change).ok_or_else(|| bad("amendment", &change))?,
                at: Timestamp(at),
            }),
            _ => None,
        },
    })
}

pub(crate) fn tenant(body: &str) -> StoreResult<Tenant> {
    serde_json::from_str(body)
        .map_err(|e| EngineError::Internal(format!("a stored tenant cannot be read: {e}")))
}

pub(crate) fn tenant_id(value: &str) -> StoreResult<TenantId> {
    TenantId::parse(value).map_err(|_| bad("tenant id", value))
}

pub(crate) fn contact_id(value: &str) -> StoreResult<ContactId> {
    ContactId::parse(value).map_err(|_| bad("contact", value))
}

pub(crate) fn direction_str(direction: Direction) -> &'static str {
    match direction {
        Direction::In => "in",
        Direction::Out => "out",
    }
}

pub(crate) fn parse_direction(value: &str) -> StoreResult<Direction> {
    match value {
        "in" => Ok(Direction::In),
        "out" => Ok(Direction::Out),
        _ => Err(bad("direction", value)),
    }
}

pub(crate) fn author_str(author: Author) -> &'static str {
    match author {
        Author::Contact => "contact",
        Author::Assistant => "assistant",
        Author::Human => "human",
    }
}

pub(crate) fn parse_author(value: &str) -> StoreResult<Author> {
    match value {
        "contact" => Ok(Author::Contact),
        "assistant" => Ok(Author::Assistant),
        "human" => Ok(Author::Human),
        _ => Err(bad("author", value)),
    }
}

pub(crate) fn parse_status(value: &str) -> StoreResult<DeliveryStatus> {
    DeliveryStatus::parse(value).ok_or_else(|| bad("delivery status", value))
}

/// The physical TTL of a history row: from `reference` (the write's clock) to `expires_at`, plus a
/// grace (reads filter on `expires_at` exactly; the TTL only frees the disk), at least one second
/// and at most ScyllaDB's limit of 20 years.
pub(crate) fn history_ttl(expires_at: Timestamp, reference: Timestamp, grace_secs: i64) -> i32 {
    const MAX_TTL_SECS: i64 = 630_720_000;
    let millis = expires_at.as_millis().saturating_sub(reference.as_millis());
    let secs = millis.saturating_add(999).div_euclid(1000);
    i32::try_from(secs.saturating_add(grace_secs).clamp(1, MAX_TTL_SECS)).unwrap_or(1)
}

fn bad(what: &str, value: &str) -> EngineError {
    EngineError::Internal(format!("a stored {what} cannot be read: {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_ttl_rounds_up_and_is_bounded() {
        assert_eq!(history_ttl(Timestamp(1000), Timestamp(0), 60), 61);
        assert_eq!(history_ttl(Timestamp(1001), Timestamp(0), 60), 62);
        assert_eq!(history_ttl(Timestamp(1001), Timestamp(0), 0), 2);
        assert_eq!(history_ttl(Timestamp(0), Timestamp(1_000_000), 60), 1);
        assert_eq!(
            history_ttl(Timestamp(0).plus_days(30.0), Timestamp(0), 60),
            30 * 86_400 + 60
        );
        assert_eq!(
            history_ttl(Timestamp(i64::MAX), Timestamp(0), 60),
            630_720_000
        );
    }

    #[test]
    fn enums_round_trip() {
        for d in [Direction::In, Direction::Out] {
            assert_eq!(parse_direction(direction_str(d)).unwrap(), d);
        }
        for a in [Author::Contact, Author::Assistant, Author::Human] {
            assert_eq!(parse_author(author_str(a)).unwrap(), a);
        }
        assert!(parse_status("lido").is_err());
    }
}
