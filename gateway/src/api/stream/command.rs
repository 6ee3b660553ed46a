//! Dashboard commands: parsing a client's frame and carrying it out through the engine, the
//! same way as the REST endpoints do.
//!
//! `{"type":"reply","conversation","text"}`, `{"type":"takeover","conversation"}`,
//! `{"type":"release","conversation"}` and `{"type":"ping"}`, each with an optional `ref` that
//! the answer echoes: `{"type":"ack","ref"}` (a reply's ack adds the new message's `id`,
//! takeover and release add the conversation's `state`) or
//! `{"type":"error","ref","code","message"}`.
//!
//! Error codes: `invalid_json`, `invalid_command` (a field is missing or of the wrong type),
//! `unknown_type`, `invalid_conversation`, `unsupported_frame` (binary), `busy` (too many
//! commands running), and those of the REST API for what the engine refuses (`invalid_field`,
//! `not_found`, `conflict`, `unavailable`, `internal`).

use axum::extract::ws::Utf8Bytes;
use engine::{ContactId, TenantId};
use serde_json::{Map, Value, json};

use crate::app::AppState;
use crate::error::ApiError;

#[derive(Debug)]
enum Command {
    Reply { contact: ContactId, text: String },
    Takeover { contact: ContactId },
    Release { contact: ContactId },
    Ping,
}

impl Command {
    fn kind(&self) -> &'static str {
        match self {
            Self::Reply { .. } => "reply",
            Self::Takeover { .. } => "takeover",
            Self::Release { .. } => "release",
            Self::Ping => "ping",
        }
    }
}

/// A parsed command and the client's `ref`.
#[derive(Debug)]
pub(super) struct Request {
    reference: Option<Value>,
    command: Command,
}

impl Request {
    /// Answered at once, without the engine.
    pub(super) fn is_immediate(&self) -> bool {
        matches!(self.command, Command::Ping)
    }
}

/// The frame answering one command, and its labels for `conversa_dashboard_commands_total`.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) kind: &'static str,
    pub(super) outcome: &'static str,
    pub(super) frame: Utf8Bytes,
}

impl Answer {
    fn ack(kind: &'static str, reference: Option<Value>, extra: Option<(&str, Value)>) -> Self {
        let mut frame = Map::new();
        frame.insert("type".into(), "ack".into());
        if let Some(r) = reference {
            frame.insert("ref".into(), r);
        }
        if let Some((key, value)) = extra {
            frame.insert(key.into(), value);
        }
        Self {
            kind,
            outcome: "ok",
            frame: Value::Object(frame).to_string().into(),
        }
    }

    fn error(
        kind: &'static str,
        reference: Option<Value>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        let mut frame = Map::new();
        frame.insert("type".into(), "error".into());
        if let Some(r) = reference {
            frame.insert("ref".into(), r);
        }
        frame.insert("code".into(), code.into());
        frame.insert("message".into(), message.into().into());
        Self {
            kind,
            outcome: code,
            frame: Value::Object(frame).to_string().into(),
        }
    }

    pub(super) fn ok(request: &Request) -> Self {
        Self::ack(request.command.kind(), request.reference.clone(), None)
    }

    pub(super) fn busy() -> Self {
        Self::error(
            "invalid",
            None,
            "busy",
            "too many commands are running on this connection; wait for their answers",
        )
    }

    pub(super) fn unsupported_frame() -> Self {
        Self::error(
            "invalid",
            None,
            "unsupported_frame",
            "commands are JSON text frames",
        )
    }
}

/// Parses one text frame into a command, or the error to answer.
pub(super) fn parse(text: &str) -> Result<Request, Answer> {
    let Ok(Value::Object(mut frame)) = serde_json::from_str::<Value>(text) else {
        return Err(Answer::error(
            "invalid",
            None,
            "invalid_json",
            "a command is one JSON object",
        ));
    };
    let reference = frame.remove("ref").filter(|r| !r.is_null());
    let invalid =
        |code, message: String| Answer::error("invalid", reference.clone(), code, message);
    let kind = match frame.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => {
            return Err(invalid(
                "invalid_command",
                "type: required, a string".into(),
            ));
        }
    };
    let contact = || -> Result<ContactId, Answer> {
        let Some(Value::String(raw)) = frame.get("conversation") else {
            return Err(invalid(
                "invalid_command",
                "conversation: required, the contact's number as a string".into(),
            ));
        };
        ContactId::parse(raw).map_err(|_| {
            invalid(
                "invalid_conversation",
                "conversation: a contact is a phone number in E.164 form, 8 to 15 digits".into(),
            )
        })
    };
    let command = match kind {
        "reply" => {
            let contact = contact()?;
            let Some(Value::String(text)) = frame.get("text") else {
                return Err(invalid(
                    "invalid_command",
                    "text: required, a string".into(),
                ));
            };
            Command::Reply {
                contact,
                text: text.clone(),
            }
        }
        "takeover" => Command::Takeover {
            contact: contact()?,
        },
        "release" => Command::Release {
            contact: contact()?,
        },
        "ping" => Command::Ping,
        other => {
            return Err(invalid(
                "unknown_type",
                format!(
                    "unknown command type {other:?}; expected reply, takeover, release or ping"
                ),
            ));
        }
    };
    Ok(Request { reference, command })
}

/// Carries out a command for `tenant` and builds its answer.
pub(super) async fn execute(app: &AppState, tenant: &TenantId, request: Request) -> Answer {
    let Request { reference, command } = request;
    let kind = command.kind();
    let result = match command {
        Command::Reply { contact, text } => app
            .engine
            .human_reply(tenant, &contact, text)
            .await
            .map(|m| ("id", json!(m.id))),
        Command::Takeover { contact } => app
            .engine
            .takeover(tenant, &contact)
            .await
            .map(|c| ("state", json!(c.state))),
        Command::Release { contact } => app
            .engine
            .release(tenant, &contact)
            .await
            .map(|c| ("state", json!(c.state))),
        Command::Ping => return Answer::ack(kind, reference, None),
    };
    match result {
        Ok(extra) => Answer::ack(kind, reference, Some(extra)),
        Err(e) => {
            let e = ApiError::from(e);
            Answer::error(kind, reference, e.code, e.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn rejected(text: &str) -> Value {
        let answer = parse(text).unwrap_err();
        serde_json::from_str(&answer.frame).unwrap()
    }

    #[test]
    fn commands_parse_with_their_ref() {
        let r = parse(r#"{"type":"reply","conversation":"+55 11 99999-9999","text":"Oi","ref":7}"#)
            .unwrap();
        assert_eq!(r.reference, Some(json!(7)));
        assert!(matches!(r.command, Command::Reply { ref contact, ref text }
            if contact.as_str() == "5511999999999" && text == "Oi"));
        let r = parse(r#"{"type":"takeover","conversation":"5511999999999"}"#).unwrap();
        assert!(r.reference.is_none() && matches!(r.command, Command::Takeover { .. }));
        assert!(
            parse(r#"{"type":"ping","ref":"a"}"#)
                .unwrap()
                .is_immediate()
        );
    }

    #[test]
    fn bad_frames_get_a_code_and_keep_the_ref() {
        assert_eq!(rejected("{nope")["code"], "invalid_json");
        assert_eq!(rejected("[1]")["code"], "invalid_json");
        let e = rejected(r#"{"type":"dance","ref":"x1"}"#);
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_str()),
            (Some("unknown_type"), Some("x1"))
        );
        assert_eq!(
            rejected(r#"{"conversation":"5511999999999"}"#)["code"],
            "invalid_command"
        );
        assert_eq!(
            rejected(r#"{"type":"reply","conversation":"5511999999999"}"#)["code"],
            "invalid_command"
        );
        assert_eq!(
            rejected(r#"{"type":"release","conversation":"abc"}"#)["code"],
            "invalid_conversation"
        );
        assert_eq!(
            rejected(r#"{"type":"takeover","conversation":5511999999999}"#)["code"],
            "invalid_command"
        );
        let e = rejected(r#"{"type":"takeover"}"#);
        assert_eq!(e["type"], "error");
        assert!(e.get("ref").is_none());
        assert!(e["message"].as_str().unwrap().starts_with("conversation"));
    }
}
