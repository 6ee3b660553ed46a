//! Messages as the engine sees them, whatever provider they came through.

use serde::{Deserialize, Serialize};

use crate::ids::{ContactId, MessageId, TenantId};
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Author {
    /// The customer.
    Contact,
    /// Conversa's assistant.
    Assistant,
    /// A human operator of the business (console, API, or the business phone).
    Human,
}

/// What a message carries. Text and captions are answerable; the rest is recorded and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Text,
    Image,
    Video,
    Audio,
    Document,
    Sticker,
    Reaction,
    Location,
    Contact,
    Interactive,
    Unsupported,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Image => "image",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::Document => "document",
            Self::Sticker => "sticker",
            Self::Reaction => "reaction",
            Self::Location => "location",
            Self::Contact => "contact",
            Self::Interactive => "interactive",
            Self::Unsupported => "unsupported",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => Self::Text,
            "image" => Self::Image,
            "video" => Self::Video,
            "audio" => Self::Audio,
            "document" => Self::Document,
            "sticker" => Self::Sticker,
            "reaction" => Self::Reaction,
            "location" => Self::Location,
            "contact" => Self::Contact,
            "interactive" => Self::Interactive,
            "unsupported" => Self::Unsupported,
            _ => return None,
        })
    }
}

/// Delivery of an outbound message, as the provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Stored, not yet accepted by the provider.
    Pending,
    Sent,
    Delivered,
    Read,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// Statuses only move forward (`read` implies `delivered`); `failed` is final.
    pub fn advances_to(self, next: DeliveryStatus) -> bool {
        self != DeliveryStatus::Failed && (next == DeliveryStatus::Failed || next > self)
    }
}

/// One message of a conversation's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: MessageId,
    pub tenant: TenantId,
    pub contact: ContactId,
    pub direction: Direction,
    pub author: Author,
    pub kind: MessageKind,
    /// The text, or the caption of media; empty for media without caption.
    pub text: String,
    /// The provider's id of this message, once known.
    pub provider_id: Option<String>,
    pub at: Timestamp,
    /// Only for outbound messages.
    pub status: Option<DeliveryStatus>,
    /// When the message disappears from history (`history_ttl_days` after `at`).
    pub expires_at: Timestamp,
    /// Set when its author edited or deleted it after it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amended: Option<Amended>,
}

/// How far back a provider's edit or deletion can reach: WhatsApp allows edits for 15 minutes and
/// "delete for everyone" for about two and a half days; older messages are not looked up.
pub const AMEND_LOOKBACK_DAYS: f64 = 3.0;

/// A change its author made to a recorded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Amendment {
    /// The new text replaces the old one.
    Edit(String),
    /// The author deleted it for everyone: the text is removed from history.
    Revoke,
}

/// What happened to a stored message after it was recorded, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amended {
    pub change: Change,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Edited,
    Revoked,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edited => "edited",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "edited" => Some(Self::Edited),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

impl StoredMessage {
    /// Applies `amendment` made at `at`; `false` (and no change) when the message was already
    /// deleted, since nothing can be edited or deleted after that.
    pub fn amend(&mut self, amendment: &Amendment, at: Timestamp) -> bool {
        if matches!(
            self.amended,
            Some(Amended {
                change: Change::Revoked,
                ..
            })
        ) {
            return false;
        }
        let change = match amendment {
            Amendment::Edit(text) => {
                self.text = text.clone();
                Change::Edited
            }
            Amendment::Revoke => {
                self.text.clear();
                Change::Revoked
            }
        };
        self.amended = Some(Amended { change, at });
        true
    }
}

impl StoredMessage {
    /// A message whose text can start or join a turn of the assistant.
    pub fn is_answerable(&self) -> bool {
        self.direction == Direction::In
            && self.author == Author::Contact
            && self.kind != MessageKind::Reaction
            && !self.text.trim().is_empty()
    }
}

/// Why an inbound item goes through the inbox to the conversation actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxKind {
    /// A customer message with text: joins the conversation's next turn.
    CustomerMessage,
    /// The business typed on its own phone: a human took over.
    PhoneReply,
}

impl InboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CustomerMessage => "customer_message",
            Self::PhoneReply => "phone_reply",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "customer_message" => Some(Self::CustomerMessage),
            "phone_reply" => Some(Self::PhoneReply),
            _ => None,
        }
    }
}

/// A durable inbox entry: an accepted inbound event whose effects are not stored yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// Store-assigned, increasing.
    pub seq: u64,
    pub kind: InboxKind,
    pub message: StoredMessage,
}

/// What the gateway asks the store to record for one inbound provider event.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestItem {
    /// Provider-scoped id used for dedupe (for example `evolution:<remoteJid>:<id>`).
    pub dedupe_key: String,
    pub message: StoredMessage,
    /// `Some` when the message must reach the conversation actor.
    pub inbox: Option<InboxKind>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    /// Recorded; `Some` is the inbox entry to dispatch.
    Recorded(Option<InboxEntry>),
    /// Seen before: nothing was written.
    Duplicate,
}

/// A send that is committed and waits for (or is being retried against) the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxItem {
    pub seq: u64,
    pub tenant: TenantId,
    pub contact: ContactId,
    pub message_id: MessageId,
    pub text: String,
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::DeliveryStatus::*;

    #[test]
    fn delivery_only_moves_forward() {
        assert!(Pending.advances_to(Sent));
        assert!(Sent.advances_to(Read));
        assert!(!Read.advances_to(Delivered));
        assert!(Delivered.advances_to(Failed));
        assert!(!Failed.advances_to(Read));
    }
}
