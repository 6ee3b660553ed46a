//! JSON views of engine types, as the API returns them (times in RFC 3339).

use engine::conversation::Conversation;
use engine::message::StoredMessage;
use serde_json::{Value, json};

use crate::util::rfc3339;

pub fn conversation(c: &Conversation) -> Value {
    json!({
        "contact": c.contact,
        "state": c.state,
        "reason": c.reason,
        "updated_at": rfc3339(c.updated_at),
        "last_message_at": c.last_message_at.map(rfc3339),
        "human_deadline": c.human_deadline.map(rfc3339),
        "human_answered": c.human_answered,
    })
}

pub fn message(m: &StoredMessage) -> Value {
    let mut view = json!({
        "id": m.id,
        "contact": m.contact,
        "direction": m.direction,
        "author": m.author,
        "kind": m.kind,
        "text": m.text,
        "status": m.status,
        "provider_id": m.provider_id,
        "at": rfc3339(m.at),
    });
    // Edited or deleted by its author: `"amended":{"change":"edited"|"revoked","at"}`.
    if let Some(a) = m.amended {
        view["amended"] = json!({"change": a.change, "at": rfc3339(a.at)});
    }
    view
}
