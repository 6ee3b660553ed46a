//! WAHA webhook bodies → [`ProviderEvent`]s.
//!
//! The envelope is `{id, timestamp, event, session, me, payload, engine, …}`; one body carries one
//! event. The payload is read by its documented fields (`id`, `from`, `to`, `fromMe`, `source`,
//! `body`, `hasMedia`, `media`, `location`, `vCards`); the engine-specific `_data` is only a hint
//! for the kind of message and the sender's name, never required.

use engine::message::{DeliveryStatus, MessageKind};
use engine::{ContactId, Timestamp};
use serde_json::{Map, Value};
use tracing::debug;

use super::{KIND, bare_message_id};
use crate::providers::{
    IgnoreReason, InboundMessage, ParseError, ProviderEvent, chat_contact, str_field, unix_seconds,
};

/// A parsed body: its events and the signed time WAHA sent it (envelope `timestamp`, unix ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub events: Vec<ProviderEvent>,
    pub sent_at: Option<Timestamp>,
}

/// Wrappers whose `.message` holds the real content in NOWEB's Baileys `_data.message`.
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

/// NOWEB content keys and the kind each gives (a hint only; `body` carries the text).
const NOWEB_KINDS: [(&str, MessageKind); 18] = [
    ("conversation", MessageKind::Text),
    ("extendedTextMessage", MessageKind::Text),
    ("imageMessage", MessageKind::Image),
    ("videoMessage", MessageKind::Video),
    ("ptvMessage", MessageKind::Video),
    ("audioMessage", MessageKind::Audio),
    ("documentMessage", MessageKind::Document),
    ("stickerMessage", MessageKind::Sticker),
    ("locationMessage", MessageKind::Location),
    ("liveLocationMessage", MessageKind::Location),
    ("contactMessage", MessageKind::Contact),
    ("contactsArrayMessage", MessageKind::Contact),
    ("buttonsResponseMessage", MessageKind::Interactive),
    ("templateButtonReplyMessage", MessageKind::Interactive),
    ("listResponseMessage", MessageKind::Interactive),
    ("interactiveResponseMessage", MessageKind::Interactive),
    ("reactionMessage", MessageKind::Reaction),
    ("pollCreationMessageV3", MessageKind::Unsupported),
];

/// Earliest plausible envelope time in unix ms (2001-09-09); smaller numbers are not milliseconds.
const MIN_ENVELOPE_MS: i64 = 1_000_000_000_000;

/// Parses one WAHA webhook body for the tenant's `session`.
///
/// See [`parse_envelope`]; this keeps only the events.
pub fn parse(body: &[u8], session: &str) -> Result<Vec<ProviderEvent>, ParseError> {
    parse_envelope(body, session).map(|envelope| envelope.events)
}

/// Parses one WAHA webhook body for the tenant's `session` (empty: any session).
///
/// `Err` only when the body as a whole is unusable: not UTF-8, not JSON (nesting deeper than 128
/// levels included), not an object, no string `event`, or a message, ack or session event whose
/// `payload` is not an object. A payload that lacks what its event needs (an id, a chat) becomes
/// `Ignored(UnsupportedEvent)`, logged at debug. A body from another session is
/// `Ignored(OtherAccount)`.
///
/// `message` and `message.any` give the same event for the same message (the store dedupes on the
/// message id, not the envelope id). An own message sent through the API (`fromMe` with
/// `source: "api"`) is `Ignored(OwnEcho)`; typed on the phone (`source: "app"`, or no `source` on
/// WAHA before 2025.3) it is a message with `from_me: true`, which the pipeline still checks
/// against the messages Conversa sent.
pub fn parse_envelope(body: &[u8], session: &str) -> Result<Envelope, ParseError> {
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
    let sent_at = envelope
        .get("timestamp")
        .and_then(Value::as_i64)
        .filter(|ms| *ms >= MIN_ENVELOPE_MS)
        .map(Timestamp::from_millis);
    if let Some(other) = envelope.get("session").and_then(Value::as_str)
        && !session.is_empty()
        && other != session
    {
        debug!(
            provider = KIND,
            session = other,
            "event of another session ignored"
        );
        return Ok(Envelope {
            events: vec![ProviderEvent::Ignored(IgnoreReason::OtherAccount)],
            sent_at,
        });
    }
    let me = envelope
        .get("me")
        .and_then(|me| me.get("id"))
        .and_then(Value::as_str);
    let payload = envelope.get("payload");
    let event = event.trim();
    let parsed = match event {
        "message" | "message.any" => parse_message(object(payload, event)?, me),
        "message.reaction" => parse_reaction(object(payload, event)?, me),
        "message.ack" => parse_ack(object(payload, event)?),
        // Acks of group messages; Conversa never writes to groups.
        "message.ack.group" => ProviderEvent::Ignored(IgnoreReason::Group),
        "message.edited" => parse_edit(object(payload, event)?, me),
        "message.revoked" => parse_revoke(object(payload, event)?, me),
        "session.status" => parse_session(object(payload, event)?)?,
        _ => ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent),
    };
    Ok(Envelope {
        events: vec![parsed],
        sent_at,
    })
}

fn object<'a>(payload: Option<&'a Value>, event: &str) -> Result<&'a Value, ParseError> {
    payload
        .filter(|payload| payload.is_object())
        .ok_or_else(|| ParseError(format!("`payload` of {event} is not an object")))
}

fn malformed(problem: &'static str) -> ProviderEvent {
    debug!(provider = KIND, problem, "malformed waha event ignored");
    ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)
}

fn is_true(value: &Value, field: &str) -> bool {
    value.get(field).and_then(Value::as_bool) == Some(true)
}

/// The id of a message payload, made bare (see [`bare_message_id`]); `None` when missing or empty.
fn message_id(payload: &Value) -> Option<String> {
    str_field(payload, "id")
        .map(bare_message_id)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

/// The chat of a message payload, per the README: a group when `from` (or, for own messages, `to`)
/// is a group; otherwise `to` for own messages (falling back to `from`, as NOWEB 2024.10 set it)
/// and `from` for the others. The business's own id is never a contact. `Err(None)`: no chat at
/// all (malformed).
fn chat_of(
    payload: &Value,
    from_me: bool,
    me: Option<&str>,
) -> Result<ContactId, Option<IgnoreReason>> {
    let from = str_field(payload, "from").filter(|jid| !jid.is_empty());
    let to = str_field(payload, "to").filter(|jid| !jid.is_empty());
    let chat = if from.is_some_and(|jid| jid.ends_with("@g.us")) {
        from
    } else if from_me {
        to.or(from)
    } else {
        from
    };
    let chat = chat.ok_or(None)?;
    if me.is_some_and(|me| me == chat) {
        return Err(Some(IgnoreReason::UnknownChat));
    }
    if chat.ends_with("@lid") {
        // A hidden id; NOWEB's raw Baileys key carries the phone JID beside it when it knows it.
        // Without one, the person is the hidden id itself (replies go to the same chat id).
        return lid_phone(payload)
            .or_else(|| ContactId::from_jid(chat).ok())
            .ok_or(Some(IgnoreReason::UnknownChat));
    }
    chat_contact(chat).map_err(Some)
}

/// The phone number behind a hidden (`@lid`) chat id: NOWEB's `_data.key.remoteJidAlt`
/// (Baileys 7) or `_data.key.senderPn` (Baileys 6.7).
fn lid_phone(payload: &Value) -> Option<ContactId> {
    let key = payload.get("_data")?.get("key")?;
    ["remoteJidAlt", "senderPn"]
        .iter()
        .filter_map(|field| str_field(key, field))
        .find_map(|jid| chat_contact(jid).ok().filter(|c| !c.is_hidden()))
}

/// The event for a payload whose chat is not a person (or missing).
fn not_a_person(reason: Option<IgnoreReason>) -> ProviderEvent {
    match reason {
        Some(reason) => ProviderEvent::Ignored(reason),
        None => malformed("message without `from`"),
    }
}

/// Own messages sent through the WAHA API (Conversa's replies) are echoes, not a human.
fn is_api_echo(payload: &Value) -> bool {
    is_true(payload, "fromMe") && str_field(payload, "source") == Some("api")
}

/// `message` / `message.any`: a message in a chat, from the customer or typed by the business.
fn parse_message(payload: &Value, me: Option<&str>) -> ProviderEvent {
    if is_api_echo(payload) {
        return ProviderEvent::Ignored(IgnoreReason::OwnEcho);
    }
    let from_me = is_true(payload, "fromMe");
    let contact = match chat_of(payload, from_me, me) {
        Ok(contact) => contact,
        Err(reason) => return not_a_person(reason),
    };
    let Some(provider_id) = message_id(payload) else {
        return malformed("message without `id`");
    };
    let (kind, text) = content(payload);
    ProviderEvent::Message(InboundMessage {
        dedupe_key: format!("{contact}/{provider_id}"),
        provider_id,
        contact,
        from_me,
        push_name: push_name(payload, from_me),
        kind,
        text,
        at: Timestamp::from_secs(unix_seconds(payload.get("timestamp"))),
    })
}

/// The sender's WhatsApp name from the engine's raw message (NOWEB `pushName`, WEBJS
/// `notifyName`); never for the business's own messages.
fn push_name(payload: &Value, from_me: bool) -> Option<String> {
    if from_me {
        return None;
    }
    let data = payload.get("_data")?;
    str_field(data, "pushName")
        .or_else(|| str_field(data, "notifyName"))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| name.chars().take(256).collect())
}

/// The kind and text of a message payload. `body` is the text or caption WAHA already resolved;
/// the kind comes from `location`, `vCards`, `hasMedia`/`media.mimetype`, then the engine's hint.
/// Locations and contacts get no text: WEBJS puts a thumbnail or a vCard in their `body`.
fn content(payload: &Value) -> (MessageKind, String) {
    let body = str_field(payload, "body").unwrap_or_default();
    if payload.get("location").is_some_and(Value::is_object) {
        return (MessageKind::Location, String::new());
    }
    if payload
        .get("vCards")
        .and_then(Value::as_array)
        .is_some_and(|cards| !cards.is_empty())
    {
        return (MessageKind::Contact, String::new());
    }
    let hint = engine_hint(payload.get("_data"));
    let has_media =
        is_true(payload, "hasMedia") || payload.get("media").is_some_and(Value::is_object);
    if has_media {
        let kind = match hint {
            Some(
                kind @ (MessageKind::Image
                | MessageKind::Video
                | MessageKind::Audio
                | MessageKind::Document
                | MessageKind::Sticker),
            ) => kind,
            _ => media_kind(
                payload
                    .get("media")
                    .and_then(|media| str_field(media, "mimetype")),
            ),
        };
        let text = match kind {
            MessageKind::Audio | MessageKind::Sticker => String::new(),
            _ => body.to_owned(),
        };
        return (kind, text);
    }
    match hint {
        Some(
            kind @ (MessageKind::Location
            | MessageKind::Contact
            | MessageKind::Audio
            | MessageKind::Sticker),
        ) => (kind, String::new()),
        Some(kind) if kind != MessageKind::Text && kind != MessageKind::Unsupported => {
            (kind, body.to_owned())
        }
        _ if !body.trim().is_empty() => (MessageKind::Text, body.to_owned()),
        Some(MessageKind::Text) => (MessageKind::Text, String::new()),
        _ => (MessageKind::Unsupported, String::new()),
    }
}

/// The kind of downloaded media by its MIME type.
fn media_kind(mimetype: Option<&str>) -> MessageKind {
    let mimetype = mimetype.unwrap_or_default().trim().to_ascii_lowercase();
    if mimetype == "image/webp" {
        MessageKind::Sticker
    } else if mimetype.starts_with("image/") {
        MessageKind::Image
    } else if mimetype.starts_with("video/") {
        MessageKind::Video
    } else if mimetype.starts_with("audio/") {
        MessageKind::Audio
    } else {
        MessageKind::Document
    }
}

/// What the engine's raw message says the kind is: WEBJS `type`, or NOWEB's first content key
/// after unwrapping containers (ephemeral, view-once, edited, document-with-caption).
fn engine_hint(data: Option<&Value>) -> Option<MessageKind> {
    let data = data?;
    if let Some(kind) = str_field(data, "type") {
        return match kind {
            "chat" => Some(MessageKind::Text),
            "image" => Some(MessageKind::Image),
            "video" => Some(MessageKind::Video),
            "audio" | "ptt" => Some(MessageKind::Audio),
            "document" => Some(MessageKind::Document),
            "sticker" => Some(MessageKind::Sticker),
            "location" => Some(MessageKind::Location),
            "vcard" | "multi_vcard" => Some(MessageKind::Contact),
            "buttons_response" | "list_response" | "template_button_reply" => {
                Some(MessageKind::Interactive)
            }
            _ => None,
        };
    }
    let message = unwrap_containers(data.get("message")?.as_object()?);
    NOWEB_KINDS
        .iter()
        .find(|(key, _)| message.contains_key(*key))
        .map(|(_, kind)| *kind)
}

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

/// `message.reaction`: `{id, from, fromMe, source, to, reaction: {text, messageId}}`. Recorded as a
/// message of kind reaction whose text is the emoji (empty when the reaction was removed).
fn parse_reaction(payload: &Value, me: Option<&str>) -> ProviderEvent {
    if is_api_echo(payload) {
        return ProviderEvent::Ignored(IgnoreReason::OwnEcho);
    }
    let from_me = is_true(payload, "fromMe");
    let contact = match chat_of(payload, from_me, me) {
        Ok(contact) => contact,
        Err(reason) => return not_a_person(reason),
    };
    let Some(provider_id) = message_id(payload) else {
        return malformed("reaction without `id`");
    };
    let emoji = payload
        .get("reaction")
        .and_then(|reaction| str_field(reaction, "text"))
        .unwrap_or_default();
    ProviderEvent::Message(InboundMessage {
        dedupe_key: format!("{contact}/{provider_id}"),
        provider_id,
        contact,
        from_me,
        push_name: None,
        kind: MessageKind::Reaction,
        text: emoji.chars().take(64).collect(),
        at: Timestamp::from_secs(unix_seconds(payload.get("timestamp"))),
    })
}

/// `message.ack`: delivery of a message the business sent. Acks of the customer's messages (our
/// own read receipts) are not deliveries of ours.
fn parse_ack(payload: &Value) -> ProviderEvent {
    if !is_true(payload, "fromMe") {
        return ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent);
    }
    let Some(provider_id) = message_id(payload) else {
        return malformed("ack without `id`");
    };
    let status = str_field(payload, "ackName")
        .and_then(ack_by_name)
        .or_else(|| {
            payload
                .get("ack")
                .and_then(Value::as_i64)
                .and_then(ack_by_number)
        });
    let Some(status) = status else {
        return ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent);
    };
    ProviderEvent::Delivery {
        provider_id,
        status,
        error: (status == DeliveryStatus::Failed).then(|| "waha reported ack ERROR".to_owned()),
    }
}

fn ack_by_name(name: &str) -> Option<DeliveryStatus> {
    match name {
        "ERROR" => Some(DeliveryStatus::Failed),
        "PENDING" => Some(DeliveryStatus::Pending),
        "SERVER" => Some(DeliveryStatus::Sent),
        "DEVICE" => Some(DeliveryStatus::Delivered),
        "READ" | "PLAYED" => Some(DeliveryStatus::Read),
        _ => None,
    }
}

fn ack_by_number(ack: i64) -> Option<DeliveryStatus> {
    match ack {
        -1 => Some(DeliveryStatus::Failed),
        0 => Some(DeliveryStatus::Pending),
        1 => Some(DeliveryStatus::Sent),
        2 => Some(DeliveryStatus::Delivered),
        3 | 4 => Some(DeliveryStatus::Read),
        _ => None,
    }
}

/// `message.edited`: the edit's own message payload, with the new text in `body` and the edited
/// message in `editedMessageId`.
fn parse_edit(payload: &Value, me: Option<&str>) -> ProviderEvent {
    if is_api_echo(payload) {
        return ProviderEvent::Ignored(IgnoreReason::OwnEcho);
    }
    let from_me = is_true(payload, "fromMe");
    let contact = match chat_of(payload, from_me, me) {
        Ok(contact) => contact,
        Err(reason) => return not_a_person(reason),
    };
    let Some(original_id) = str_field(payload, "editedMessageId")
        .map(bare_message_id)
        .filter(|id| !id.is_empty())
    else {
        return malformed("edit without `editedMessageId`");
    };
    ProviderEvent::Edit {
        contact,
        original_id: original_id.to_owned(),
        from_me,
        text: str_field(payload, "body").unwrap_or_default().to_owned(),
    }
}

/// `message.revoked`: `{after, before, revokedMessageId}`; the chat comes from `after` (the
/// revocation) or `before` (the original, when WAHA still had it).
fn parse_revoke(payload: &Value, me: Option<&str>) -> ProviderEvent {
    let Some(message) = ["after", "before"]
        .iter()
        .find_map(|field| payload.get(*field).filter(|message| message.is_object()))
    else {
        return malformed("revocation without `after` or `before`");
    };
    let from_me = is_true(message, "fromMe");
    let contact = match chat_of(message, from_me, me) {
        Ok(contact) => contact,
        Err(reason) => return not_a_person(reason),
    };
    let original_id = str_field(payload, "revokedMessageId")
        .or_else(|| {
            payload
                .get("before")
                .and_then(|before| str_field(before, "id"))
        })
        .map(bare_message_id)
        .filter(|id| !id.is_empty());
    let Some(original_id) = original_id else {
        return malformed("revocation without `revokedMessageId`");
    };
    ProviderEvent::Revoke {
        contact,
        original_id: original_id.to_owned(),
        from_me,
    }
}

/// `session.status`, normalised to Evolution's connection states; the WAHA status is the reason.
fn parse_session(payload: &Value) -> Result<ProviderEvent, ParseError> {
    let Some(status) = str_field(payload, "status") else {
        return Err(ParseError(
            "session.status has no string `payload.status`".to_owned(),
        ));
    };
    let state = match status {
        "WORKING" => "open",
        "STARTING" | "SCAN_QR_CODE" | "PASSKEY_REQUIRED" | "PASSKEY_CONFIRMATION_REQUIRED" => {
            "connecting"
        }
        "STOPPED" | "FAILED" => "close",
        _ => "unknown",
    };
    Ok(ProviderEvent::Connection {
        state: state.to_owned(),
        reason: Some(status.chars().take(64).collect()),
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
                include_bytes!(concat!("../../../tests/fixtures/waha/", $name)) as &[u8],
            )
        };
    }

    /// Every inbound webhook fixture; `every_fixture_is_tested` keeps this list complete.
    const INBOUND: [(&str, &[u8]); 9] = [
        fixture!("message.ack.read.json"),
        fixture!("message.any.incoming.json"),
        fixture!("message.group.json"),
        fixture!("message.image-caption.json"),
        fixture!("message.reply.json"),
        fixture!("message.text.noweb.json"),
        fixture!("message.text.webjs.json"),
        fixture!("session.status.scan-qr.json"),
        fixture!("session.status.working.json"),
    ];

    /// Fixtures that are not webhook bodies, and the test that covers each.
    const NOT_INBOUND: [(&str, &str); 9] = [
        ("outbound.error-401.json", "client::tests"),
        ("outbound.sendSeen.request.json", "e2e_waha"),
        ("outbound.sendText.request.json", "e2e_waha"),
        ("outbound.sendText.response.noweb.json", "client::tests"),
        ("outbound.sendText.response.webjs.json", "client::tests"),
        (
            "outbound.session-webhook-config.request.json",
            "not sent by Conversa",
        ),
        ("outbound.startTyping.request.json", "e2e_waha"),
        ("outbound.stopTyping.request.json", "e2e_waha"),
        ("webhook-signature.example.json", "signature::tests"),
    ];

    const MARIA: &str = "5511999999999";
    const SESSION: &str = "default";

    fn message(
        id: &str,
        from_me: bool,
        push_name: Option<&str>,
        kind: MessageKind,
        text: &str,
        seconds: i64,
    ) -> ProviderEvent {
        ProviderEvent::Message(InboundMessage {
            dedupe_key: format!("{MARIA}/{id}"),
            provider_id: id.to_owned(),
            contact: ContactId::parse(MARIA).unwrap(),
            from_me,
            push_name: push_name.map(str::to_owned),
            kind,
            text: text.to_owned(),
            at: Timestamp::from_secs(seconds),
        })
    }

    fn expected(fixture: &str) -> Vec<ProviderEvent> {
        use MessageKind::*;
        let maria = Some("Maria Silva");
        vec![match fixture {
            "message.ack.read.json" => ProviderEvent::Delivery {
                provider_id: "3EB0C5A277F7F9B6C5990E".to_owned(),
                status: DeliveryStatus::Read,
                error: None,
            },
            "message.any.incoming.json" | "message.text.noweb.json" => message(
                "A1F3C2B9E7D84F1A9C0B3D5E6F708192",
                false,
                maria,
                Text,
                "Oi, vocês abrem amanhã?",
                1_749_562_325,
            ),
            "message.group.json" => ProviderEvent::Ignored(IgnoreReason::Group),
            "message.image-caption.json" => message(
                "B4E2D19C7A3F5E8D0C1B2A3948576A1F",
                false,
                maria,
                Image,
                "Esse modelo tem no tamanho M?",
                1_749_562_502,
            ),
            "message.reply.json" => message(
                "D2C4E6A8B0F1E3D5C7A9B1D3F5E7C9A1",
                false,
                maria,
                Text,
                "Perfeito, passo aí às 10h então",
                1_749_562_811,
            ),
            "message.text.webjs.json" => message(
                "3A5D8E1F0B2C4A6E9D71",
                false,
                maria,
                Text,
                "Vi esse produto no site: https://loja.example.com/p/123 ainda tem?",
                1_749_562_410,
            ),
            "session.status.scan-qr.json" => ProviderEvent::Connection {
                state: "connecting".to_owned(),
                reason: Some("SCAN_QR_CODE".to_owned()),
            },
            "session.status.working.json" => ProviderEvent::Connection {
                state: "open".to_owned(),
                reason: Some("WORKING".to_owned()),
            },
            other => panic!("no expectation for {other}"),
        }]
    }

    #[test]
    fn every_fixture_is_tested() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/waha");
        let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        let listed: BTreeSet<String> = INBOUND
            .iter()
            .map(|(name, _)| *name)
            .chain(NOT_INBOUND.iter().map(|(name, _)| *name))
            .map(str::to_owned)
            .collect();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn every_inbound_fixture_parses_to_its_normalised_events() {
        for (name, body) in INBOUND {
            let envelope = parse_envelope(body, SESSION).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(envelope.events, expected(name), "{name}");
            assert!(envelope.sent_at.is_some(), "{name}");
        }
        // The same message on `message` and `message.any` has one dedupe key.
        assert_eq!(
            parse(fixture!("message.any.incoming.json").1, SESSION).unwrap(),
            parse(fixture!("message.text.noweb.json").1, SESSION).unwrap()
        );
        let (_, noweb) = fixture!("message.text.noweb.json");
        assert_eq!(
            parse_envelope(noweb, SESSION).unwrap().sent_at,
            Some(Timestamp::from_millis(1_749_562_326_118))
        );
    }

    fn body(event: &str, payload: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "id": "evt_01jxat6yx1fh9qvcg03fkfsmdz",
            "timestamp": 1_749_562_326_118_i64,
            "event": event,
            "session": SESSION,
            "me": { "id": "5511988887777@c.us", "pushName": "Loja Centro" },
            "payload": payload,
        }))
        .unwrap()
    }

    #[track_caller]
    fn one(event: &str, payload: Value) -> ProviderEvent {
        let mut events = parse(&body(event, payload), SESSION).unwrap();
        assert_eq!(events.len(), 1);
        events.remove(0)
    }

    fn own(source: Option<&str>, to: Option<&str>) -> Value {
        let mut payload = json!({
            "id": "true_5511999999999@c.us_3EB0AAAA",
            "timestamp": 1_749_562_900,
            "from": "5511988887777@c.us",
            "fromMe": true,
            "body": "Oi Maria, aqui é a Ana da loja.",
            "hasMedia": false,
        });
        if let Some(source) = source {
            payload["source"] = json!(source);
        }
        if let Some(to) = to {
            payload["to"] = json!(to);
        }
        payload
    }

    #[test]
    fn own_messages_by_source() {
        let typed = message(
            "3EB0AAAA",
            true,
            None,
            MessageKind::Text,
            "Oi Maria, aqui é a Ana da loja.",
            1_749_562_900,
        );
        assert_eq!(
            one("message.any", own(Some("api"), Some("5511999999999@c.us"))),
            ProviderEvent::Ignored(IgnoreReason::OwnEcho)
        );
        assert_eq!(
            one("message.any", own(Some("app"), Some("5511999999999@c.us"))),
            typed
        );
        // No `source` (WAHA before 2025.3): a human until the pipeline finds it among our sends.
        assert_eq!(
            one("message.any", own(None, Some("5511999999999@c.us"))),
            typed
        );
        // NOWEB 2024.10: `from` is the chat and `to` is missing.
        let mut old = own(Some("app"), None);
        old["from"] = json!("5511999999999@c.us");
        assert_eq!(one("message.any", old), typed);
        // `from` is the business itself and there is no `to`: no chat to speak of.
        assert_eq!(
            one("message.any", own(Some("app"), None)),
            ProviderEvent::Ignored(IgnoreReason::UnknownChat)
        );
        // The business writing in a group.
        assert_eq!(
            one(
                "message.any",
                own(Some("app"), Some("120363025246125486@g.us"))
            ),
            ProviderEvent::Ignored(IgnoreReason::Group)
        );
    }

    #[track_caller]
    fn check_content(payload: Value, kind: MessageKind, text: &str) {
        let mut payload = payload;
        payload["id"] = json!("false_5511999999999@c.us_K1");
        payload["from"] = json!("5511999999999@c.us");
        match one("message", payload) {
            ProviderEvent::Message(inbound) => {
                assert_eq!((inbound.kind, inbound.text.as_str()), (kind, text));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn kinds_and_text() {
        use MessageKind::*;
        check_content(json!({ "body": "oi" }), Text, "oi");
        check_content(json!({ "body": "" }), Unsupported, "");
        check_content(json!({ "body": null }), Unsupported, "");
        check_content(json!({}), Unsupported, "");
        check_content(
            json!({ "body": "legenda", "hasMedia": true, "media": { "mimetype": "image/jpeg" } }),
            Image,
            "legenda",
        );
        check_content(
            json!({ "body": "", "hasMedia": true, "media": { "mimetype": "video/mp4" } }),
            Video,
            "",
        );
        check_content(
            json!({ "body": "", "hasMedia": true, "media": { "mimetype": "audio/ogg; codecs=opus" } }),
            Audio,
            "",
        );
        check_content(
            json!({ "body": "nota fiscal", "hasMedia": true, "media": { "mimetype": "application/pdf" } }),
            Document,
            "nota fiscal",
        );
        check_content(
            json!({ "hasMedia": true, "media": { "mimetype": "image/webp" } }),
            Sticker,
            "",
        );
        // Media detected but not downloaded: the engine's hint decides.
        check_content(
            json!({ "body": "", "hasMedia": true, "media": null, "_data": { "type": "ptt" } }),
            Audio,
            "",
        );
        check_content(
            json!({ "body": "foto", "hasMedia": true, "media": null,
                    "_data": { "message": { "viewOnceMessageV2": { "message": { "imageMessage": { "caption": "foto" } } } } } }),
            Image,
            "foto",
        );
        check_content(
            json!({ "body": "", "hasMedia": true, "media": null }),
            Document,
            "",
        );
        // WEBJS puts a thumbnail in the body of a location and the vCard in a contact's.
        check_content(
            json!({ "body": "/9j/4AAQSkZJRg==", "location": { "latitude": -23.55, "longitude": -46.63 } }),
            Location,
            "",
        );
        check_content(
            json!({ "body": "BEGIN:VCARD", "vCards": ["BEGIN:VCARD\nFN:Ana\nEND:VCARD"] }),
            Contact,
            "",
        );
        check_content(json!({ "body": "x", "vCards": [] }), Text, "x");
        check_content(
            json!({ "body": "", "_data": { "type": "location" } }),
            Location,
            "",
        );
        check_content(
            json!({ "body": "Quero", "_data": { "message": { "templateButtonReplyMessage": { "selectedDisplayText": "Quero" } } } }),
            Interactive,
            "Quero",
        );
        check_content(
            json!({ "body": "tchau", "_data": { "message": { "ephemeralMessage": { "message": { "extendedTextMessage": { "text": "tchau" } } } } } }),
            Text,
            "tchau",
        );
        check_content(
            json!({ "body": "", "_data": { "message": { "pollCreationMessageV3": {} } } }),
            Unsupported,
            "",
        );
        // Nonsense hints are ignored.
        check_content(json!({ "body": "oi", "_data": "x" }), Text, "oi");
        check_content(json!({ "body": "oi", "_data": { "type": 7 } }), Text, "oi");
    }

    #[test]
    fn chats_that_are_not_a_person_are_ignored() {
        let chat = |from: &str| {
            one(
                "message",
                json!({ "id": "false_x@c.us_K2", "from": from, "body": "oi" }),
            )
        };
        assert_eq!(
            chat("status@broadcast"),
            ProviderEvent::Ignored(IgnoreReason::StatusBroadcast)
        );
        assert_eq!(
            chat("120363111111111111@newsletter"),
            ProviderEvent::Ignored(IgnoreReason::Newsletter)
        );
        match chat("123456789012345@lid") {
            ProviderEvent::Message(inbound) => {
                assert_eq!(inbound.contact.as_str(), "123456789012345@lid")
            }
            other => panic!("a hidden id without a phone is a person: {other:?}"),
        }
        let with_alt = |alt: Value| {
            one(
                "message",
                json!({ "id": "false_123456789012345@lid_K3", "from": "123456789012345@lid", "body": "oi",
                        "_data": { "key": { "remoteJid": "123456789012345@lid", "remoteJidAlt": alt } } }),
            )
        };
        match with_alt(json!("5511999999999@s.whatsapp.net")) {
            ProviderEvent::Message(inbound) => {
                assert_eq!(inbound.contact.as_str(), MARIA);
                assert_eq!(inbound.dedupe_key, format!("{MARIA}/K3"));
            }
            other => panic!("unexpected {other:?}"),
        }
        for alt in [json!("987@lid"), json!(null)] {
            match with_alt(alt) {
                ProviderEvent::Message(inbound) => {
                    assert_eq!(inbound.contact.as_str(), "123456789012345@lid")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            chat("abc@c.us"),
            ProviderEvent::Ignored(IgnoreReason::UnknownChat)
        );
        assert!(matches!(
            chat("5511999999999@s.whatsapp.net"),
            ProviderEvent::Message(_)
        ));
    }

    #[test]
    fn malformed_payloads_are_ignored_or_refused() {
        let unsupported = ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent);
        assert_eq!(
            one(
                "message",
                json!({ "from": "5511999999999@c.us", "body": "oi" })
            ),
            unsupported
        );
        assert_eq!(
            one("message", json!({ "id": "", "from": "5511999999999@c.us" })),
            unsupported
        );
        assert_eq!(
            one("message", json!({ "id": "x", "body": "oi" })),
            unsupported
        );
        assert_eq!(
            one("message", json!({ "id": 7, "from": 7, "fromMe": "true" })),
            unsupported
        );
        for payload in [json!(null), json!([]), json!("x")] {
            assert!(parse(&body("message", payload), SESSION).is_err());
        }
        assert!(parse(&body("session.status", json!({ "status": 1 })), SESSION).is_err());
        assert!(parse(b"", SESSION).is_err());
        assert!(parse(b"[]", SESSION).is_err());
        assert!(parse(br#"{"event":1}"#, SESSION).is_err());
        assert!(parse(&[0xff, 0xfe], SESSION).is_err());
        // Events Conversa does not act on need no payload at all.
        assert_eq!(
            parse(br#"{"event":"presence.update"}"#, SESSION).unwrap(),
            vec![unsupported]
        );
    }

    #[test]
    fn other_sessions_are_ignored() {
        let mut envelope: Value =
            serde_json::from_slice(fixture!("message.text.noweb.json").1).unwrap();
        envelope["session"] = json!("outra-loja");
        let other = serde_json::to_vec(&envelope).unwrap();
        assert_eq!(
            parse(&other, SESSION).unwrap(),
            vec![ProviderEvent::Ignored(IgnoreReason::OtherAccount)]
        );
        assert!(matches!(
            parse(&other, "outra-loja").unwrap()[0],
            ProviderEvent::Message(_)
        ));
        assert!(matches!(
            parse(&other, "").unwrap()[0],
            ProviderEvent::Message(_)
        ));
    }

    #[test]
    fn acks() {
        let ack = |payload: Value| one("message.ack", payload);
        let delivery = |status, error: Option<&str>| ProviderEvent::Delivery {
            provider_id: "3EB0C5A277F7F9B6C5990E".to_owned(),
            status,
            error: error.map(str::to_owned),
        };
        let id = "true_5511999999999@c.us_3EB0C5A277F7F9B6C5990E";
        assert_eq!(
            ack(json!({ "id": id, "fromMe": true, "ack": 2, "ackName": "DEVICE" })),
            delivery(DeliveryStatus::Delivered, None)
        );
        assert_eq!(
            ack(json!({ "id": id, "fromMe": true, "ack": 1 })),
            delivery(DeliveryStatus::Sent, None)
        );
        assert_eq!(
            ack(json!({ "id": id, "fromMe": true, "ack": 4, "ackName": "PLAYED" })),
            delivery(DeliveryStatus::Read, None)
        );
        assert_eq!(
            ack(json!({ "id": id, "fromMe": true, "ack": -1, "ackName": "ERROR" })),
            delivery(DeliveryStatus::Failed, Some("waha reported ack ERROR"))
        );
        assert_eq!(
            ack(json!({ "id": id, "fromMe": true, "ack": 9 })),
            ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)
        );
        assert_eq!(
            ack(json!({ "id": "false_5511999999999@c.us_X", "fromMe": false, "ack": 3 })),
            ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)
        );
        assert_eq!(
            one("message.ack.group", json!({})),
            ProviderEvent::Ignored(IgnoreReason::Group)
        );
    }

    #[test]
    fn reactions_edits_and_revocations() {
        let reaction = one(
            "message.reaction",
            json!({
                "id": "false_5511999999999@c.us_R1", "timestamp": 1_749_562_950.123,
                "from": "5511999999999@c.us", "fromMe": false, "source": "app",
                "reaction": { "text": "👍", "messageId": "true_5511999999999@c.us_3EB0C5A277F7F9B6C5990E" }
            }),
        );
        assert_eq!(
            reaction,
            message(
                "R1",
                false,
                None,
                MessageKind::Reaction,
                "👍",
                1_749_562_950
            )
        );
        assert_eq!(
            one(
                "message.reaction",
                json!({ "id": "true_5511999999999@c.us_R2", "from": "5511988887777@c.us", "to": "5511999999999@c.us",
                        "fromMe": true, "source": "api", "reaction": { "text": "" } })
            ),
            ProviderEvent::Ignored(IgnoreReason::OwnEcho)
        );
        assert_eq!(
            one(
                "message.edited",
                json!({
                    "id": "false_5511999999999@c.us_E9", "from": "5511999999999@c.us", "fromMe": false,
                    "body": "Oi, vocês abrem amanhã cedo?", "editedMessageId": "A1F3C2B9E7D84F1A9C0B3D5E6F708192"
                })
            ),
            ProviderEvent::Edit {
                contact: ContactId::parse(MARIA).unwrap(),
                original_id: "A1F3C2B9E7D84F1A9C0B3D5E6F708192".to_owned(),
                from_me: false,
                text: "Oi, vocês abrem amanhã cedo?".to_owned(),
            }
        );
        assert_eq!(
            one(
                "message.edited",
                json!({ "id": "false_5511999999999@c.us_E9", "from": "5511999999999@c.us", "body": "x" })
            ),
            ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)
        );
        let revoked = ProviderEvent::Revoke {
            contact: ContactId::parse(MARIA).unwrap(),
            original_id: "A1F3C2B9E7D84F1A9C0B3D5E6F708192".to_owned(),
            from_me: false,
        };
        assert_eq!(
            one(
                "message.revoked",
                json!({
                    "revokedMessageId": "A1F3C2B9E7D84F1A9C0B3D5E6F708192",
                    "after": { "id": "false_5511999999999@c.us_V1", "from": "5511999999999@c.us", "fromMe": false },
                    "before": null
                })
            ),
            revoked
        );
        assert_eq!(
            one(
                "message.revoked",
                json!({
                    "before": { "id": "false_5511999999999@c.us_A1F3C2B9E7D84F1A9C0B3D5E6F708192",
                                "from": "5511999999999@c.us", "fromMe": false }
                })
            ),
            revoked
        );
        assert_eq!(
            one("message.revoked", json!({ "revokedMessageId": "X" })),
            ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)
        );
        assert_eq!(
            one(
                "message.revoked",
                json!({ "revokedMessageId": "X", "after": { "from": "120363025246125486@g.us" } })
            ),
            ProviderEvent::Ignored(IgnoreReason::Group)
        );
    }

    #[test]
    fn session_states() {
        let state = |status: &str| match one("session.status", json!({ "status": status })) {
            ProviderEvent::Connection { state, .. } => state,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(state("STARTING"), "connecting");
        assert_eq!(state("PASSKEY_REQUIRED"), "connecting");
        assert_eq!(state("STOPPED"), "close");
        assert_eq!(state("FAILED"), "close");
        assert_eq!(state("SOMETHING_NEW"), "unknown");
    }
}
