//! Cloud API webhook bodies → [`ProviderEvent`]s.
//!
//! One POST is a batch: `entry[]` × `changes[]`, each change a `value` with `messages[]`,
//! `statuses[]` and `errors[]` (field `messages`) or `message_echoes[]` (field
//! `smb_message_echoes`, what the business typed in the WhatsApp Business app). Every element of
//! every array becomes an event, in order. Changes for another business number than the tenant's
//! are ignored, never routed.

use std::collections::HashMap;

use engine::message::{DeliveryStatus, MessageKind};
use engine::{ContactId, Timestamp};
use serde_json::Value;
use tracing::{debug, warn};

use super::{ErrorClass, KIND};
use crate::providers::{
    IgnoreReason, InboundMessage, ParseError, ProviderEvent, ProviderProblem, chat_contact,
    one_line, str_field, unix_seconds,
};

/// Longest error description kept in a delivery event.
const MAX_ERROR_CHARS: usize = 300;

/// Parses one Cloud API webhook body for the tenant's `phone_number_id` (empty: any number).
///
/// `Err` only when the body as a whole is unusable: not UTF-8, not JSON (nesting deeper than 128
/// levels included), not an object, or without an `entry` array. An `object` other than
/// `whatsapp_business_account` is `Ignored(UnsupportedEvent)`; a malformed entry, change, message or
/// status becomes `Ignored(UnsupportedEvent)` (logged at debug) so its neighbours still count.
///
/// A status `failed` with error 131047 (the 24-hour window is closed) or 190 (the token expired)
/// also gives a [`ProviderEvent::Problem`]; so does error 190 in `value.errors[]`.
pub fn parse(body: &[u8], phone_number_id: &str) -> Result<Vec<ProviderEvent>, ParseError> {
    let text = std::str::from_utf8(body)
        .map_err(|error| ParseError(format!("body is not valid UTF-8: {error}")))?;
    let envelope: Value = serde_json::from_str(text)
        .map_err(|error| ParseError(format!("body is not valid JSON: {error}")))?;
    if !envelope.is_object() {
        return Err(ParseError("body is not a JSON object".to_owned()));
    }
    if let Some(object) = str_field(&envelope, "object")
        && object != "whatsapp_business_account"
    {
        return Ok(vec![ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)]);
    }
    let Some(entries) = envelope.get("entry").and_then(Value::as_array) else {
        return Err(ParseError("body has no `entry` array".to_owned()));
    };
    let mut events = Vec::new();
    for entry in entries {
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            events.push(malformed("entry without `changes` array"));
            continue;
        };
        for change in changes {
            parse_change(change, phone_number_id, &mut events);
        }
    }
    Ok(events)
}

fn malformed(problem: &'static str) -> ProviderEvent {
    debug!(provider = KIND, problem, "malformed meta event ignored");
    ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)
}

/// The elements of the array `field` of `value`; none when it is missing or not an array.
fn elements<'a>(value: &'a Value, field: &str) -> &'a [Value] {
    value
        .get(field)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn parse_change(change: &Value, phone_number_id: &str, events: &mut Vec<ProviderEvent>) {
    let Some(value) = change.get("value").filter(|value| value.is_object()) else {
        events.push(malformed("change without `value` object"));
        return;
    };
    if let Some(other) = value
        .pointer("/metadata/phone_number_id")
        .and_then(Value::as_str)
        && !phone_number_id.is_empty()
        && other != phone_number_id
    {
        debug!(
            provider = KIND,
            phone_number_id = other,
            "change for another number ignored"
        );
        events.push(ProviderEvent::Ignored(IgnoreReason::OtherAccount));
        return;
    }
    match str_field(change, "field") {
        None | Some("messages") => {
            let names = profile_names(value);
            for message in elements(value, "messages") {
                events.push(parse_message(message, &names, false));
            }
            for status in elements(value, "statuses") {
                parse_status(status, events);
            }
            for error in elements(value, "errors") {
                events.push(parse_value_error(error));
            }
        }
        Some("smb_message_echoes") => {
            for echo in elements(value, "message_echoes") {
                events.push(parse_message(echo, &HashMap::new(), true));
            }
        }
        Some(_) => events.push(ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)),
    }
}

/// `contacts[]`: the WhatsApp profile name of each sender, by `wa_id`.
fn profile_names(value: &Value) -> HashMap<&str, &str> {
    elements(value, "contacts")
        .iter()
        .filter_map(|contact| {
            let wa_id = str_field(contact, "wa_id")?;
            let name = contact
                .get("profile")
                .and_then(|profile| str_field(profile, "name"))?;
            Some((wa_id, name))
        })
        .collect()
}

/// One message (`echo`: one the business typed in the WhatsApp Business app, whose chat is `to`).
fn parse_message(message: &Value, names: &HashMap<&str, &str>, echo: bool) -> ProviderEvent {
    if !message.is_object() {
        return malformed("message is not an object");
    }
    if message
        .get("group_id")
        .is_some_and(|group| !group.is_null())
    {
        return ProviderEvent::Ignored(IgnoreReason::Group);
    }
    let chat_field = if echo { "to" } else { "from" };
    let Some(chat) = str_field(message, chat_field) else {
        return malformed("message without its chat (`from`, or `to` for echoes)");
    };
    let contact = match chat_contact(chat) {
        Ok(contact) => contact,
        Err(reason) => return ProviderEvent::Ignored(reason),
    };
    let Some(id) = str_field(message, "id").filter(|id| !id.is_empty()) else {
        return malformed("message without `id`");
    };
    let (kind, text) = match content(message) {
        Content::Message(kind, text) => (kind, text),
        Content::Edit { original_id, text } => {
            return ProviderEvent::Edit {
                contact,
                original_id,
                from_me: echo,
                text,
            };
        }
        Content::Revoke { original_id } => {
            return ProviderEvent::Revoke {
                contact,
                original_id,
                from_me: echo,
            };
        }
        Content::Skip => return ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent),
        Content::Malformed(problem) => return malformed(problem),
    };
    let push_name = (!echo)
        .then(|| names.get(chat).copied())
        .flatten()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| name.chars().take(256).collect());
    ProviderEvent::Message(InboundMessage {
        dedupe_key: format!("{contact}/{id}"),
        provider_id: id.to_owned(),
        contact,
        from_me: echo,
        push_name,
        kind,
        text,
        at: Timestamp::from_secs(unix_seconds(message.get("timestamp"))),
    })
}

/// What a message is, by its `type`.
enum Content {
    Message(MessageKind, String),
    Edit {
        original_id: String,
        text: String,
    },
    Revoke {
        original_id: String,
    },
    /// Not a message of the conversation (`system`: the customer changed numbers;
    /// `request_welcome`: a chat opened for the first time).
    Skip,
    Malformed(&'static str),
}

/// The text at `path` under `message`, or empty.
fn text_at(message: &Value, path: &str) -> String {
    message
        .pointer(path)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Text for text, captions, interactive replies and template buttons; the emoji for reactions;
/// nothing for the rest, which is recorded and shown as what it is.
fn content(message: &Value) -> Content {
    use MessageKind::*;
    let Some(kind) = str_field(message, "type") else {
        return Content::Malformed("message without `type`");
    };
    let (kind, text) = match kind {
        "text" => (Text, text_at(message, "/text/body")),
        "image" => (Image, text_at(message, "/image/caption")),
        "video" => (Video, text_at(message, "/video/caption")),
        "document" => (Document, text_at(message, "/document/caption")),
        "audio" => (Audio, String::new()),
        "sticker" => (Sticker, String::new()),
        "location" => (Location, String::new()),
        "contacts" => (Contact, String::new()),
        "interactive" => {
            let title = match message.pointer("/interactive/type").and_then(Value::as_str) {
                Some("button_reply") => text_at(message, "/interactive/button_reply/title"),
                Some("list_reply") => text_at(message, "/interactive/list_reply/title"),
                _ => String::new(),
            };
            (Interactive, title)
        }
        "button" => (Interactive, text_at(message, "/button/text")),
        "reaction" => (Reaction, text_at(message, "/reaction/emoji")),
        "edit" => {
            let Some(original_id) = message
                .pointer("/edit/original_message_id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
            else {
                return Content::Malformed("edit without `edit.original_message_id`");
            };
            let text = match message.pointer("/edit/message") {
                Some(edited) if edited.is_object() => match content(edited) {
                    Content::Message(_, text) => text,
                    _ => String::new(),
                },
                _ => String::new(),
            };
            return Content::Edit {
                original_id: original_id.to_owned(),
                text,
            };
        }
        "revoke" => {
            return match message
                .pointer("/revoke/original_message_id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
            {
                Some(original_id) => Content::Revoke {
                    original_id: original_id.to_owned(),
                },
                None => Content::Malformed("revoke without `revoke.original_message_id`"),
            };
        }
        "system" | "request_welcome" => return Content::Skip,
        // `unsupported`, `order` and types newer than this code: recorded, not answered.
        _ => (Unsupported, String::new()),
    };
    Content::Message(kind, text)
}

/// One `statuses[]` element: a delivery event, and a problem for errors a person must solve.
fn parse_status(status: &Value, events: &mut Vec<ProviderEvent>) {
    let Some(provider_id) = str_field(status, "id").filter(|id| !id.is_empty()) else {
        events.push(malformed("status without `id`"));
        return;
    };
    let delivery = match str_field(status, "status") {
        Some("sent") => DeliveryStatus::Sent,
        Some("delivered") => DeliveryStatus::Delivered,
        Some("read" | "played") => DeliveryStatus::Read,
        Some("failed") => DeliveryStatus::Failed,
        // `deleted`, `warning` and anything newer.
        _ => {
            events.push(ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent));
            return;
        }
    };
    let errors = elements(status, "errors");
    let error = errors
        .first()
        .map(|error| describe_error(error).1)
        .or_else(|| {
            (delivery == DeliveryStatus::Failed).then(|| "meta reported status failed".to_owned())
        });
    events.push(ProviderEvent::Delivery {
        provider_id: provider_id.to_owned(),
        status: delivery,
        error,
    });
    if delivery != DeliveryStatus::Failed {
        return;
    }
    for error in errors {
        let (code, detail) = describe_error(error);
        match ErrorClass::of(code, None) {
            ErrorClass::OutsideWindow => {
                if let Some(contact) = str_field(status, "recipient_id")
                    .and_then(|recipient| ContactId::from_jid(recipient).ok())
                {
                    events.push(ProviderEvent::Problem(ProviderProblem::OutsideWindow {
                        contact,
                        provider_id: provider_id.to_owned(),
                    }));
                }
            }
            ErrorClass::TokenExpired => {
                events.push(ProviderEvent::Problem(
                    ProviderProblem::CredentialsRejected { detail },
                ));
            }
            _ => {}
        }
    }
}

/// One `value.errors[]` element: an error not tied to a message (a rate limit, a token problem).
fn parse_value_error(error: &Value) -> ProviderEvent {
    let (code, detail) = describe_error(error);
    if ErrorClass::of(code, None) == ErrorClass::TokenExpired {
        return ProviderEvent::Problem(ProviderProblem::CredentialsRejected { detail });
    }
    warn!(provider = KIND, code = ?code, error = %detail, "meta reported an error");
    ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)
}

/// `{code, title, message, error_data: {details}}` → its code and a one-line description such as
/// `error 131047 (outside_window): Re-engagement message: Message failed to send because …`.
pub(super) fn describe_error(error: &Value) -> (Option<i64>, String) {
    let code = error.get("code").and_then(Value::as_i64);
    let title = str_field(error, "title")
        .or_else(|| str_field(error, "message"))
        .unwrap_or_default()
        .trim();
    let details = error
        .pointer("/error_data/details")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim();
    let mut description = match code {
        Some(code) => format!("error {code} ({})", ErrorClass::of(Some(code), None)),
        None => "error".to_owned(),
    };
    for part in [title, details] {
        if !part.is_empty() && !description.ends_with(part) {
            description.push_str(": ");
            description.push_str(part);
        }
    }
    (code, one_line(&description, MAX_ERROR_CHARS))
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
                include_bytes!(concat!("../../../tests/fixtures/meta/", $name)) as &[u8],
            )
        };
    }

    /// Every inbound webhook fixture; `every_fixture_is_tested` keeps this list complete.
    const INBOUND: [(&str, &[u8]); 11] = [
        fixture!("messages.audio.json"),
        fixture!("messages.button.template-quick-reply.json"),
        fixture!("messages.image.json"),
        fixture!("messages.interactive.button_reply.json"),
        fixture!("messages.reaction.json"),
        fixture!("messages.reply-context.json"),
        fixture!("messages.text.json"),
        fixture!("statuses.delivered.json"),
        fixture!("statuses.failed.131047.json"),
        fixture!("statuses.read.json"),
        fixture!("statuses.sent.json"),
    ];

    /// Fixtures that are not webhook bodies, and the test that covers each.
    const NOT_INBOUND: [(&str, &str); 8] = [
        ("outbound.error.130429.json", "client::tests"),
        ("outbound.error.131056.json", "client::tests"),
        ("outbound.text.reply.request.json", "e2e_meta"),
        ("outbound.text.request.json", "e2e_meta"),
        ("outbound.text.response-200.json", "client::tests"),
        ("outbound.typing-indicator.request.json", "e2e_meta"),
        ("verify.get.request.json", "meta::tests"),
        ("webhook-signature.example.json", "signature::tests"),
    ];

    const MARIA: &str = "5511999999999";
    const NUMBER: &str = "112233445566778";
    const OUR_MESSAGE: &str =
        "wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYGDNFQjBDNUEyNzdGN0Y5QjZDNTk5MEUwMAA=";

    fn message(id: &str, kind: MessageKind, text: &str, seconds: i64) -> ProviderEvent {
        ProviderEvent::Message(InboundMessage {
            dedupe_key: format!("{MARIA}/{id}"),
            provider_id: id.to_owned(),
            contact: ContactId::parse(MARIA).unwrap(),
            from_me: false,
            push_name: Some("Maria Silva".to_owned()),
            kind,
            text: text.to_owned(),
            at: Timestamp::from_secs(seconds),
        })
    }

    fn delivery(id: &str, status: DeliveryStatus, error: Option<&str>) -> ProviderEvent {
        ProviderEvent::Delivery {
            provider_id: id.to_owned(),
            status,
            error: error.map(str::to_owned),
        }
    }

    fn expected(fixture: &str) -> Vec<ProviderEvent> {
        use MessageKind::*;
        match fixture {
            "messages.audio.json" => vec![message(
                "wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYFDNBNTQ3QkQ4NEZFNEQxRkRDOTRGAA==",
                Audio,
                "",
                1_749_562_577,
            )],
            "messages.button.template-quick-reply.json" => vec![message(
                "wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYFDNBNzJGNzIwMTVEMzE5QjY3OUI0AA==",
                Interactive,
                "Confirmar",
                1_749_570_760,
            )],
            "messages.image.json" => vec![message(
                "wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYIEE2RkM5RjlCNUE0RDQ1NThGQ0MxNTg4NjdGNzQ5OENFAA==",
                Image,
                "Esse modelo tem no tamanho M?",
                1_749_562_502,
            )],
            "messages.interactive.button_reply.json" => vec![message(
                "wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYIEZEQjc1REE2M0MxMTQxQjc5Mzg5MTk5NjQzMDkzMTZEAA==",
                Interactive,
                "Ver horários",
                1_749_570_700,
            )],
            "messages.reaction.json" => vec![message(
                "wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYIDFCM0VDOTRENzFCOUQ2NjcyQTI0RTJBNzAyM0Q1Mjc3AA==",
                Reaction,
                "👍",
                1_749_570_400,
            )],
            "messages.reply-context.json" => vec![message(
                "wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYFDNBQTAyRkY0MUU3ODQ5MDk4Njg2AA==",
                Text,
                "Perfeito, passo aí às 10h então",
                1_749_562_811,
            )],
            "messages.text.json" => vec![message(
                "wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYFDNBRDNGRTA3ODRCRDY4MDE3OTdDAA==",
                Text,
                "Oi, vocês abrem amanhã?",
                1_749_562_325,
            )],
            "statuses.delivered.json" => {
                vec![delivery(OUR_MESSAGE, DeliveryStatus::Delivered, None)]
            }
            "statuses.read.json" => vec![delivery(OUR_MESSAGE, DeliveryStatus::Read, None)],
            "statuses.sent.json" => vec![delivery(OUR_MESSAGE, DeliveryStatus::Sent, None)],
            "statuses.failed.131047.json" => {
                let failed =
                    "wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYGDNFQjBGRjAwRUUxMUREMjJDQzMzQkIwMAA=";
                vec![
                    delivery(
                        failed,
                        DeliveryStatus::Failed,
                        Some(
                            "error 131047 (outside_window): Re-engagement message: Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
                        ),
                    ),
                    ProviderEvent::Problem(ProviderProblem::OutsideWindow {
                        contact: ContactId::parse(MARIA).unwrap(),
                        provider_id: failed.to_owned(),
                    }),
                ]
            }
            other => panic!("no expectation for {other}"),
        }
    }

    #[test]
    fn every_fixture_is_tested() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/meta");
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
            let events = parse(body, NUMBER).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(events, expected(name), "{name}");
        }
    }

    fn value_of(fixture: &[u8]) -> Value {
        let envelope: Value = serde_json::from_slice(fixture).unwrap();
        envelope["entry"][0]["changes"][0]["value"].clone()
    }

    #[test]
    fn batches_yield_every_message_and_status_in_order() {
        let text = value_of(fixture!("messages.text.json").1);
        let image = value_of(fixture!("messages.image.json").1);
        let read = value_of(fixture!("statuses.read.json").1);
        let mut mixed = text.clone();
        mixed["messages"]
            .as_array_mut()
            .unwrap()
            .extend(image["messages"].as_array().unwrap().iter().cloned());
        mixed["statuses"] = read["statuses"].clone();
        let body = serde_json::to_vec(&json!({
            "object": "whatsapp_business_account",
            "entry": [
                { "id": "1", "changes": [ { "field": "messages", "value": mixed } ] },
                { "id": "2", "changes": [
                    { "field": "messages", "value": read },
                    { "field": "account_update", "value": { "event": "VERIFIED_ACCOUNT" } }
                ] },
                { "id": "3" }
            ]
        }))
        .unwrap();
        let events = parse(&body, NUMBER).unwrap();
        let mut expected_events = expected("messages.text.json");
        expected_events.extend(expected("messages.image.json"));
        expected_events.extend(expected("statuses.read.json"));
        expected_events.extend(expected("statuses.read.json"));
        expected_events.push(ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent));
        expected_events.push(ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent));
        assert_eq!(events, expected_events);
    }

    #[test]
    fn other_numbers_and_objects_are_ignored() {
        let (_, text) = fixture!("messages.text.json");
        assert_eq!(
            parse(text, "999").unwrap(),
            vec![ProviderEvent::Ignored(IgnoreReason::OtherAccount)]
        );
        assert_eq!(parse(text, "").unwrap(), expected("messages.text.json"));
        assert_eq!(
            parse(br#"{"object":"page","entry":[]}"#, NUMBER).unwrap(),
            vec![ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)]
        );
        assert_eq!(parse(br#"{"entry":[]}"#, NUMBER).unwrap(), vec![]);
    }

    #[track_caller]
    fn one_message(message: Value) -> ProviderEvent {
        let body = serde_json::to_vec(&json!({
            "object": "whatsapp_business_account",
            "entry": [{ "changes": [{ "field": "messages", "value": {
                "metadata": { "phone_number_id": NUMBER },
                "messages": [message]
            } }] }]
        }))
        .unwrap();
        let mut events = parse(&body, NUMBER).unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        events.remove(0)
    }

    #[track_caller]
    fn check(kind_and_body: Value, kind: MessageKind, text: &str) {
        let mut message = json!({ "from": MARIA, "id": "wamid.K", "timestamp": "1749570000" });
        for (key, value) in kind_and_body.as_object().unwrap() {
            message[key] = value.clone();
        }
        match one_message(message) {
            ProviderEvent::Message(inbound) => {
                assert_eq!((inbound.kind, inbound.text.as_str()), (kind, text));
                assert_eq!(inbound.push_name, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_message_type() {
        use MessageKind::*;
        check(
            json!({ "type": "text", "text": { "body": "oi" } }),
            Text,
            "oi",
        );
        check(
            json!({ "type": "video", "video": { "caption": "olha", "id": "1" } }),
            Video,
            "olha",
        );
        check(
            json!({ "type": "document", "document": { "filename": "nf.pdf" } }),
            Document,
            "",
        );
        check(
            json!({ "type": "sticker", "sticker": { "animated": false } }),
            Sticker,
            "",
        );
        check(
            json!({ "type": "location", "location": { "latitude": -23.5, "longitude": -46.6, "name": "Loja" } }),
            Location,
            "",
        );
        check(
            json!({ "type": "contacts", "contacts": [{ "name": { "formatted_name": "Ana" } }] }),
            Contact,
            "",
        );
        check(
            json!({ "type": "interactive", "interactive": { "type": "list_reply", "list_reply": { "id": "r1", "title": "Camiseta M", "description": "Algodão" } } }),
            Interactive,
            "Camiseta M",
        );
        check(
            json!({ "type": "interactive", "interactive": { "type": "nfm_reply", "nfm_reply": { "body": "Sent" } } }),
            Interactive,
            "",
        );
        check(
            json!({ "type": "reaction", "reaction": { "message_id": OUR_MESSAGE } }),
            Reaction,
            "",
        );
        check(
            json!({ "type": "unsupported", "errors": [{ "code": 131051, "title": "Message type unknown" }] }),
            Unsupported,
            "",
        );
        check(
            json!({ "type": "order", "order": { "catalog_id": "1" } }),
            Unsupported,
            "",
        );
        check(json!({ "type": "something_new" }), Unsupported, "");
        // Shapes that do not match their type give no text rather than an error.
        check(json!({ "type": "text", "text": "oi" }), Text, "");
        check(json!({ "type": "image" }), Image, "");
        assert_eq!(
            one_message(
                json!({ "from": MARIA, "id": "wamid.S", "type": "system", "system": { "body": "changed" } })
            ),
            ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)
        );
    }

    #[test]
    fn malformed_messages_groups_and_odd_senders() {
        let unsupported = ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent);
        assert_eq!(
            one_message(json!({ "id": "wamid.X", "type": "text" })),
            unsupported
        );
        assert_eq!(
            one_message(json!({ "from": MARIA, "type": "text" })),
            unsupported
        );
        assert_eq!(
            one_message(json!({ "from": MARIA, "id": "", "type": "text" })),
            unsupported
        );
        assert_eq!(
            one_message(json!({ "from": MARIA, "id": "wamid.X" })),
            unsupported
        );
        assert_eq!(one_message(json!("text")), unsupported);
        assert_eq!(
            one_message(json!({ "from": "abc", "id": "wamid.X", "type": "text" })),
            ProviderEvent::Ignored(IgnoreReason::UnknownChat)
        );
        assert_eq!(
            one_message(
                json!({ "from": MARIA, "group_id": "G1", "id": "wamid.X", "type": "text", "text": { "body": "oi" } })
            ),
            ProviderEvent::Ignored(IgnoreReason::Group)
        );
        for body in [&b"[]"[..], b"{}", br#"{"entry":{}}"#, b"", b"\xff"] {
            assert!(parse(body, NUMBER).is_err());
        }
        assert_eq!(
            parse(br#"{"entry":[{"changes":[{"value":7}]}]}"#, NUMBER).unwrap(),
            vec![unsupported.clone()]
        );
        assert_eq!(
            parse(br#"{"entry":[7]}"#, NUMBER).unwrap(),
            vec![unsupported]
        );
    }

    #[test]
    fn echoes_are_the_business_typing_in_its_app() {
        let body = serde_json::to_vec(&json!({
            "object": "whatsapp_business_account",
            "entry": [{ "changes": [{ "field": "smb_message_echoes", "value": {
                "metadata": { "phone_number_id": NUMBER },
                "message_echoes": [
                    { "from": "5511988887777", "to": MARIA, "id": "wamid.E1", "timestamp": "1749570900",
                      "type": "text", "text": { "body": "Oi Maria, aqui é a Ana." } },
                    { "from": "5511988887777", "to": MARIA, "id": "wamid.E2", "timestamp": "1749570901",
                      "type": "revoke", "revoke": { "original_message_id": "wamid.E1" } }
                ]
            } }] }]
        }))
        .unwrap();
        assert_eq!(
            parse(&body, NUMBER).unwrap(),
            vec![
                ProviderEvent::Message(InboundMessage {
                    dedupe_key: format!("{MARIA}/wamid.E1"),
                    provider_id: "wamid.E1".to_owned(),
                    contact: ContactId::parse(MARIA).unwrap(),
                    from_me: true,
                    push_name: None,
                    kind: MessageKind::Text,
                    text: "Oi Maria, aqui é a Ana.".to_owned(),
                    at: Timestamp::from_secs(1_749_570_900),
                }),
                ProviderEvent::Revoke {
                    contact: ContactId::parse(MARIA).unwrap(),
                    original_id: "wamid.E1".to_owned(),
                    from_me: true,
                },
            ]
        );
    }

    #[test]
    fn edits_and_revocations_of_the_customer() {
        assert_eq!(
            one_message(json!({
                "from": MARIA, "id": "wamid.ED", "timestamp": "1749570950", "type": "edit",
                "edit": { "original_message_id": "wamid.ORIG", "message": { "type": "text", "text": { "body": "Oi, abrem amanhã cedo?" } } }
            })),
            ProviderEvent::Edit {
                contact: ContactId::parse(MARIA).unwrap(),
                original_id: "wamid.ORIG".to_owned(),
                from_me: false,
                text: "Oi, abrem amanhã cedo?".to_owned(),
            }
        );
        assert_eq!(
            one_message(json!({
                "from": MARIA, "id": "wamid.ED", "type": "edit",
                "edit": { "original_message_id": "wamid.ORIG", "message": { "type": "image", "image": { "caption": "nova legenda" } } }
            })),
            ProviderEvent::Edit {
                contact: ContactId::parse(MARIA).unwrap(),
                original_id: "wamid.ORIG".to_owned(),
                from_me: false,
                text: "nova legenda".to_owned(),
            }
        );
        assert_eq!(
            one_message(json!({ "from": MARIA, "id": "wamid.ED", "type": "edit", "edit": {} })),
            ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)
        );
        assert_eq!(
            one_message(
                json!({ "from": MARIA, "id": "wamid.RV", "type": "revoke", "revoke": { "original_message_id": "wamid.ORIG" } })
            ),
            ProviderEvent::Revoke {
                contact: ContactId::parse(MARIA).unwrap(),
                original_id: "wamid.ORIG".to_owned(),
                from_me: false,
            }
        );
    }

    #[track_caller]
    fn statuses(status: Value) -> Vec<ProviderEvent> {
        let body = serde_json::to_vec(&json!({
            "object": "whatsapp_business_account",
            "entry": [{ "changes": [{ "field": "messages", "value": { "statuses": [status] } }] }]
        }))
        .unwrap();
        parse(&body, NUMBER).unwrap()
    }

    #[test]
    fn statuses_with_errors() {
        let token = statuses(json!({
            "id": "wamid.T", "status": "failed", "recipient_id": MARIA,
            "errors": [{ "code": 190, "title": "Access token has expired" }]
        }));
        assert_eq!(
            token,
            vec![
                delivery(
                    "wamid.T",
                    DeliveryStatus::Failed,
                    Some("error 190 (token_expired): Access token has expired")
                ),
                ProviderEvent::Problem(ProviderProblem::CredentialsRejected {
                    detail: "error 190 (token_expired): Access token has expired".to_owned()
                }),
            ]
        );
        assert_eq!(
            statuses(
                json!({ "id": "wamid.U", "status": "failed", "errors": [{ "code": 131026, "message": "Message undeliverable" }] })
            ),
            vec![delivery(
                "wamid.U",
                DeliveryStatus::Failed,
                Some("error 131026 (rejected): Message undeliverable")
            )]
        );
        assert_eq!(
            statuses(json!({ "id": "wamid.V", "status": "failed" })),
            vec![delivery(
                "wamid.V",
                DeliveryStatus::Failed,
                Some("meta reported status failed")
            )]
        );
        assert_eq!(
            statuses(json!({ "id": "wamid.W", "status": "deleted" })),
            vec![ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)]
        );
        assert_eq!(
            statuses(json!({ "status": "read" })),
            vec![ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent)]
        );
    }

    #[test]
    fn value_errors() {
        let body = serde_json::to_vec(&json!({
            "object": "whatsapp_business_account",
            "entry": [{ "changes": [{ "field": "messages", "value": { "errors": [
                { "code": 130429, "title": "Rate limit hit" },
                { "code": 190, "message": "Error validating access token" }
            ] } }] }]
        }))
        .unwrap();
        assert_eq!(
            parse(&body, NUMBER).unwrap(),
            vec![
                ProviderEvent::Ignored(IgnoreReason::UnsupportedEvent),
                ProviderEvent::Problem(ProviderProblem::CredentialsRejected {
                    detail: "error 190 (token_expired): Error validating access token".to_owned()
                }),
            ]
        );
    }
}
