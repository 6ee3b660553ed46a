//! Meta Cloud API end to end through real sockets: the `conversa` server on 127.0.0.1:0, a real HTTP
//! server playing the Graph API (recording what Conversa sends), and the shared Meta fixtures as
//! webhook bodies signed with `X-Hub-Signature-256`. Then `MetaClient` alone against the same kind
//! of fake: the exact requests, and how each Graph error code is classified.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use engine::ports::Provider;
use engine::{ContactId, TenantId};
use gateway::providers::meta::{self, MetaClient};
use gateway::providers::{RetryPolicy, attention, shared_http_client};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/meta");
const APP_SECRET: &str = "0f2e4d6c8b0a9e7d5c3b1a2f4e6d8c0b";
const ACCESS_TOKEN: &str = "EAAJ-test-access-token";
const VERIFY_TOKEN: &str = "my-verify-token";
const NUMBER: &str = "112233445566778";
const MESSAGES_PATH: &str = "/v23.0/112233445566778/messages";
const MARIA: &str = "5511999999999";
const JOAO: &str = "5511977776666";
/// The id the fake gives the first answer; the status fixtures refer to it.
const OUR_FIRST_ID: &str = "wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYGDNFQjBDNUEyNzdGN0Y5QjZDNTk5MEUwMAA=";
/// The id of the customer's message in `messages.text.json`.
const MARIA_QUESTION: &str = "wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYFDNBRDNGRTA3ODRCRDY4MDE3OTdDAA==";
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

// ---- the fake Graph API ----

#[derive(Debug, Clone)]
struct Captured {
    path: String,
    authorization: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct FakeGraph {
    captured: Arc<Mutex<Vec<Captured>>>,
    sends: Arc<Mutex<u32>>,
    /// Statuses and bodies text sends get, in order, before they succeed again.
    failures: Arc<Mutex<Vec<(u16, String)>>>,
}

impl FakeGraph {
    async fn start() -> (Self, String) {
        let fake = FakeGraph::default();
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

    fn texts_to(&self, number: &str) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|c| c.body["type"] == "text" && c.body["to"] == number)
            .map(|c| {
                c.body["text"]["body"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    fn typing_requests(&self) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|c| c.body.get("typing_indicator").is_some())
            .map(|c| c.body)
            .collect()
    }

    fn fail_next(&self, status: u16, body: Value) {
        self.failures
            .lock()
            .unwrap()
            .push((status, body.to_string()));
    }
}

async fn record(State(fake): State<FakeGraph>, request: Request) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    fake.captured.lock().unwrap().push(Captured {
        path,
        authorization,
        body: body.clone(),
    });
    if body.get("typing_indicator").is_some() {
        return axum::Json(json!({ "success": true })).into_response();
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
    let id = if n == 1 {
        OUR_FIRST_ID.to_owned()
    } else {
        format!("wamid.FAKE{n:010}")
    };
    let mut response = fixture_json("outbound.text.response-200.json");
    response["contacts"][0]["input"] = body["to"].clone();
    response["contacts"][0]["wa_id"] = body["to"].clone();
    response["messages"][0]["id"] = json!(id);
    axum::Json(response).into_response()
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

    /// Creates a Meta tenant on the fake Graph API with fast debounce and the shop's knowledge.
    async fn tenant(&self, id: &str, graph: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/api/v1/tenants", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({
                "id": id, "name": "Loja Centro",
                "provider": {
                    "kind": "meta", "graph_url": graph, "api_version": "v23.0",
                    "phone_number_id": NUMBER, "access_token": ACCESS_TOKEN,
                    "app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN,
                },
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

    /// Posts `body` signed with the app secret, as Meta does.
    async fn signed(&self, tenant: &str, body: Vec<u8>) -> (u16, Value) {
        let signature = meta::signature::sign(APP_SECRET.as_bytes(), &body);
        let resp = self
            .http
            .post(format!("{}/webhooks/meta/{tenant}", self.base))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        into(resp).await
    }

    async fn signed_json(&self, tenant: &str, body: &Value) -> (u16, Value) {
        self.signed(tenant, serde_json::to_vec(body).unwrap()).await
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

/// The `value` of the first change of a fixture.
fn value_of(name: &str) -> Value {
    fixture_json(name)["entry"][0]["changes"][0]["value"].clone()
}

fn envelope(changes: Vec<Value>) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "109876543210987", "changes": changes }]
    })
}

/// A text message from `number` with its own id, shaped like the text fixture.
fn text_from(number: &str, id: &str, text: &str) -> Value {
    let mut message = value_of("messages.text.json")["messages"][0].clone();
    message["from"] = json!(number);
    message["id"] = json!(id);
    message["text"]["body"] = json!(text);
    message
}

#[tokio::test]
async fn the_handshake_then_a_question_answered_through_the_cloud_api() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, graph) = FakeGraph::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant("loja-meta", &graph).await;

    // The handshake, with the fixture's query.
    let verify = fixture_json("verify.get.request.json");
    let query = verify["url"].as_str().unwrap().split_once('?').unwrap().1;
    let resp = conversa
        .http
        .get(format!("{}/webhooks/meta/loja-meta?{query}", conversa.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        resp.text().await.unwrap(),
        verify["expected_response"]["body"]
    );
    let wrong = query.replace(VERIFY_TOKEN, "wrong-token");
    let resp = conversa
        .http
        .get(format!("{}/webhooks/meta/loja-meta?{wrong}", conversa.base))
        .send()
        .await
        .unwrap();
    let (status, body) = into(resp).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    // The README's signed body, byte for byte, with the README's signature.
    let vector = fixture_json("webhook-signature.example.json");
    let resp = conversa
        .http
        .post(format!("{}/webhooks/meta/loja-meta", conversa.base))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            vector["headers"]["X-Hub-Signature-256"].as_str().unwrap(),
        )
        .body(fixture("messages.text.json"))
        .send()
        .await
        .unwrap();
    let (status, body) = into(resp).await;
    assert_eq!((status, &body["recorded"]), (200, &json!(1)), "{body}");

    eventually("an answer to Maria", || !fake.texts_to(MARIA).is_empty()).await;
    let answer = fake.texts_to(MARIA)[0].clone();
    assert!(answer.contains("9h"), "{answer}");
    let calls = fake.all();
    for call in &calls {
        assert_eq!(call.path, MESSAGES_PATH);
        assert_eq!(
            call.authorization.as_deref(),
            Some(format!("Bearer {ACCESS_TOKEN}").as_str())
        );
    }
    // The typing indicator marks Maria's question read, before the answer.
    let typing = fake.typing_requests();
    assert_eq!(
        typing.first(),
        Some(&fixture_json("outbound.typing-indicator.request.json")["body"]),
        "{calls:?}"
    );
    assert_eq!(typing[0]["message_id"], MARIA_QUESTION);
    assert!(calls[0].body.get("typing_indicator").is_some(), "{calls:?}");
    let mut expected_send = fixture_json("outbound.text.request.json")["body"].clone();
    expected_send["text"]["body"] = json!(answer);
    assert_eq!(calls.last().unwrap().body, expected_send);

    // Meta redelivers: nothing happens twice.
    let (status, body) = conversa
        .signed("loja-meta", fixture("messages.text.json"))
        .await;
    assert_eq!((status, &body["duplicates"]), (200, &json!(1)), "{body}");

    // Statuses of our answer, out of order as Meta may send them: read wins.
    for name in [
        "statuses.sent.json",
        "statuses.read.json",
        "statuses.delivered.json",
    ] {
        let (status, body) = conversa.signed("loja-meta", fixture(name)).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    let history = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}/messages"))
        .await;
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0]["author"], "assistant");
    assert_eq!(history[0]["status"], "read");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.texts_to(MARIA).len(), 1);
    conversa.stop().await;
}

#[tokio::test]
async fn a_batch_is_recorded_whole_and_every_message_type_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, graph) = FakeGraph::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant("loja-meta-batch", &graph).await;

    // Two customers and a status in one body, plus a change for another number.
    let mut value = value_of("messages.text.json");
    value["contacts"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "profile": { "name": "João Pereira" }, "wa_id": JOAO }));
    value["messages"] = json!([
        text_from(MARIA, "wamid.BATCH1", "Oi, vocês abrem amanhã?"),
        text_from(JOAO, "wamid.BATCH2", "Vocês têm o tamanho M?"),
    ]);
    value["statuses"] = value_of("statuses.read.json")["statuses"].clone();
    let mut other_number = value_of("messages.text.json");
    other_number["metadata"]["phone_number_id"] = json!("999999999999999");
    let body = envelope(vec![
        json!({ "field": "messages", "value": value }),
        json!({ "field": "messages", "value": other_number }),
    ]);
    let (status, response) = conversa.signed_json("loja-meta-batch", &body).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["recorded"], 2, "{response}");
    assert_eq!(response["ignored"], 1, "{response}");
    eventually("answers to both", || {
        !fake.texts_to(MARIA).is_empty() && !fake.texts_to(JOAO).is_empty()
    })
    .await;

    // Every other type of the fixtures is recorded as what it is; only text-like ones are answered.
    let mut kinds = Vec::new();
    for (name, number) in [
        ("messages.audio.json", "5511900000001"),
        ("messages.image.json", "5511900000002"),
        ("messages.reaction.json", "5511900000003"),
        ("messages.interactive.button_reply.json", "5511900000004"),
        ("messages.button.template-quick-reply.json", "5511900000005"),
        ("messages.reply-context.json", "5511900000006"),
    ] {
        let mut value = value_of(name);
        value["messages"][0]["from"] = json!(number);
        value["contacts"][0]["wa_id"] = json!(number);
        let (status, response) = conversa
            .signed_json(
                "loja-meta-batch",
                &envelope(vec![json!({ "field": "messages", "value": value })]),
            )
            .await;
        assert_eq!(
            (status, &response["recorded"]),
            (200, &json!(1)),
            "{name}: {response}"
        );
        let history = conversa
            .get(&key, &format!("/api/v1/conversations/{number}/messages"))
            .await;
        let first = history.as_array().unwrap().last().unwrap().clone();
        kinds.push((
            first["kind"].as_str().unwrap().to_owned(),
            first["text"].clone(),
        ));
    }
    assert_eq!(
        kinds,
        [
            ("audio".to_owned(), json!("")),
            ("image".to_owned(), json!("Esse modelo tem no tamanho M?")),
            ("reaction".to_owned(), json!("👍")),
            ("interactive".to_owned(), json!("Ver horários")),
            ("interactive".to_owned(), json!("Confirmar")),
            ("text".to_owned(), json!("Perfeito, passo aí às 10h então")),
        ]
    );
    eventually("answers to the text-like messages", || {
        ["5511900000002", "5511900000006"]
            .iter()
            .all(|n| !fake.texts_to(n).is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        fake.texts_to("5511900000001").is_empty(),
        "a voice note was answered"
    );
    assert!(
        fake.texts_to("5511900000003").is_empty(),
        "a reaction was answered"
    );
    conversa.stop().await;
}

#[tokio::test]
async fn echoes_failed_statuses_and_an_expired_token() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, graph) = FakeGraph::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let tenant = "loja-meta-problems";
    let key = conversa.tenant(tenant, &graph).await;

    let (status, _) = conversa.signed(tenant, fixture("messages.text.json")).await;
    assert_eq!(status, 200);
    eventually("the answer", || !fake.texts_to(MARIA).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The answer fails asynchronously: the 24-hour window had closed.
    let mut failed = value_of("statuses.failed.131047.json");
    failed["statuses"][0]["id"] = json!(OUR_FIRST_ID);
    let (status, body) = conversa
        .signed_json(
            tenant,
            &envelope(vec![json!({ "field": "messages", "value": failed })]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let history = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}/messages"))
        .await;
    assert_eq!(history[0]["status"], "failed", "{history}");
    // … and the conversation is handed to a human with a clear reason.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conversation = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}"))
        .await;
    assert_eq!(
        (
            conversation["state"].as_str(),
            conversation["reason"].as_str()
        ),
        (Some("AGUARDANDO_HUMANO"), Some("outside_window")),
        "{conversation}"
    );

    // The business answers from the WhatsApp Business app: a human took over.
    let echo = json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "5511988887777", "phone_number_id": NUMBER },
        "message_echoes": [{
            "from": "5511988887777", "to": MARIA, "id": "wamid.ECHO1", "timestamp": "1749570900",
            "type": "text", "text": { "body": "Oi Maria, aqui é a Ana." }
        }]
    });
    let (status, body) = conversa
        .signed_json(
            tenant,
            &envelope(vec![
                json!({ "field": "smb_message_echoes", "value": echo }),
            ]),
        )
        .await;
    assert_eq!((status, &body["recorded"]), (200, &json!(1)), "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conversation = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}"))
        .await;
    assert_eq!(conversation["state"], "HUMANO_RESPONDEU", "{conversation}");
    assert_eq!(conversation["reason"], "phone_reply");

    // An expired token reported in a webhook: the tenant needs attention.
    let expired = json!({
        "messaging_product": "whatsapp",
        "metadata": { "phone_number_id": NUMBER },
        "errors": [{ "code": 190, "title": "Access token has expired" }]
    });
    let (status, _) = conversa
        .signed_json(
            tenant,
            &envelope(vec![json!({ "field": "messages", "value": expired })]),
        )
        .await;
    assert_eq!(status, 200);
    let flag = attention().get(&TenantId::parse(tenant).unwrap()).unwrap();
    assert_eq!(flag.provider, "meta");
    let ready: Value = conversa
        .http
        .get(format!("{}/ready", conversa.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["checks"]["providers"]["needs_attention"][tenant]["provider"], "meta",
        "{ready}"
    );
    let metrics = conversa.metrics().await;
    for line in [
        r#"conversa_webhook_events_total{provider="meta",result="outside_window"} 1"#,
        r#"conversa_webhook_events_total{provider="meta",result="credentials_rejected"} 1"#,
        r#"conversa_provider_attention{provider="meta",tenant="loja-meta-problems"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    conversa.stop().await;
}

// ---- MetaClient alone ----

fn client(graph: &str, tenant: &str, attempts: u32) -> MetaClient {
    MetaClient::new(
        shared_http_client(Duration::from_millis(500)),
        &TenantId::parse(tenant).unwrap(),
        Some(graph),
        Some("v23.0"),
        NUMBER,
        ACCESS_TOKEN,
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
async fn the_client_sends_the_documented_request_and_returns_the_wamid() {
    let (fake, graph) = FakeGraph::start().await;
    let client = client(&graph, "meta-client-send", 3);
    let text = "Temos sim! O tamanho M está disponível na loja.";
    let receipt = client.send_text(&maria(), text).await.unwrap();
    assert_eq!(receipt.provider_id.as_deref(), Some(OUR_FIRST_ID));
    let calls = fake.all();
    let [call] = calls.as_slice() else {
        panic!("expected one call, got {calls:?}")
    };
    let request = fixture_json("outbound.text.request.json");
    assert_eq!(call.path, MESSAGES_PATH);
    assert_eq!(
        call.authorization.as_deref(),
        Some(format!("Bearer {ACCESS_TOKEN}").as_str())
    );
    assert_eq!(call.body, request["body"]);
}

#[tokio::test]
async fn the_client_shows_typing_only_on_a_remembered_inbound_message() {
    let (fake, graph) = FakeGraph::start().await;
    let client = client(&graph, "meta-client-typing", 1);
    let joao = ContactId::parse("5511977770000").unwrap();
    client.typing(&joao, true).await.unwrap();
    assert!(fake.all().is_empty(), "no inbound message, no indicator");
    meta::remember_inbound(NUMBER, &joao, "wamid.JOAO1");
    client.typing(&joao, true).await.unwrap();
    client.typing(&joao, false).await.unwrap();
    let typing = fake.typing_requests();
    assert_eq!(typing.len(), 1);
    let mut expected = fixture_json("outbound.typing-indicator.request.json")["body"].clone();
    expected["message_id"] = json!("wamid.JOAO1");
    assert_eq!(typing[0], expected);
}

#[tokio::test]
async fn graph_errors_are_classified() {
    let (fake, graph) = FakeGraph::start().await;
    let tenant = "meta-client-errors";
    let client = client(&graph, tenant, 3);

    // Meta's rate limits: retryable, but left to the caller's longer backoff.
    for name in ["outbound.error.130429.json", "outbound.error.131056.json"] {
        let before = fake.all().len();
        fake.fail_next(400, fixture_json(name));
        let error = client.send_text(&maria(), "oi").await.unwrap_err();
        assert!(error.retryable, "{name}: {error}");
        assert!(
            error
                .message
                .starts_with("meta sendText: rate_limited (HTTP 400, code 13"),
            "{error}"
        );
        assert_eq!(
            fake.all().len(),
            before + 1,
            "{name} is not retried in the client"
        );
    }

    // Outside the 24-hour window: final.
    fake.fail_next(
        400,
        json!({ "error": { "message": "(#131047) Re-engagement message", "code": 131047,
                           "error_data": { "details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number." } } }),
    );
    let error = client.send_text(&maria(), "oi").await.unwrap_err();
    assert!(!error.retryable);
    assert!(
        error
            .message
            .starts_with("meta sendText: outside_window (HTTP 400, code 131047): Message failed"),
        "{error}"
    );

    // A server error is retried here.
    fake.fail_next(
        500,
        json!({ "error": { "message": "An unknown error occurred", "code": 1 } }),
    );
    let before = fake.texts_to(MARIA).len();
    client.send_text(&maria(), "oi").await.unwrap();
    assert_eq!(fake.texts_to(MARIA).len(), before + 2);

    // Another 4xx: final.
    fake.fail_next(
        400,
        json!({ "error": { "message": "(#100) Invalid parameter", "code": 100 } }),
    );
    let error = client.send_text(&maria(), "oi").await.unwrap_err();
    assert!(!error.retryable);
    assert!(
        error
            .message
            .starts_with("meta sendText: rejected (HTTP 400, code 100)"),
        "{error}"
    );

    // An expired token: final, never shown, and the tenant needs attention until a send works.
    fake.fail_next(
        401,
        json!({ "error": { "message": format!("Error validating access token {ACCESS_TOKEN}: Session has expired"),
                           "type": "OAuthException", "code": 190 } }),
    );
    let error = client.send_text(&maria(), "oi").await.unwrap_err();
    assert!(!error.retryable);
    assert!(
        error
            .message
            .starts_with("meta sendText: token_expired (HTTP 401, code 190)"),
        "{error}"
    );
    assert!(!error.message.contains(ACCESS_TOKEN), "{error}");
    let tenant = TenantId::parse(tenant).unwrap();
    assert!(attention().get(&tenant).is_some());
    client.send_text(&maria(), "oi").await.unwrap();
    assert!(attention().get(&tenant).is_none());
}

#[tokio::test]
async fn long_answers_are_split_below_meta_s_limit() {
    let (fake, graph) = FakeGraph::start().await;
    let client = client(&graph, "meta-client-long", 1);
    let paragraph = "Temos várias opções de tamanho e cor. ".repeat(60);
    let text = format!("{paragraph}\n\n{paragraph}\n\n{paragraph}");
    assert!(text.chars().count() > 4096);
    client.send_text(&maria(), &text).await.unwrap();
    let sent = fake.texts_to(MARIA);
    assert!(sent.len() >= 2, "{}", sent.len());
    assert!(sent.iter().all(|part| part.chars().count() <= 4096));
    assert_eq!(
        sent.join(" ").split_whitespace().count(),
        text.split_whitespace().count()
    );
}

#[tokio::test]
async fn a_send_refused_outside_the_window_hands_the_conversation_to_a_human() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, graph) = FakeGraph::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let tenant = "loja-meta-window";
    let key = conversa.tenant(tenant, &graph).await;
    // The send itself is refused with 131047 (not a later status): never retried, and only a
    // person (or a template) can go on.
    fake.fail_next(
        400,
        json!({ "error": { "message": "(#131047) Re-engagement message", "code": 131047,
                           "type": "OAuthException", "fbtrace_id": "Az1" } }),
    );
    let (status, _) = conversa.signed(tenant, fixture("messages.text.json")).await;
    assert_eq!(status, 200);
    let mut handed_off = Value::Null;
    for _ in 0..200 {
        handed_off = conversa
            .get(&key, &format!("/api/v1/conversations/{MARIA}"))
            .await;
        if handed_off["state"] == "AGUARDANDO_HUMANO" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        (handed_off["state"].as_str(), handed_off["reason"].as_str()),
        (Some("AGUARDANDO_HUMANO"), Some("outside_window")),
        "{handed_off}"
    );
    let history = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}/messages"))
        .await;
    assert_eq!(history[0]["status"], "failed", "{history}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.texts_to(MARIA).len(),
        1,
        "one attempt: the refused send is not retried, and nothing else is sent"
    );
    conversa.stop().await;
}
