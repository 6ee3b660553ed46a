//! Evolution webhook bodies → [`ProviderEvent`]s.
//!
//! Bodies are read as an untyped [`serde_json::Value`] (serde_json's recursion limit of 128 stays on)
//! and picked apart by hand, because Evolution's shapes drift between builds: `data` is usually an
//! object but may be an array, timestamps are numbers, numeric strings or `{low,high}` longs, and
//! `data.message` carries sibling keys next to its content. Binary protobuf fields are never read.

use engine::message::{DeliveryStatus, MessageKind};
use engine::{ContactId, Timestamp};
use serde_json::{Map, Value};
use tracing::debug;

use super::KIND;
use crate::providers::{IgnoreReason, InboundMessage, ParseError, ProviderEvent};

/// Wrappers whose `.message` holds the real content, unwrapped (recursively) before reading it.
const CONTAINERS: [&str; 6] = [
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "documentWithCaptionMessage",
    "editedMessage",
];

/// Unwrapping stops after this many levels; real messages nest two or three deep.
const MAX_UNWRAP_DEPTH: usize = 16;

/// Content keys of `data.message` after `conversation`, in the README's priority order: the kind each
/// gives and the path of its text inside it (empty: no text).
const CONTENT: [(&str, MessageKind, &[&str]); 16] = [
    ("extendedTextMessage", MessageKind::Text, &["text"]),
    ("imageMessage", MessageKind::Image, &["caption"]),
    ("videoMessage", MessageKind::Video, &["caption"]),
    ("ptvMessage", MessageKind::Video, &["caption"]),
    ("documentMessage", MessageKind::Document, &["caption"]),
    (
        "buttonsResponseMessage",
        MessageKind::Interactive,
        &["selectedDisplayText"],
    ),
    (
        "templateButtonReplyMessage",
        MessageKind::Interactive,
        &["selectedDisplayText"],
    ),
    ("listResponseMessage", MessageKind::Interactive, &["title"]),
    (
        "interactiveResponseMessage",
        MessageKind::Interactive,
        &["body", "text"],
    ),
    ("audioMessage", MessageKind::Audio, &[]),
    ("stickerMessage", MessageKind::Sticker, &[]),
    ("reactionMessage", MessageKind::Reaction, &["text"]),
    ("locationMessage", MessageKind::Location, &[]),
    ("liveLocationMessage", MessageKind::Location, &[]),
    ("contactMessage", MessageKind::Contact, &[]),
    ("contactsArrayMessage", MessageKind::Contact, &[]),
];

/// Latest plausible message time (9999-12-31T23:59:59Z); anything later is treated as missing.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// Parses one Evolution webhook body.
///
/// `Err` only when the body as a whole is unusable: not UTF-8, not JSON (nesting deeper than 128
/// levels included), not an object, no string `event`, or a message event whose `data` is neither an
/// object nor an array. One malformed message inside a valid envelope becomes
/// `Ignored(UnsupportedEvent)` (logged at debug) so its neighbours still count.
///
/// Event names are accepted dotted (`messages.upsert`), upper snake (`MESSAGES_UPSERT`) or kebab
/// (`messages-upsert`) case. A message whose `messageTimestamp` is missing or unreadable gets
/// `at = Timestamp(0)`: the caller replaces it with its own `now`.
pub fn parse(body: &[u8]) -> Result<Vec<ProviderEvent>, ParseError> {
    let text = std::str::from_utf8(body)
        .map_err(|error| ParseError(format!("body is not valid UTF-8: {error}")))?;
    let envelope: Value = serde_json::from_str(text)
        .map_err(|error| ParseError(format!("body is not valid JSON: {error}")))?;
    let Value::Object(envelope) = envelope else {
        return Err(ParseError("body is not a JSON object".to_owned()));
    };
    let Some(event) = envelope.get("event").and_then(Value::as_str) else {
        return Err(ParseError("body has no string `event` field".to_owned()));
    };
    let event = normalise_event_name(event);
    let data = envelope.get("data");
    match event.as_str() {
        "messages.upsert" => Ok(items(data, &event)?.into_iter().map(parse_upsert).collect()),
        // Sent through Evolution's REST API, Conversa's own replies included.
        "send.message" => Ok(items(data, &event)?
            .into_iter()
            .map(|_| ProviderEvent::Ignored(IgnoreReason::OwnEcho))
            .collect()),
        "messages.update" => Ok(items(data, &event)?.into_iter().map(parse_update).collect()),
        "messages.edited" => Ok(amendments(data, &event, parse_edited)),
        "messages.delete" => Ok(amendments(data, &event, parse_deleted)),
        "connection.update" => parse_connection(data).map(|connection| vec![connection]),
        _ => Ok(vec![ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)]),
    }
}

/// `MESSAGES_UPSERT` and `messages-upsert` → `messages.upsert`.
fn normalise_event_name(event: &str) -> String {
    event.trim().to_ascii_lowercase().replace(['_', '-'], ".")
}

/// The records of a message event: `data` itself, or each element when it is an array.
fn items<'a>(data: Option<&'a Value>, event: &str) -> Result<Vec<&'a Value>, ParseError> {
    match data {
        Some(Value::Array(elements)) => Ok(elements.iter().collect()),
        Some(object @ Value::Object(_)) => Ok(vec![object]),
        _ => Err(ParseError(format!(
            "`data` of {event} is neither an object nor an array"
        ))),
    }
}

fn malformed(problem: &'static str) -> ProviderEvent {
    debug!(
        provider = KIND,
        problem, "malformed evolution message ignored"
    );
    ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)
}

fn str_field<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

/// One `messages.upsert` record: a message in a chat, typed by the customer or on the business phone.
fn parse_upsert(item: &Value) -> ProviderEvent {
    let Some(key) = item.get("key").filter(|key| key.is_object()) else {
        return malformed("message without `key`");
    };
    let Some(remote_jid) = str_field(key, "remoteJid") else {
        return malformed("message without `key.remoteJid`");
    };
    let contact = match chat_contact(remote_jid, str_field(key, "remoteJidAlt")) {
        Ok(contact) => contact,
        Err(reason) => return ProviderEvent::Ignored(reason),
    };
    let Some(id) = str_field(key, "id").filter(|id| !id.is_empty()) else {
        return malformed("message without `key.id`");
    };
    let from_me = key.get("fromMe").and_then(Value::as_bool) == Some(true);
    // On the business's own messages `pushName` is the business (or "Você"), not the contact.
    let push_name = str_field(item, "pushName")
        .map(str::trim)
        .filter(|name| !from_me && !name.is_empty())
        .map(str::to_owned);
    let message = item.get("message").and_then(Value::as_object);
    // A revocation or an edit arrives as a protocol message about another message.
    if let Some(protocol) =
        message.and_then(|message| unwrap_containers(message).get("protocolMessage"))
        && let Some(amendment) = protocol_amendment(protocol, &contact, from_me)
    {
        return amendment;
    }
    let (kind, text) = match message {
        Some(message) => content(message),
        None => (MessageKind::Unsupported, String::new()),
    };
    ProviderEvent::Message(InboundMessage {
        dedupe_key: format!("{contact}/{id}"),
        provider_id: id.to_owned(),
        contact,
        from_me,
        push_name,
        kind,
        text,
        at: Timestamp::from_secs(unix_seconds(item.get("messageTimestamp"))),
    })
}

/// The records of `messages.edited` / `messages.delete`, each through `parse_record`; a `data` that
/// is neither an object nor an array is ignored rather than refused (nothing depends on it).
fn amendments(
    data: Option<&Value>,
    event: &str,
    parse_record: fn(&Value) -> ProviderEvent,
) -> Vec<ProviderEvent> {
    match items(data, event) {
        Ok(records) => records.into_iter().map(parse_record).collect(),
        Err(_) => vec![malformed("amendment without `data` object")],
    }
}

/// `protocolMessage` of type `REVOKE` (0) or `MESSAGE_EDIT` (14) naming the message it changes
/// in `key.id`; anything else is not an amendment.
fn protocol_amendment(
    protocol: &Value,
    contact: &ContactId,
    from_me: bool,
) -> Option<ProviderEvent> {
    let original_id = protocol
        .get("key")
        .and_then(|key| str_field(key, "id"))
        .filter(|id| !id.is_empty())?
        .to_owned();
    let kind = match protocol.get("type") {
        Some(Value::Number(number)) => number.as_i64(),
        Some(Value::String(name)) => match name.as_str() {
            "REVOKE" => Some(0),
            "MESSAGE_EDIT" => Some(14),
            _ => None,
        },
        _ => None,
    };
    match kind {
        Some(0) => Some(ProviderEvent::Revoke {
            contact: contact.clone(),
            original_id,
            from_me,
        }),
        Some(14) => Some(ProviderEvent::Edit {
            contact: contact.clone(),
            original_id,
            from_me,
            text: protocol
                .get("editedMessage")
                .and_then(Value::as_object)
                .map(|edited| content(edited).1)
                .unwrap_or_default(),
        }),
        _ => None,
    }
}

/// The chat and author of a key `{remoteJid, remoteJidAlt?, fromMe, id}`; `Err(None)` when it
/// has no `remoteJid`, else why the chat is not a person.
fn key_chat(key: &Value) -> Result<(ContactId, bool), Option<IgnoreReason>> {
    let remote_jid = str_field(key, "remoteJid").ok_or(None)?;
    let contact = chat_contact(remote_jid, str_field(key, "remoteJidAlt")).map_err(Some)?;
    Ok((
        contact,
        key.get("fromMe").and_then(Value::as_bool) == Some(true),
    ))
}

/// The event for a key whose chat is not a person (or missing).
fn not_a_person(reason: Option<IgnoreReason>) -> ProviderEvent {
    match reason {
        Some(reason) => ProviderEvent::Ignored(reason),
        None => malformed("key without `remoteJid`"),
    }
}

/// `messages.edited`: the raw protocol message `{key, type, editedMessage, timestampMs}` whose
/// `key` is the edited message (also accepted wrapped as `{protocolMessage: …}`).
fn parse_edited(item: &Value) -> ProviderEvent {
    let protocol = item.get("protocolMessage").unwrap_or(item);
    let Some(key) = protocol.get("key").filter(|key| key.is_object()) else {
        return malformed("edit without `key`");
    };
    let (contact, from_me) = match key_chat(key) {
        Ok(chat) => chat,
        Err(reason) => return not_a_person(reason),
    };
    let Some(original_id) = str_field(key, "id").filter(|id| !id.is_empty()) else {
        return malformed("edit without `key.id`");
    };
    ProviderEvent::Edit {
        contact,
        original_id: original_id.to_owned(),
        from_me,
        text: protocol
            .get("editedMessage")
            .and_then(Value::as_object)
            .map(|edited| content(edited).1)
            .unwrap_or_default(),
    }
}

/// `messages.delete`: the key of the deleted message (`data` itself, or `data.key`).
fn parse_deleted(item: &Value) -> ProviderEvent {
    let key = item
        .get("key")
        .filter(|key| key.is_object())
        .unwrap_or(item);
    let (contact, from_me) = match key_chat(key) {
        Ok(chat) => chat,
        Err(reason) => return not_a_person(reason),
    };
    let Some(original_id) = str_field(key, "id").filter(|id| !id.is_empty()) else {
        return malformed("deletion without `key.id`");
    };
    ProviderEvent::Revoke {
        contact,
        original_id: original_id.to_owned(),
        from_me,
    }
}

/// The person a chat id designates, or why the chat is not a one-to-one chat with a phone number.
fn chat_contact(remote_jid: &str, remote_jid_alt: Option<&str>) -> Result<ContactId, IgnoreReason> {
    if remote_jid.ends_with("@g.us") {
        Err(IgnoreReason::Group)
    } else if remote_jid == "status@broadcast" {
        Err(IgnoreReason::StatusBroadcast)
    } else if remote_jid.ends_with("@newsletter") {
        Err(IgnoreReason::Newsletter)
    } else if remote_jid.ends_with("@lid") {
        // A hidden id; Baileys 7 puts the phone JID beside it when it knows it. Without one, the
        // person is the hidden id itself (Evolution sends to a full `…@lid` JID).
        remote_jid_alt
            .and_then(|alt| ContactId::from_jid(alt).ok())
            .filter(|alt| !alt.is_hidden())
            .or_else(|| ContactId::from_jid(remote_jid).ok())
            .ok_or(IgnoreReason::UnknownChat)
    } else {
        ContactId::from_jid(remote_jid).map_err(|_| IgnoreReason::UnknownChat)
    }
}

/// Unix seconds from a number, a numeric string or a protobuf long `{low, high, unsigned}`;
/// 0 when missing, unreadable, negative or absurdly far in the future.
fn unix_seconds(value: Option<&Value>) -> i64 {
    let seconds = match value {
        Some(Value::Number(number)) => number.as_i64().or_else(|| {
            number
                .as_f64()
                .filter(|float| float.is_finite())
                .map(|float| float as i64)
        }),
        Some(Value::String(text)) => text.trim().parse::<i64>().ok(),
        Some(Value::Object(long)) => {
            let low = long.get("low").and_then(Value::as_i64);
            let high = long.get("high").and_then(Value::as_i64);
            match (low, high) {
                // `low` is a signed or unsigned 32-bit half; only its bits count.
                (Some(low), Some(high)) => Some(high.wrapping_shl(32) | (low & 0xFFFF_FFFF)),
                _ => None,
            }
        }
        _ => None,
    };
    seconds
        .filter(|seconds| (1..=MAX_UNIX_SECONDS).contains(seconds))
        .unwrap_or(0)
}

/// Follows wrapper containers down to the message that holds the content.
fn unwrap_containers(mut message: &Map<String, Value>) -> &Map<String, Value> {
    for _ in 0..MAX_UNWRAP_DEPTH {
        let inner = CONTAINERS
            .iter()
            .find_map(|container| message.get(*container)?.get("message")?.as_object());
        match inner {
            Some(inner) => message = inner,
            None => break,
        }
    }
    message
}

/// The kind and text of `data.message`, by its content keys (never by `messageType`, which can name
/// a wrapper). Sibling keys such as `messageContextInfo`, `base64`, `mediaUrl` or `speechToText` are
/// not content and are skipped.
fn content(message: &Map<String, Value>) -> (MessageKind, String) {
    let message = unwrap_containers(message);
    if let Some(text) = message.get("conversation").and_then(Value::as_str) {
        return (MessageKind::Text, text.to_owned());
    }
    for (key, kind, text_path) in CONTENT {
        let Some(inner) = message.get(key).filter(|inner| inner.is_object()) else {
            continue;
        };
        let text = text_path
            .iter()
            .try_fold(inner, |value, field| value.get(*field))
            .and_then(Value::as_str)
            .unwrap_or_default();
        return (kind, text.to_owned());
    }
    (MessageKind::Unsupported, String::new())
}

/// One `messages.update` record: a delivery status of a message the business sent.
fn parse_update(item: &Value) -> ProviderEvent {
    // Evolution 2.x flattens the key (`keyId`, `fromMe`); read a nested `key` too, as older builds did.
    let key = item.get("key");
    let from_me = item
        .get("fromMe")
        .or_else(|| key?.get("fromMe"))
        .and_then(Value::as_bool)
        == Some(true);
    if !from_me {
        // Acks of the customer's messages (our read receipts) are not deliveries of ours.
        return ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent);
    }
    let provider_id = str_field(item, "keyId").or_else(|| str_field(key?, "id"));
    let Some(provider_id) = provider_id.filter(|id| !id.is_empty()) else {
        return malformed("status update without `keyId`");
    };
    let Some(status) = str_field(item, "status").and_then(delivery_status) else {
        // `DELETED` (Evolution's name for an undefined status) and anything unknown.
        return ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent);
    };
    ProviderEvent::Delivery {
        provider_id: provider_id.to_owned(),
        status,
        error: (status == DeliveryStatus::Failed)
            .then(|| "evolution reported status ERROR".to_owned()),
    }
}

fn delivery_status(status: &str) -> Option<DeliveryStatus> {
    match status {
        "PENDING" => Some(DeliveryStatus::Pending),
        "SERVER_ACK" => Some(DeliveryStatus::Sent),
        "DELIVERY_ACK" => Some(DeliveryStatus::Delivered),
        "READ" | "PLAYED" => Some(DeliveryStatus::Read),
        "ERROR" => Some(DeliveryStatus::Failed),
        _ => None,
    }
}

/// `connection.update`: the instance's WhatsApp session opened or closed, with Baileys' reason code.
fn parse_connection(data: Option<&Value>) -> Result<ProviderEvent, ParseError> {
    let Some(data) = data.filter(|data| data.is_object()) else {
        return Err(ParseError(
            "`data` of connection.update is not an object".to_owned(),
        ));
    };
    let Some(state) = str_field(data, "state") else {
        return Err(ParseError(
            "connection.update has no string `data.state`".to_owned(),
        ));
    };
    let reason = match data.get("statusReason") {
        Some(Value::Number(number)) => Some(number.to_string()),
        Some(Value::String(text)) => Some(text.clone()),
        _ => None,
    };
    Ok(ProviderEvent::Connection {
        state: state.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            (
                $name,
                include_bytes!(concat!("../../../tests/fixtures/evolution/", $name)) as &[u8],
            )
        };
    }

    /// Every inbound webhook fixture; `every_inbound_fixture_is_tested` keeps this list complete.
    const INBOUND: [(&str, &[u8]); 13] = [
        fixture!("connection.update.close.json"),
        fixture!("connection.update.open.json"),
        fixture!("messages.update.delivery-ack.json"),
        fixture!("messages.update.read.json"),
        fixture!("messages.upsert.audio-ptt.json"),
        fixture!("messages.upsert.extended-text.json"),
        fixture!("messages.upsert.from-me.json"),
        fixture!("messages.upsert.group.json"),
        fixture!("messages.upsert.image-caption.json"),
        fixture!("messages.upsert.reply-quoted.json"),
        fixture!("messages.upsert.text-conversation.json"),
        fixture!("qrcode.updated.json"),
        fixture!("send.message.json"),
    ];

    const MARIA: &str = "5511999999999";

    fn message(
        contact: &str,
        id: &str,
        from_me: bool,
        push_name: Option<&str>,
        kind: MessageKind,
        text: &str,
        seconds: i64,
    ) -> ProviderEvent {
        ProviderEvent::Message(InboundMessage {
            dedupe_key: format!("{contact}/{id}"),
            provider_id: id.to_owned(),
            contact: ContactId::parse(contact).unwrap(),
            from_me,
            push_name: push_name.map(str::to_owned),
            kind,
            text: text.to_owned(),
            at: Timestamp::from_secs(seconds),
        })
    }

    fn ignored(reason: IgnoreReason) -> Vec<ProviderEvent> {
        vec![ProviderEvent::Ignored(reason)]
    }

    fn delivery(status: DeliveryStatus) -> Vec<ProviderEvent> {
        vec![ProviderEvent::Delivery {
            provider_id: "3EB0C5A277F7F9B6C5990E".to_owned(),
            status,
            error: None,
        }]
    }

    fn expected(fixture: &str) -> Vec<ProviderEvent> {
        use MessageKind::*;
        match fixture {
            "connection.update.close.json" => vec![ProviderEvent::Connection {
                state: "close".to_owned(),
                reason: Some("401".to_owned()),
            }],
            "connection.update.open.json" => vec![ProviderEvent::Connection {
                state: "open".to_owned(),
                reason: Some("200".to_owned()),
            }],
            "messages.update.delivery-ack.json" => delivery(DeliveryStatus::Delivered),
            "messages.update.read.json" => delivery(DeliveryStatus::Read),
            "messages.upsert.audio-ptt.json" => {
                vec![message(
                    MARIA,
                    "3A7C1E9B2D4F6A8C0E12",
                    false,
                    Some("Maria Silva"),
                    Audio,
                    "",
                    1_749_562_577,
                )]
            }
            "messages.upsert.extended-text.json" => vec![message(
                MARIA,
                "3A5D8E1F0B2C4A6E9D71",
                false,
                Some("Maria Silva"),
                Text,
                "Vi esse produto no site: https://loja.example.com/p/123 ainda tem?",
                1_749_562_410,
            )],
            "messages.upsert.from-me.json" => vec![message(
                MARIA,
                "E7A1C3B5D9F2048A6C1E3B5D7F9A0B2C",
                true,
                None,
                Text,
                "Oi Maria, abrimos sim, das 9h às 18h.",
                1_749_562_390,
            )],
            "messages.upsert.group.json" => ignored(IgnoreReason::Group),
            "messages.upsert.image-caption.json" => vec![message(
                MARIA,
                "B4E2D19C7A3F5E8D0C1B2A3948576A1F",
                false,
                Some("Maria Silva"),
                Image,
                "Esse modelo tem no tamanho M?",
                1_749_562_502,
            )],
            "messages.upsert.reply-quoted.json" => vec![message(
                MARIA,
                "D2C4E6A8B0F1E3D5C7A9B1D3F5E7C9A1",
                false,
                Some("Maria Silva"),
                Text,
                "Perfeito, passo aí às 10h então",
                1_749_562_811,
            )],
            "messages.upsert.text-conversation.json" => vec![message(
                MARIA,
                "A1F3C2B9E7D84F1A9C0B3D5E6F708192",
                false,
                Some("Maria Silva"),
                Text,
                "Oi, vocês abrem amanhã?",
                1_749_562_325,
            )],
            "qrcode.updated.json" => ignored(IgnoreReason::UnsupportedEvent),
            "send.message.json" => ignored(IgnoreReason::OwnEcho),
            other => panic!("no expectation for fixture {other}"),
        }
    }

    #[test]
    fn inbound_fixtures() {
        for (name, body) in INBOUND {
            assert_eq!(parse(body).unwrap(), expected(name), "{name}");
        }
    }

    #[test]
    fn every_inbound_fixture_is_tested() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/evolution");
        let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.starts_with("outbound."))
            .collect();
        let tested: BTreeSet<String> = INBOUND.iter().map(|(name, _)| (*name).to_owned()).collect();
        assert_eq!(on_disk, tested);
    }

    #[test]
    fn truncated_fixtures_never_panic() {
        for (name, body) in INBOUND {
            let complete = body.trim_ascii_end().len();
            for end in (0..complete).step_by(3) {
                assert!(parse(&body[..end]).is_err(), "{name} cut at {end}");
            }
        }
    }

    // ---- hostile and malformed bodies ----

    #[track_caller]
    fn rejected(body: &[u8], needle: &str) {
        let error = parse(body).unwrap_err();
        assert!(
            error.0.contains(needle),
            "{error} should mention {needle:?}"
        );
    }

    #[test]
    fn unusable_bodies_are_errors() {
        rejected(b"", "not valid JSON");
        rejected(b"null", "not a JSON object");
        rejected(b"[]", "not a JSON object");
        rejected(b"\"messages.upsert\"", "not a JSON object");
        rejected(b"\xff\xfe{\"event\":1}", "UTF-8");
        rejected(
            b"{\"event\":\"messages.upsert\",\"data\":{}",
            "not valid JSON",
        );
        rejected(b"{}", "`event`");
        rejected(b"{\"event\":7,\"data\":{}}", "`event`");
        rejected(
            b"{\"event\":\"messages.upsert\"}",
            "neither an object nor an array",
        );
        rejected(
            b"{\"event\":\"messages.upsert\",\"data\":\"x\"}",
            "neither an object nor an array",
        );
        rejected(
            b"{\"event\":\"messages.update\",\"data\":null}",
            "neither an object nor an array",
        );
        rejected(
            b"{\"event\":\"connection.update\",\"data\":[]}",
            "not an object",
        );
        rejected(
            b"{\"event\":\"connection.update\",\"data\":{\"statusReason\":200}}",
            "data.state",
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let depth = 10_000;
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        rejected(arrays.as_bytes(), "recursion limit");
        let inside_envelope = format!(r#"{{"event":"messages.upsert","data":{arrays}}}"#);
        rejected(inside_envelope.as_bytes(), "recursion limit");
        let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        rejected(objects.as_bytes(), "recursion limit");
    }

    #[test]
    fn wide_objects_are_fine() {
        let mut envelope = Map::new();
        envelope.insert("event".to_owned(), json!("presence.update"));
        for field in 0..10_000 {
            envelope.insert(format!("f{field}"), json!(field));
        }
        let body = serde_json::to_vec(&Value::Object(envelope)).unwrap();
        assert_eq!(
            parse(&body).unwrap(),
            ignored(IgnoreReason::UnsupportedEvent)
        );

        let mut inner = Map::new();
        for field in 0..10_000 {
            inner.insert(format!("sibling{field}"), json!({ "x": field }));
        }
        inner.insert("conversation".to_owned(), json!("oi"));
        let body = upsert(
            json!({ "remoteJid": "5511999999999@s.whatsapp.net", "id": "W1" }),
            Value::Object(inner),
        );
        assert_eq!(
            parse(&body).unwrap(),
            vec![message(
                MARIA,
                "W1",
                false,
                None,
                MessageKind::Text,
                "oi",
                1_749_562_325
            )]
        );
    }

    // ---- messages.upsert built in the tests ----

    fn upsert(key: Value, message: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "event": "messages.upsert",
            "instance": "loja-centro",
            "data": { "key": key, "message": message, "messageTimestamp": 1_749_562_325 },
        }))
        .unwrap()
    }

    fn maria_key(id: &str) -> Value {
        json!({ "remoteJid": "5511999999999@s.whatsapp.net", "fromMe": false, "id": id })
    }

    /// Parses an upsert from Maria with this `message` and returns its kind and text.
    #[track_caller]
    fn kind_and_text(message: Value) -> (MessageKind, String) {
        match parse(&upsert(maria_key("K1"), message)).unwrap().as_slice() {
            [ProviderEvent::Message(inbound)] => (inbound.kind, inbound.text.clone()),
            other => panic!("expected one message, got {other:?}"),
        }
    }

    #[track_caller]
    fn check_content(message: Value, kind: MessageKind, text: &str) {
        assert_eq!(kind_and_text(message), (kind, text.to_owned()));
    }

    #[test]
    fn wrapped_messages_are_unwrapped() {
        use MessageKind::*;
        check_content(
            json!({
                "ephemeralMessage": { "message": {
                    "viewOnceMessageV2": { "message": {
                        "imageMessage": { "caption": "olha essa", "mediaKey": { "0": 1, "1": 2 } }
                    } }
                } },
                "messageContextInfo": { "deviceListMetadataVersion": 2 }
            }),
            Image,
            "olha essa",
        );
        check_content(
            json!({ "viewOnceMessage": { "message": { "videoMessage": { "caption": "vídeo" } } } }),
            Video,
            "vídeo",
        );
        check_content(
            json!({ "viewOnceMessageV2Extension": { "message": { "audioMessage": { "ptt": true } } } }),
            Audio,
            "",
        );
        check_content(
            json!({ "documentWithCaptionMessage": { "message": {
                "documentMessage": { "caption": "segue o orçamento", "fileName": "orcamento.pdf" }
            } } }),
            Document,
            "segue o orçamento",
        );
        check_content(
            json!({ "editedMessage": { "message": { "extendedTextMessage": { "text": "corrigido" } } } }),
            Text,
            "corrigido",
        );
        check_content(
            json!({ "ephemeralMessage": { "message": { "ephemeralMessage": { "message": { "conversation": "fundo" } } } } }),
            Text,
            "fundo",
        );
    }

    #[test]
    fn kinds_and_text_priority() {
        use MessageKind::*;
        check_content(
            json!({ "conversation": "oi", "extendedTextMessage": { "text": "não" } }),
            Text,
            "oi",
        );
        check_content(
            json!({ "extendedTextMessage": { "text": "link" } }),
            Text,
            "link",
        );
        check_content(json!({ "extendedTextMessage": {} }), Text, "");
        check_content(
            json!({ "imageMessage": { "mimetype": "image/jpeg" } }),
            Image,
            "",
        );
        check_content(
            json!({ "documentMessage": { "caption": "nota" } }),
            Document,
            "nota",
        );
        check_content(
            json!({ "buttonsResponseMessage": { "selectedButtonId": "b1", "selectedDisplayText": "Sim" } }),
            Interactive,
            "Sim",
        );
        check_content(
            json!({ "templateButtonReplyMessage": { "selectedId": "t1", "selectedDisplayText": "Quero" } }),
            Interactive,
            "Quero",
        );
        check_content(
            json!({ "listResponseMessage": { "title": "Camiseta M", "singleSelectReply": { "selectedRowId": "r1" } } }),
            Interactive,
            "Camiseta M",
        );
        check_content(
            json!({ "stickerMessage": { "isAnimated": false } }),
            Sticker,
            "",
        );
        // The emoji, as WAHA and Meta give it; a removed reaction has none.
        check_content(
            json!({ "reactionMessage": { "key": { "id": "X" }, "text": "👍" } }),
            Reaction,
            "👍",
        );
        check_content(
            json!({ "reactionMessage": { "key": { "id": "X" }, "text": "" } }),
            Reaction,
            "",
        );
        check_content(
            json!({ "locationMessage": { "degreesLatitude": -23.5, "degreesLongitude": -46.6 } }),
            Location,
            "",
        );
        check_content(
            json!({ "contactMessage": { "displayName": "Ana", "vcard": "BEGIN:VCARD" } }),
            Contact,
            "",
        );
        check_content(
            json!({ "contactsArrayMessage": { "contacts": [] } }),
            Contact,
            "",
        );
        check_content(
            json!({ "pollCreationMessageV3": { "name": "?" } }),
            Unsupported,
            "",
        );
        check_content(json!({ "protocolMessage": { "type": 0 } }), Unsupported, "");
        check_content(json!({}), Unsupported, "");
        // Siblings are not content, whatever order they come in.
        check_content(
            json!({
                "base64": "T2dnUw==",
                "mediaUrl": "https://s3.example.com/a.ogg",
                "speechToText": "transcrição",
                "messageContextInfo": {},
                "audioMessage": { "seconds": 3 }
            }),
            Audio,
            "",
        );
        // `messageType` names a wrapper here; it is not what decides.
        let body = serde_json::to_vec(&json!({
            "event": "messages.upsert",
            "data": {
                "key": maria_key("K2"),
                "messageType": "ephemeralMessage",
                "message": { "ephemeralMessage": { "message": { "conversation": "tchau" } } }
            }
        }))
        .unwrap();
        assert_eq!(
            parse(&body).unwrap(),
            vec![message(MARIA, "K2", false, None, Text, "tchau", 0)]
        );
    }

    #[test]
    fn message_without_content_is_unsupported() {
        let body = br#"{"event":"messages.upsert","data":{"key":{"remoteJid":"5511999999999@s.whatsapp.net","id":"N1"}}}"#;
        assert_eq!(
            parse(body).unwrap(),
            vec![message(
                MARIA,
                "N1",
                false,
                None,
                MessageKind::Unsupported,
                "",
                0
            )]
        );
    }

    #[test]
    fn malformed_messages_are_ignored_not_errors() {
        let unsupported = ignored(IgnoreReason::UnsupportedEvent);
        let no_key = br#"{"event":"messages.upsert","data":{"message":{"conversation":"oi"}}}"#;
        assert_eq!(parse(no_key).unwrap(), unsupported);
        let key_not_object =
            br#"{"event":"messages.upsert","data":{"key":"x","message":{"conversation":"oi"}}}"#;
        assert_eq!(parse(key_not_object).unwrap(), unsupported);
        let no_jid = upsert(json!({ "id": "X" }), json!({ "conversation": "oi" }));
        assert_eq!(parse(&no_jid).unwrap(), unsupported);
        let no_id = upsert(
            json!({ "remoteJid": "5511999999999@s.whatsapp.net" }),
            json!({ "conversation": "oi" }),
        );
        assert_eq!(parse(&no_id).unwrap(), unsupported);
        let empty_id = upsert(
            json!({ "remoteJid": "5511999999999@s.whatsapp.net", "id": "" }),
            json!({}),
        );
        assert_eq!(parse(&empty_id).unwrap(), unsupported);
        let not_an_object = br#"{"event":"messages.upsert","data":[42]}"#;
        assert_eq!(parse(not_an_object).unwrap(), unsupported);
    }

    #[test]
    fn data_arrays_give_one_event_per_element() {
        let body = serde_json::to_vec(&json!({
            "event": "messages.upsert",
            "data": [
                { "key": maria_key("A1"), "message": { "conversation": "um" }, "messageTimestamp": 10 },
                { "message": { "conversation": "sem key" } },
                { "key": maria_key("A2"), "message": { "conversation": "dois" }, "messageTimestamp": 11 }
            ]
        }))
        .unwrap();
        assert_eq!(
            parse(&body).unwrap(),
            vec![
                message(MARIA, "A1", false, None, MessageKind::Text, "um", 10),
                ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent),
                message(MARIA, "A2", false, None, MessageKind::Text, "dois", 11),
            ]
        );
        assert_eq!(
            parse(br#"{"event":"messages.upsert","data":[]}"#).unwrap(),
            vec![]
        );
    }

    #[track_caller]
    fn chat(key: Value) -> Result<(String, String), IgnoreReason> {
        match parse(&upsert(key, json!({ "conversation": "oi" })))
            .unwrap()
            .as_slice()
        {
            [ProviderEvent::Message(inbound)] => {
                Ok((inbound.contact.to_string(), inbound.dedupe_key.clone()))
            }
            [ProviderEvent::Ignored(reason)] => Err(*reason),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn chat_ids() {
        let maria = Ok((MARIA.to_owned(), format!("{MARIA}/C1")));
        assert_eq!(
            chat(json!({ "remoteJid": "5511999999999@s.whatsapp.net", "id": "C1" })),
            maria
        );
        assert_eq!(
            chat(json!({ "remoteJid": "5511999999999:3@s.whatsapp.net", "id": "C1" })),
            maria
        );
        assert_eq!(
            chat(json!({ "remoteJid": "5511999999999@c.us", "id": "C1" })),
            maria
        );
        assert_eq!(
            chat(json!({
                "remoteJid": "123456789012345@lid",
                "remoteJidAlt": "5511999999999@s.whatsapp.net",
                "addressingMode": "lid",
                "id": "C1"
            })),
            maria
        );
        let hidden = Ok((
            "123456789012345@lid".to_owned(),
            "123456789012345@lid/C1".to_owned(),
        ));
        assert_eq!(
            chat(json!({ "remoteJid": "123456789012345@lid", "id": "C1" })),
            hidden
        );
        assert_eq!(
            chat(
                json!({ "remoteJid": "123456789012345@lid", "remoteJidAlt": "987654321098765@lid", "id": "C1" })
            ),
            hidden
        );
        assert_eq!(
            chat(json!({ "remoteJid": "123456789012345@lid", "remoteJidAlt": null, "id": "C1" })),
            hidden
        );
        assert_eq!(
            chat(json!({ "remoteJid": "120363025246125486@g.us", "id": "C1" })),
            Err(IgnoreReason::Group)
        );
        assert_eq!(
            chat(json!({ "remoteJid": "status@broadcast", "id": "C1" })),
            Err(IgnoreReason::StatusBroadcast)
        );
        assert_eq!(
            chat(json!({ "remoteJid": "120363111111111111@newsletter", "id": "C1" })),
            Err(IgnoreReason::Newsletter)
        );
        assert_eq!(
            chat(json!({ "remoteJid": "1234567890@broadcast", "id": "C1" })),
            Err(IgnoreReason::UnknownChat)
        );
        assert_eq!(
            chat(json!({ "remoteJid": "abc@s.whatsapp.net", "id": "C1" })),
            Err(IgnoreReason::UnknownChat)
        );
        assert_eq!(
            chat(json!({ "remoteJid": "", "id": "C1" })),
            Err(IgnoreReason::UnknownChat)
        );
    }

    #[test]
    fn from_me_needs_a_literal_true() {
        let from_me = |value: Value| match parse(&upsert(
            json!({ "remoteJid": "5511999999999@s.whatsapp.net", "id": "F1", "fromMe": value }),
            json!({ "conversation": "oi" }),
        ))
        .unwrap()
        .as_slice()
        {
            [ProviderEvent::Message(inbound)] => inbound.from_me,
            other => panic!("unexpected {other:?}"),
        };
        assert!(from_me(json!(true)));
        assert!(!from_me(json!(false)));
        assert!(!from_me(json!("true")));
        assert!(!from_me(json!(null)));
    }

    #[test]
    fn timestamps_in_every_shape() {
        let seconds = |value: Value| unix_seconds(Some(&value));
        assert_eq!(seconds(json!(1_749_562_325)), 1_749_562_325);
        assert_eq!(seconds(json!(1_749_562_325.0)), 1_749_562_325);
        assert_eq!(seconds(json!("1749562325")), 1_749_562_325);
        assert_eq!(
            seconds(json!({ "low": 1_749_562_325, "high": 0, "unsigned": false })),
            1_749_562_325
        );
        // A JS Long stores the low half as a signed int: 3_000_000_000 arrives as -1_294_967_296.
        assert_eq!(
            seconds(json!({ "low": -1_294_967_296, "high": 0, "unsigned": true })),
            3_000_000_000
        );
        assert_eq!(seconds(json!({ "low": 1, "high": 1 })), (1 << 32) + 1);
        assert_eq!(seconds(json!({ "low": 1 })), 0);
        assert_eq!(seconds(json!("amanhã")), 0);
        assert_eq!(seconds(json!(-5)), 0);
        assert_eq!(seconds(json!(0)), 0);
        assert_eq!(seconds(json!(1e300)), 0);
        assert_eq!(seconds(json!(u64::MAX)), 0);
        assert_eq!(seconds(json!(null)), 0);
        assert_eq!(seconds(json!([1])), 0);
        assert_eq!(unix_seconds(None), 0);
    }

    #[test]
    fn event_names_in_every_case() {
        let (_, text_conversation) = fixture!("messages.upsert.text-conversation.json");
        let dotted = parse(text_conversation).unwrap();
        for name in ["MESSAGES_UPSERT", "messages-upsert", "Messages.Upsert"] {
            let mut envelope: Value = serde_json::from_slice(text_conversation).unwrap();
            envelope["event"] = json!(name);
            assert_eq!(
                parse(&serde_json::to_vec(&envelope).unwrap()).unwrap(),
                dotted,
                "{name}"
            );
        }
        for name in [
            "presence.update",
            "chats.upsert",
            "contacts.update",
            "messages.edited",
            "logout.instance",
            "",
        ] {
            let body = serde_json::to_vec(&json!({ "event": name, "data": {} })).unwrap();
            assert_eq!(
                parse(&body).unwrap(),
                ignored(IgnoreReason::UnsupportedEvent),
                "{name}"
            );
        }
        let echo = br#"{"event":"SEND_MESSAGE","data":[{},{}]}"#;
        assert_eq!(
            parse(echo).unwrap(),
            vec![ProviderEvent::Ignored(IgnoreReason::OwnEcho); 2]
        );
    }

    #[track_caller]
    fn update(data: Value) -> Vec<ProviderEvent> {
        parse(&serde_json::to_vec(&json!({ "event": "messages.update", "data": data })).unwrap())
            .unwrap()
    }

    #[test]
    fn delivery_statuses() {
        let status = |name: &str| {
            update(json!({ "keyId": "3EB0C5A277F7F9B6C5990E", "fromMe": true, "status": name }))
        };
        assert_eq!(status("PENDING"), delivery(DeliveryStatus::Pending));
        assert_eq!(status("SERVER_ACK"), delivery(DeliveryStatus::Sent));
        assert_eq!(status("DELIVERY_ACK"), delivery(DeliveryStatus::Delivered));
        assert_eq!(status("READ"), delivery(DeliveryStatus::Read));
        assert_eq!(status("PLAYED"), delivery(DeliveryStatus::Read));
        assert_eq!(
            status("ERROR"),
            vec![ProviderEvent::Delivery {
                provider_id: "3EB0C5A277F7F9B6C5990E".to_owned(),
                status: DeliveryStatus::Failed,
                error: Some("evolution reported status ERROR".to_owned()),
            }]
        );
        assert_eq!(status("DELETED"), ignored(IgnoreReason::UnsupportedEvent));
        assert_eq!(status("read"), ignored(IgnoreReason::UnsupportedEvent));
    }

    #[test]
    fn delivery_of_others_or_malformed_is_ignored() {
        let unsupported = ignored(IgnoreReason::UnsupportedEvent);
        assert_eq!(
            update(json!({ "keyId": "X", "fromMe": false, "status": "READ" })),
            unsupported
        );
        assert_eq!(
            update(json!({ "keyId": "X", "status": "READ" })),
            unsupported
        );
        assert_eq!(
            update(json!({ "fromMe": true, "status": "READ" })),
            unsupported
        );
        assert_eq!(
            update(json!({ "keyId": "", "fromMe": true, "status": "READ" })),
            unsupported
        );
        assert_eq!(update(json!({ "keyId": "X", "fromMe": true })), unsupported);
        // An older nested key, and an array of updates.
        assert_eq!(
            update(json!([
                { "key": { "id": "3EB0C5A277F7F9B6C5990E", "fromMe": true }, "status": "READ" },
                { "keyId": "Y", "fromMe": false, "status": "READ" }
            ])),
            vec![
                delivery(DeliveryStatus::Read)[0].clone(),
                unsupported[0].clone()
            ]
        );
    }

    #[test]
    fn connection_reasons() {
        let connection = |data: Value| {
            parse(
                &serde_json::to_vec(&json!({ "event": "CONNECTION_UPDATE", "data": data }))
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(
            connection(json!({ "state": "connecting" })),
            vec![ProviderEvent::Connection {
                state: "connecting".to_owned(),
                reason: None
            }]
        );
        assert_eq!(
            connection(json!({ "state": "refused", "statusReason": "428" })),
            vec![ProviderEvent::Connection {
                state: "refused".to_owned(),
                reason: Some("428".to_owned())
            }]
        );
    }

    #[test]
    fn edits_and_revocations_name_the_original_message() {
        let maria = ContactId::parse(MARIA).unwrap();
        let edit = |from_me: bool, text: &str| ProviderEvent::Edit {
            contact: maria.clone(),
            original_id: "ORIG1".to_owned(),
            from_me,
            text: text.to_owned(),
        };
        let revoke = |from_me: bool| ProviderEvent::Revoke {
            contact: maria.clone(),
            original_id: "ORIG1".to_owned(),
            from_me,
        };
        let event = |name: &str, data: Value| {
            parse(&serde_json::to_vec(&json!({ "event": name, "data": data })).unwrap()).unwrap()
        };
        // `messages.edited`: the raw protocol message, enum and timestamp as strings.
        assert_eq!(
            event(
                "messages.edited",
                json!({
                    "key": { "remoteJid": "5511999999999@s.whatsapp.net", "fromMe": false, "id": "ORIG1" },
                    "type": "MESSAGE_EDIT",
                    "editedMessage": { "conversation": "Oi, abrem amanhã cedo?" },
                    "timestampMs": "1749562900000"
                })
            ),
            vec![edit(false, "Oi, abrem amanhã cedo?")]
        );
        assert_eq!(
            event(
                "MESSAGES_EDITED",
                json!({ "protocolMessage": {
                    "key": { "remoteJid": "5511999999999@s.whatsapp.net", "fromMe": true, "id": "ORIG1" },
                    "editedMessage": { "imageMessage": { "caption": "nova legenda" } }
                } })
            ),
            vec![edit(true, "nova legenda")]
        );
        assert_eq!(
            event(
                "messages.edited",
                json!({ "key": { "remoteJid": "120363025246125486@g.us", "id": "X" } })
            ),
            ignored(IgnoreReason::Group)
        );
        assert_eq!(
            event("messages.edited", json!(7)),
            ignored(IgnoreReason::UnsupportedEvent)
        );
        // `messages.delete`: the deleted message's key.
        assert_eq!(
            event(
                "messages.delete",
                json!({ "remoteJid": "5511999999999@s.whatsapp.net", "fromMe": false, "id": "ORIG1" })
            ),
            vec![revoke(false)]
        );
        assert_eq!(
            event(
                "messages.delete",
                json!({ "key": { "remoteJid": "5511999999999@s.whatsapp.net", "id": "" } })
            ),
            ignored(IgnoreReason::UnsupportedEvent)
        );
        // A protocol message inside an upsert: revoke (0) or edit (14) of `key.id`.
        let protocol = |protocol: Value| {
            parse(&upsert(
                maria_key("P1"),
                json!({ "protocolMessage": protocol }),
            ))
            .unwrap()
        };
        assert_eq!(
            protocol(json!({ "type": 0, "key": { "id": "ORIG1" } })),
            vec![revoke(false)]
        );
        assert_eq!(
            protocol(json!({ "type": "REVOKE", "key": { "id": "ORIG1" } })),
            vec![revoke(false)]
        );
        assert_eq!(
            protocol(json!({ "type": 14, "key": { "id": "ORIG1" },
                             "editedMessage": { "extendedTextMessage": { "text": "corrigido" } } })),
            vec![edit(false, "corrigido")]
        );
        assert_eq!(
            parse(&upsert(
                maria_key("P2"),
                json!({ "ephemeralMessage": { "message": { "protocolMessage": { "type": 0, "key": { "id": "ORIG1" } } } } })
            ))
            .unwrap(),
            vec![revoke(false)]
        );
    }
}
