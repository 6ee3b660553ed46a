//! WAHA end to end through real sockets: the `conversa` server on 127.0.0.1:0, a real HTTP server
//! playing WAHA (recording what Conversa sends), and the shared WAHA fixtures as webhook bodies,
//! signed with `X-Webhook-Hmac` like WAHA signs them. Then `WahaClient` alone against the same kind
//! of fake: the exact requests, the ids it returns, and which failures it retries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use engine::ports::Provider;
use engine::{ContactId, TenantId};
use gateway::providers::waha::WahaClient;
use gateway::providers::{RetryPolicy, attention, shared_http_client};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha512;
use tokio::sync::oneshot;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/waha");
const HMAC_KEY: &str = "waha-hmac-demo-secret";
const API_KEY: &str = "yoursecretkey";
const TOKEN: &str = "waha-webhook-token";
const MARIA: &str = "5511999999999";
const MARIA_CHAT: &str = "5511999999999@c.us";
const OUR_FIRST_ID: &str = "3EB0C5A277F7F9B6C5990E";
const KNOWLEDGE: &str = "Loja Centro: roupas femininas e masculinas.\n\n\
Nosso horário de funcionamento: abrimos de segunda a sábado, das 9h às 18h. Amanhã e em todos os dias úteis a loja abre às 9h. Aos domingos e feriados a loja fica fechada.\n\n\
Entregas: fazemos entregas em toda a cidade de São Paulo em até 2 dias úteis.\n\n\
Tamanhos: trabalhamos com os tamanhos P, M, G e GG. O tamanho M está disponível na loja para todos os modelos.";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha512>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A fixture as WAHA would send it now: the envelope's `timestamp` set to the present.
fn fresh(name: &str) -> Value {
    let mut body = fixture_json(name);
    body["timestamp"] = json!(now_ms());
    body
}

// ---- the fake WAHA ----

/// One request Conversa made to the fake WAHA.
#[derive(Debug, Clone)]
struct Captured {
    path: String,
    api_key: Option<String>,
    content_type: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct FakeWaha {
    captured: Arc<Mutex<Vec<Captured>>>,
    sends: Arc<Mutex<u32>>,
    /// Statuses `sendText` answers, in order, before it answers 201 again.
    failures: Arc<Mutex<Vec<(u16, &'static str)>>>,
}

impl FakeWaha {
    async fn start() -> (Self, String) {
        let fake = FakeWaha::default();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, format!("http://{addr}"))
    }

    fn all(&self) -> Vec<Captured> {
        self.captured.lock().unwrap().clone()
    }

    fn paths(&self) -> Vec<String> {
        self.all().into_iter().map(|c| c.path).collect()
    }

    fn texts_to(&self, chat_id: &str) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|c| c.path == "/api/sendText" && c.body["chatId"] == chat_id)
            .map(|c| c.body["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

async fn record(State(fake): State<FakeWaha>, request: Request) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    let (api_key, content_type) = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (header("x-api-key"), header("content-type"))
    };
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    fake.captured.lock().unwrap().push(Captured {
        path: path.clone(),
        api_key,
        content_type,
        body: body.clone(),
    });
    if path != "/api/sendText" {
        return (StatusCode::CREATED, axum::Json(json!({ "result": true }))).into_response();
    }
    let failure = {
        let mut failures = fake.failures.lock().unwrap();
        (!failures.is_empty()).then(|| failures.remove(0))
    };
    if let Some((status, body)) = failure {
        return (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response();
    }
    let n = {
        let mut sends = fake.sends.lock().unwrap();
        *sends += 1;
        *sends
    };
    // The first send gets the id the ack fixture refers to.
    let id = if n == 1 {
        OUR_FIRST_ID.to_owned()
    } else {
        format!("3EB0FAKE{n:014}")
    };
    let mut response = fixture_json("outbound.sendText.response.noweb.json");
    response["key"]["id"] = json!(id);
    (StatusCode::CREATED, axum::Json(response)).into_response()
}

// ---- the Conversa server ----

struct Conversa {
    base: String,
    admin: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Conversa {
    async fn start(data_dir: &std::path::Path) -> Self {
        let mut config = gateway::config::Config::for_tests(data_dir.to_path_buf());
        config.deadline_scan = Duration::from_millis(200);
        let (tx, rx) = oneshot::channel::<()>();
        let running = gateway::server::spawn(config, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
        Self {
            base: format!("http://{}", running.addr),
            admin: running.admin_token,
            http: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(running.task),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Creates a WAHA tenant on the fake at `waha` with fast debounce and the shop's knowledge;
    /// `provider_auth` is `hmac_secret` and/or `webhook_token`. Returns the tenant API key.
    async fn tenant(&self, id: &str, waha: &str, provider_auth: Value) -> String {
        let mut provider = json!({
            "kind": "waha", "base_url": waha, "session": "default", "api_key": API_KEY,
        });
        for (key, value) in provider_auth.as_object().unwrap() {
            provider[key] = value.clone();
        }
        let resp = self
            .http
            .post(format!("{}/api/v1/tenants", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({
                "id": id, "name": "Loja Centro", "provider": provider,
                "settings": {"debounce_ms": 300, "max_buffer_ms": 2000},
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let key = resp.json::<Value>().await.unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_owned();
        let resp = self
            .http
            .put(format!("{}/api/v1/knowledge", self.base))
            .bearer_auth(&key)
            .header("content-type", "text/plain")
            .body(KNOWLEDGE)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        key
    }

    async fn post(&self, tenant: &str, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/webhooks/waha/{tenant}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        into(request.send().await.unwrap()).await
    }

    /// Posts `body` signed like WAHA signs it, with a fresh `X-Webhook-Timestamp`.
    async fn signed(&self, tenant: &str, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let signature = hmac_hex(HMAC_KEY, &bytes);
        self.post(
            tenant,
            bytes,
            &[
                ("x-webhook-hmac", signature),
                ("x-webhook-hmac-algorithm", "sha512".to_owned()),
                ("x-webhook-timestamp", now_ms().to_string()),
            ],
        )
        .await
    }

    async fn get(&self, key: &str, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        into(resp).await.1
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

async fn into(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// An own message on `message.any`, typed on the phone (`source: app`), sent through the API
/// (`source: api`) or from a WAHA too old to say (`None`).
fn own_message(id: &str, source: Option<&str>, text: &str) -> Value {
    let mut body = fresh("message.any.incoming.json");
    let payload = &mut body["payload"];
    payload["id"] = json!(format!("true_{MARIA_CHAT}_{id}"));
    payload["fromMe"] = json!(true);
    payload["from"] = json!("5511988887777@c.us");
    payload["to"] = json!(MARIA_CHAT);
    payload["body"] = json!(text);
    match source {
        Some(source) => payload["source"] = json!(source),
        None => {
            payload.as_object_mut().unwrap().remove("source");
        }
    }
    body
}

#[tokio::test]
async fn a_customer_question_is_answered_through_waha_with_typing_and_read_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, waha) = FakeWaha::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa
        .tenant("loja-waha", &waha, json!({ "hmac_secret": HMAC_KEY }))
        .await;

    let (status, body) = conversa
        .signed("loja-waha", &fresh("message.text.noweb.json"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recorded"], 1);
    eventually("an answer to Maria", || {
        !fake.texts_to(MARIA_CHAT).is_empty()
    })
    .await;
    let answer = &fake.texts_to(MARIA_CHAT)[0];
    assert!(answer.contains("9h"), "{answer}");

    // The requests match the fixtures: paths, X-Api-Key, JSON bodies, and WAHA's recommended order.
    let calls = fake.all();
    for call in &calls {
        assert_eq!(call.api_key.as_deref(), Some(API_KEY), "{call:?}");
        assert_eq!(call.content_type.as_deref(), Some("application/json"));
    }
    let position = |path: &str| calls.iter().position(|c| c.path == path);
    let order = [
        position("/api/sendSeen"),
        position("/api/startTyping"),
        position("/api/stopTyping"),
        position("/api/sendText"),
    ];
    assert!(
        order.iter().all(Option::is_some) && order.is_sorted(),
        "expected sendSeen, startTyping, stopTyping, sendText: {:?}",
        fake.paths()
    );
    let expected = |name: &str| fixture_json(name)["body"].clone();
    let call = |path: &str| calls.iter().find(|c| c.path == path).unwrap().body.clone();
    assert_eq!(
        call("/api/startTyping"),
        expected("outbound.startTyping.request.json")
    );
    assert_eq!(
        call("/api/stopTyping"),
        expected("outbound.stopTyping.request.json")
    );
    let seen = call("/api/sendSeen");
    let seen_fixture = expected("outbound.sendSeen.request.json");
    assert_eq!(seen["session"], seen_fixture["session"]);
    assert_eq!(seen["chatId"], seen_fixture["chatId"]);
    let sent = call("/api/sendText");
    let sent_fixture = expected("outbound.sendText.request.json");
    for field in ["session", "chatId", "linkPreview"] {
        assert_eq!(sent[field], sent_fixture[field], "{field}");
    }
    assert_eq!(sent["text"], json!(answer));

    // The same message again on `message.any` (a subscription to both events): one answer only.
    let (status, body) = conversa
        .signed("loja-waha", &fresh("message.any.incoming.json"))
        .await;
    assert_eq!((status, &body["duplicates"]), (200, &json!(1)), "{body}");

    // WAHA's echo of our own answer: ignored by its `source`, and without one by its id.
    let (status, body) = conversa
        .signed("loja-waha", &own_message(OUR_FIRST_ID, Some("api"), answer))
        .await;
    assert_eq!((status, &body["ignored"]), (200, &json!(1)), "{body}");
    let (status, body) = conversa
        .signed("loja-waha", &own_message(OUR_FIRST_ID, None, answer))
        .await;
    assert_eq!((status, &body["ignored"]), (200, &json!(1)), "{body}");

    // Acks of our answer move it forward.
    let (status, _) = conversa
        .signed("loja-waha", &fresh("message.ack.read.json"))
        .await;
    assert_eq!(status, 200);
    let history = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}/messages"))
        .await;
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0]["author"], "assistant");
    assert_eq!(history[0]["status"], "read");
    assert_eq!(history[1]["text"], "Oi, vocês abrem amanhã?");
    let conversation = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}"))
        .await;
    assert_eq!(
        conversation["state"], "IA_ATIVA",
        "an echo was taken for a human"
    );

    // The business types on its phone: a human took over.
    let (status, _) = conversa
        .signed(
            "loja-waha",
            &own_message("3A0000PHONE", Some("app"), "Oi Maria, aqui é a Ana."),
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conversation = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}"))
        .await;
    assert_eq!(conversation["state"], "HUMANO_RESPONDEU", "{conversation}");
    assert_eq!(conversation["reason"], "phone_reply");
    assert_eq!(fake.texts_to(MARIA_CHAT).len(), 1);
    conversa.stop().await;
}

#[tokio::test]
async fn signatures_are_checked_and_old_signed_bodies_are_replays() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, waha) = FakeWaha::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa
        .tenant("loja-waha-sig", &waha, json!({ "hmac_secret": HMAC_KEY }))
        .await;
    let vector = fixture_json("webhook-signature.example.json");
    let vector_header = |name: &str| vector["headers"][name].as_str().unwrap().to_owned();
    let original = fixture("message.text.noweb.json");

    // The README's vector, byte for byte: the signature is right, but it was made in June 2025.
    let (status, body) = conversa
        .post(
            "loja-waha-sig",
            original.clone(),
            &[
                ("x-webhook-hmac", vector_header("X-Webhook-Hmac")),
                (
                    "x-webhook-hmac-algorithm",
                    vector_header("X-Webhook-Hmac-Algorithm"),
                ),
                ("x-webhook-timestamp", vector_header("X-Webhook-Timestamp")),
            ],
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too old"),
        "{body}"
    );
    // A fresh header does not help: the signed envelope timestamp is old.
    let (status, body) = conversa
        .post(
            "loja-waha-sig",
            original.clone(),
            &[
                ("x-webhook-hmac", vector_header("X-Webhook-Hmac")),
                ("x-webhook-timestamp", now_ms().to_string()),
            ],
        )
        .await;
    assert_eq!(status, 401, "{body}");

    let body = serde_json::to_vec(&fresh("message.text.noweb.json")).unwrap();
    let signature = hmac_hex(HMAC_KEY, &body);
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("missing", vec![]),
        (
            "wrong key",
            vec![("x-webhook-hmac", hmac_hex("other", &body))],
        ),
        ("not hex", vec![("x-webhook-hmac", "zz".repeat(64))]),
        (
            "other algorithm",
            vec![
                ("x-webhook-hmac", signature.clone()),
                ("x-webhook-hmac-algorithm", "sha256".to_owned()),
            ],
        ),
        // The webhook token is not accepted instead of the signature.
        ("token instead", vec![("apikey", HMAC_KEY.to_owned())]),
    ];
    for (case, headers) in cases {
        let (status, response) = conversa.post("loja-waha-sig", body.clone(), &headers).await;
        assert_eq!(status, 401, "{case}: {response}");
        assert_eq!(response["error"]["code"], "unauthorized", "{case}");
    }
    let listed = conversa.get(&key, "/api/v1/conversations").await;
    assert!(listed["items"].as_array().unwrap().is_empty(), "{listed}");

    let (status, response) = conversa
        .post("loja-waha-sig", body, &[("x-webhook-hmac", signature)])
        .await;
    assert_eq!(status, 200, "{response}");
    eventually("the answer", || !fake.texts_to(MARIA_CHAT).is_empty()).await;
    conversa.stop().await;
}

#[tokio::test]
async fn token_tenants_groups_sessions_and_other_events() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, waha) = FakeWaha::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa
        .tenant("loja-waha-token", &waha, json!({ "webhook_token": TOKEN }))
        .await;
    let post = |body: Value, headers: Vec<(&'static str, String)>| {
        let conversa = &conversa;
        async move {
            conversa
                .post(
                    "loja-waha-token",
                    serde_json::to_vec(&body).unwrap(),
                    &headers,
                )
                .await
        }
    };

    let (status, _) = post(fresh("message.group.json"), vec![]).await;
    assert_eq!(status, 401);
    let (status, _) = post(
        fresh("message.group.json"),
        vec![("apikey", "wrong".to_owned())],
    )
    .await;
    assert_eq!(status, 401);
    for name in [
        "message.group.json",
        "session.status.scan-qr.json",
        "session.status.working.json",
    ] {
        let (status, body) = post(fresh(name), vec![("apikey", TOKEN.to_owned())]).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    let (status, body) = conversa
        .http
        .post(format!(
            "{}/webhooks/waha/loja-waha-token?token={TOKEN}",
            conversa.base
        ))
        .header("content-type", "application/json")
        .body(fixture("message.text.webjs.json"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200, "{:?}", body.text().await);
    // Another session on the same WAHA server is not this tenant's.
    let mut other = fresh("message.text.noweb.json");
    other["session"] = json!("outra-loja");
    let (status, body) = post(other, vec![("x-webhook-token", TOKEN.to_owned())]).await;
    assert_eq!((status, &body["ignored"]), (200, &json!(1)), "{body}");

    eventually("the answer to the webjs message", || {
        !fake.texts_to(MARIA_CHAT).is_empty()
    })
    .await;
    // Edits and revocations of an answered message are recorded against it in history (not
    // answered again; one that arrives before the turn changes the turn, see the actors' tests).
    let original = |conversa_history: &Value| -> Value {
        conversa_history
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["provider_id"] == "3A5D8E1F0B2C4A6E9D71")
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut edited = fresh("message.text.noweb.json");
    edited["event"] = json!("message.edited");
    edited["payload"]["id"] = json!(format!("false_{MARIA_CHAT}_EDIT1"));
    edited["payload"]["body"] = json!("Vi esse produto no site, ainda tem no M?");
    edited["payload"]["editedMessageId"] = json!("3A5D8E1F0B2C4A6E9D71");
    let mut unknown = edited.clone();
    let (status, body) = post(edited, vec![("apikey", TOKEN.to_owned())]).await;
    assert_eq!((status, &body["amended"]), (200, &json!(1)), "{body}");
    let history = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}/messages"))
        .await;
    let message = original(&history);
    assert_eq!(
        message["text"], "Vi esse produto no site, ainda tem no M?",
        "{history}"
    );
    assert_eq!(message["amended"]["change"], "edited", "{history}");
    unknown["payload"]["editedMessageId"] = json!("NEVER-SEEN");
    let (status, body) = post(unknown, vec![("apikey", TOKEN.to_owned())]).await;
    assert_eq!((status, &body["amended"]), (200, &json!(0)), "{body}");
    let revoked = json!({
        "event": "message.revoked", "session": "default", "timestamp": now_ms(),
        "payload": {
            "revokedMessageId": "3A5D8E1F0B2C4A6E9D71",
            "after": { "id": format!("false_{MARIA_CHAT}_REV1"), "from": MARIA_CHAT, "fromMe": false },
            "before": null
        }
    });
    let (status, body) = post(revoked, vec![("apikey", TOKEN.to_owned())]).await;
    assert_eq!((status, &body["amended"]), (200, &json!(1)), "{body}");
    let history = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}/messages"))
        .await;
    let message = original(&history);
    assert_eq!(message["text"], "", "{history}");
    assert_eq!(message["amended"]["change"], "revoked", "{history}");

    let listed = conversa.get(&key, "/api/v1/conversations").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    assert!(fake.texts_to("120363025246125486@g.us").is_empty());
    let metrics = conversa.metrics().await;
    for line in [
        r#"conversa_webhook_events_total{provider="waha",result="ignored_group"} 1"#,
        r#"conversa_webhook_events_total{provider="waha",result="ignored_other_account"} 1"#,
        r#"conversa_webhook_events_total{provider="waha",result="connection"} 2"#,
        r#"conversa_webhook_events_total{provider="waha",result="edited"} 1"#,
        r#"conversa_webhook_events_total{provider="waha",result="revoked"} 1"#,
        r#"conversa_webhook_events_total{provider="waha",result="edited_unknown"} 1"#,
        r#"conversa_provider_connection{state="open",tenant="loja-waha-token"} 1"#,
        r#"conversa_provider_connection{state="connecting",tenant="loja-waha-token"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    conversa.stop().await;
}

// ---- WahaClient alone ----

fn client(base_url: &str, tenant: &str, attempts: u32) -> WahaClient {
    WahaClient::new(
        shared_http_client(Duration::from_millis(500)),
        &TenantId::parse(tenant).unwrap(),
        base_url,
        "default",
        API_KEY,
        RetryPolicy {
            attempts,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
    )
}

fn maria() -> ContactId {
    ContactId::parse(MARIA).unwrap()
}

#[tokio::test]
async fn the_client_sends_text_and_returns_the_bare_whatsapp_id() {
    let (fake, base_url) = FakeWaha::start().await;
    let client = client(&format!("{base_url}/"), "waha-client-send", 3);
    let receipt = client.send_text(&maria(), "Temos sim!").await.unwrap();
    assert_eq!(receipt.provider_id.as_deref(), Some(OUR_FIRST_ID));
    let calls = fake.all();
    let [call] = calls.as_slice() else {
        panic!("expected one call, got {calls:?}")
    };
    assert_eq!(call.path, "/api/sendText");
    assert_eq!(call.api_key.as_deref(), Some(API_KEY));
    assert_eq!(
        call.body,
        json!({ "session": "default", "chatId": MARIA_CHAT, "text": "Temos sim!", "linkPreview": false })
    );
}

#[tokio::test]
async fn the_client_types_in_order_and_stops_before_the_answer() {
    let (fake, base_url) = FakeWaha::start().await;
    let client = client(&base_url, "waha-client-typing", 1);
    client.typing(&maria(), true).await.unwrap();
    client.send_text(&maria(), "oi").await.unwrap();
    // Without "typing…" on there is nothing to stop.
    client.send_text(&maria(), "de novo").await.unwrap();
    client.typing(&maria(), false).await.unwrap();
    client.typing(&maria(), true).await.unwrap();
    client.typing(&maria(), false).await.unwrap();
    assert_eq!(
        fake.paths(),
        [
            "/api/sendSeen",
            "/api/startTyping",
            "/api/stopTyping",
            "/api/sendText",
            "/api/sendText",
            "/api/sendSeen",
            "/api/startTyping",
            "/api/stopTyping",
        ]
    );
}

#[tokio::test]
async fn the_client_retries_5xx_but_not_4xx_and_flags_a_refused_key() {
    let (fake, base_url) = FakeWaha::start().await;
    *fake.failures.lock().unwrap() = vec![(500, r#"{"statusCode":500,"message":"Internal"}"#)];
    let tenant = "waha-client-failures";
    let client = client(&base_url, tenant, 3);
    let receipt = client.send_text(&maria(), "oi").await.unwrap();
    assert!(receipt.provider_id.is_some());
    assert_eq!(fake.texts_to(MARIA_CHAT).len(), 2, "one failure, one retry");

    *fake.failures.lock().unwrap() = vec![(
        422,
        r#"{"statusCode":422,"message":"Session status is not as expected. Try again later or restart the session"}"#,
    )];
    let error = client.send_text(&maria(), "oi").await.unwrap_err();
    assert!(!error.retryable);
    assert_eq!(error.status, Some(422));
    assert!(
        error
            .message
            .starts_with("waha sendText: HTTP 422: Session status"),
        "{error}"
    );
    assert_eq!(fake.texts_to(MARIA_CHAT).len(), 3, "a 422 is not retried");

    let unauthorized = r#"{"message":"Unauthorized","statusCode":401}"#;
    *fake.failures.lock().unwrap() = vec![(401, unauthorized)];
    let error = client.send_text(&maria(), "oi").await.unwrap_err();
    assert!(!error.retryable);
    assert_eq!(error.message, "waha sendText: HTTP 401: Unauthorized");
    let tenant = TenantId::parse(tenant).unwrap();
    assert!(
        attention().get(&tenant).is_some(),
        "a refused key needs a person"
    );
    client.send_text(&maria(), "oi").await.unwrap();
    assert!(
        attention().get(&tenant).is_none(),
        "a success clears the flag"
    );
}

#[tokio::test]
async fn the_client_gives_up_on_an_unreachable_server_with_a_retryable_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    let error = client(&format!("http://{addr}"), "waha-client-down", 2)
        .send_text(&maria(), "oi")
        .await
        .unwrap_err();
    assert!(error.retryable, "{error}");
    assert_eq!(error.status, None);
}

#[tokio::test]
async fn a_person_known_only_by_a_hidden_id_is_answered_on_that_id() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, waha) = FakeWaha::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa
        .tenant("loja-waha-lid", &waha, json!({ "webhook_token": TOKEN }))
        .await;
    const HIDDEN: &str = "123456789012345@lid";
    let mut body = fresh("message.text.noweb.json");
    body["payload"]["id"] = json!(format!("false_{HIDDEN}_LID1"));
    body["payload"]["from"] = json!(HIDDEN);
    body["payload"]["_data"] = json!({ "key": { "remoteJid": HIDDEN, "id": "LID1" } });
    let (status, response) = conversa
        .post(
            "loja-waha-lid",
            serde_json::to_vec(&body).unwrap(),
            &[("apikey", TOKEN.to_owned())],
        )
        .await;
    assert_eq!(
        (status, &response["recorded"]),
        (200, &json!(1)),
        "{response}"
    );
    eventually("the answer to the hidden id", || {
        !fake.texts_to(HIDDEN).is_empty()
    })
    .await;
    let conversation = conversa
        .get(&key, &format!("/api/v1/conversations/{HIDDEN}"))
        .await;
    assert_eq!(conversation["contact"], HIDDEN, "{conversation}");
    conversa.stop().await;
}
