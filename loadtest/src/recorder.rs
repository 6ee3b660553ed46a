//! The recording provider server: plays Evolution, WAHA and Meta for the run's tenants on loopback.
//!
//! Every text Conversa sends lands here and becomes an [`Answer`] for the driver, which attributes it
//! to the contact's open turn. Typing and read-receipt calls are answered at once and only counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Contacts are numbered `CONTACT_BASE + index`: 13 digits, E.164 without `+`.
pub const CONTACT_BASE: u64 = 5_511_900_000_000;

/// The phone number of contact `index`.
pub fn contact_number(index: u32) -> String {
    (CONTACT_BASE + u64::from(index)).to_string()
}

/// The contact index of a number or JID, when it is one of ours.
pub fn contact_index(number_or_jid: &str) -> Option<u32> {
    let digits: String = number_or_jid
        .split('@')
        .next()?
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let n: u64 = digits.parse().ok()?;
    u32::try_from(n.checked_sub(CONTACT_BASE)?).ok()
}

/// One text Conversa sent to a contact.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub contact: u32,
    pub tenant: u32,
    pub at: Instant,
    /// The text was the tenant's fallback message (the conversation went to a human).
    pub fallback: bool,
}

/// Counters of what the recorder saw.
#[derive(Debug, Default)]
pub struct RecorderStats {
    pub texts: AtomicU64,
    pub typing: AtomicU64,
    /// Requests whose tenant or contact is not one of the run's.
    pub unknown: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    /// Evolution instance, WAHA session or Meta phone number id → tenant index.
    tenants: HashMap<String, u32>,
    fallback: String,
    answers: mpsc::UnboundedSender<Answer>,
    stats: Arc<RecorderStats>,
    next_id: AtomicU64,
}

/// A running recorder: its base URL and counters.
#[derive(Debug)]
pub struct Recorder {
    pub addr: SocketAddr,
    pub stats: Arc<RecorderStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Binds `listen` and serves until dropped.
    pub async fn start(
        listen: SocketAddr,
        tenants: HashMap<String, u32>,
        fallback: String,
        answers: mpsc::UnboundedSender<Answer>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {listen} for the recording provider: {e}")
        })?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(RecorderStats::default());
        let shared = Arc::new(Shared {
            tenants,
            fallback,
            answers,
            stats: stats.clone(),
            next_id: AtomicU64::new(1),
        });
        let app = Router::new().fallback(record).with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, stats, task })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let at = Instant::now();
    let path = request.uri().path().to_owned();
    let Ok(bytes) = axum::body::to_bytes(request.into_body(), 1 << 20).await else {
        return (StatusCode::BAD_REQUEST, "{}").into_response();
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    match segments.as_slice() {
        // Evolution: POST /message/sendText/{instance}, POST /chat/sendPresence/{instance}.
        ["message", "sendText", instance] => {
            let number = body["number"].as_str().unwrap_or_default();
            shared.answer(instance, number, &body["text"], at);
            let message_id = format!("3EB0LT{id:016X}");
            let response = json!({
                "key": {"remoteJid": format!("{number}@s.whatsapp.net"), "fromMe": true, "id": message_id},
                "pushName": "Você", "status": "PENDING", "message": {"conversation": body["text"]},
                "messageType": "conversation", "messageTimestamp": 1_749_562_620, "source": "web",
            });
            (StatusCode::CREATED, axum::Json(response)).into_response()
        }
        ["chat", "sendPresence", _] => shared.typing(StatusCode::CREATED, json!({})),
        // WAHA: POST /api/sendText {session, chatId, text}; typing and seen calls.
        ["api", "sendText"] => {
            let session = body["session"].as_str().unwrap_or_default();
            let chat = body["chatId"].as_str().unwrap_or_default();
            shared.answer(session, chat, &body["text"], at);
            let response = json!({
                "key": {"remoteJid": chat.replace("@c.us", "@s.whatsapp.net"), "fromMe": true, "id": format!("3EB0LT{id:016X}")},
                "message": {"extendedTextMessage": {"text": body["text"]}},
                "messageTimestamp": "1749562620", "status": "PENDING",
            });
            (StatusCode::CREATED, axum::Json(response)).into_response()
        }
        ["api", "startTyping" | "stopTyping" | "sendSeen"] | ["api", _, "presence"] => {
            shared.typing(StatusCode::OK, json!({"result": true}))
        }
        // Meta: POST /{version}/{phone_number_id}/messages: a text, or a read receipt with typing.
        [_, phone_number_id, "messages"] => {
            if body["type"] == "text" {
                let to = body["to"].as_str().unwrap_or_default();
                shared.answer(phone_number_id, to, &body["text"]["body"], at);
                let response = json!({
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": to, "wa_id": to}],
                    "messages": [{"id": format!("wamid.LT{id:016X}")}],
                });
                (StatusCode::OK, axum::Json(response)).into_response()
            } else {
                shared.typing(StatusCode::OK, json!({"success": true}))
            }
        }
        _ => {
            shared.stats.unknown.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "unknown route"})),
            )
                .into_response()
        }
    }
}

impl Shared {
    fn answer(&self, tenant_key: &str, number: &str, text: &Value, at: Instant) {
        self.stats.texts.fetch_add(1, Ordering::Relaxed);
        match (self.tenants.get(tenant_key), contact_index(number)) {
            (Some(&tenant), Some(contact)) => {
                let fallback = text.as_str() == Some(self.fallback.as_str());
                let _ = self.answers.send(Answer {
                    contact,
                    tenant,
                    at,
                    fallback,
                });
            }
            _ => {
                self.stats.unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn typing(&self, status: StatusCode, body: Value) -> Response {
        self.stats.typing.fetch_add(1, Ordering::Relaxed);
        (status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_numbers_round_trip_through_jids() {
        assert_eq!(contact_number(42), "5511900000042");
        assert_eq!(contact_index("5511900000042"), Some(42));
        assert_eq!(contact_index("5511900000042@s.whatsapp.net"), Some(42));
        assert_eq!(contact_index("5511900000042@c.us"), Some(42));
        assert_eq!(contact_index("5511999999999"), Some(99_999_999));
        assert_eq!(contact_index("5511899999999"), None);
        assert_eq!(contact_index("nope"), None);
    }

    #[tokio::test]
    async fn every_provider_send_becomes_an_answer() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let tenants = HashMap::from([
            ("t-evo".to_owned(), 0),
            ("t-waha".to_owned(), 1),
            ("9000001".to_owned(), 2),
        ]);
        let rec = Recorder::start("127.0.0.1:0".parse().unwrap(), tenants, "FB".into(), tx)
            .await
            .unwrap();
        let http = reqwest::Client::new();
        let base = rec.base_url();
        let calls = [
            (
                "/chat/sendPresence/t-evo",
                json!({"number": "5511900000001", "presence": "composing", "delay": 1}),
            ),
            (
                "/message/sendText/t-evo",
                json!({"number": "5511900000001", "text": "oi"}),
            ),
            (
                "/api/sendText",
                json!({"session": "t-waha", "chatId": "5511900000002@c.us", "text": "FB"}),
            ),
            (
                "/api/startTyping",
                json!({"session": "t-waha", "chatId": "5511900000002@c.us"}),
            ),
            (
                "/v21.0/9000001/messages",
                json!({"messaging_product": "whatsapp", "to": "5511900000003", "type": "text", "text": {"body": "ola"}}),
            ),
            (
                "/v21.0/9000001/messages",
                json!({"messaging_product": "whatsapp", "status": "read", "message_id": "x"}),
            ),
        ];
        for (path, body) in calls {
            let status = http
                .post(format!("{base}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success(), "{path}: {status}");
        }
        let got: Vec<(u32, u32, bool)> = (0..3)
            .map(|_| {
                rx.try_recv()
                    .map(|a| (a.contact, a.tenant, a.fallback))
                    .unwrap()
            })
            .collect();
        assert_eq!(got, [(1, 0, false), (2, 1, true), (3, 2, false)]);
        assert_eq!(rec.stats.typing.load(Ordering::Relaxed), 3);
    }
}
