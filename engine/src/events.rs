//! What dashboards are told (contract §4). The publisher adds `seq`, `conversation` and `at`.

use serde::Serialize;

use crate::conversation::{ConversationState, Reason};
use crate::message::{Author, DeliveryStatus, Direction, MessageKind};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    Message {
        id: String,
        direction: Direction,
        author: Author,
        kind: MessageKind,
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<DeliveryStatus>,
    },
    State {
        from: ConversationState,
        to: ConversationState,
        reason: Reason,
    },
    Delivery {
        id: String,
        status: DeliveryStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Typing {
        on: bool,
    },
    /// Its author edited (`text` is the new text) or deleted (`text` is empty) message `id`.
    Amended {
        id: String,
        change: crate::message::Change,
        text: String,
    },
}

impl EventBody {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Message { .. } => "message",
            Self::State { .. } => "state",
            Self::Delivery { .. } => "delivery",
            Self::Typing { .. } => "typing",
            Self::Amended { .. } => "amended",
        }
    }
}
