//! End to end through real sockets: the `conversa` server on 127.0.0.1:0, a real HTTP server
//! playing Evolution API (recording what Conversa sends), and the shared Evolution fixtures as
//! webhook bodies.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/evolution");
const TOKEN: &str = "s3cr3t-shared-token";
const MARIA: &str = "5511999999999";
const KNOWLEDGE: &str = "Loja Centro: roupas femininas e masculinas.\n\n\
Nosso horário de funcionamento: abrimos de segunda a sábado, das 9h às 18h. Amanhã e em todos os dias úteis a loja abre às 9h. Aos domingos e feriados a loja fica fechada.\n\n\
Entregas: fazemos entregas em toda a cidade de São Paulo em até 2 dias úteis. O frete é grátis para compras acima de R$ 200.\n\n\
Tamanhos: trabalhamos com os tamanhos P, M, G e GG em todos os modelos da coleção. O tamanho M está disponível na loja para todos os modelos.\n\n\
Trocas: trocas podem ser feitas em até 30 dias com a nota fiscal.";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

/// One request Conversa made to the fake provider.
#[derive(Debug, Clone)]
struct Captured {
    path: String,
    apikey: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct FakeEvolution {
    captured: Arc<Mutex<Vec<Captured>>>,
    sends: Arc<Mutex<u32>>,
    /// Answer this status to sendText while set.
    fail_with: Arc<Mutex<Option<u16>>>,
}

impl FakeEvolution {
    async fn start() -> (Self, SocketAddr) {
        let fake = FakeEvolution::default();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, addr)
    }

    fn texts_to(&self, number: &str) -> Vec<String> {
        self.captured
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path.starts_with("/message/sendText/") && c.body["number"] == number)
            .map(|c| c.body["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn all(&self) -> Vec<Captured> {
        self.captured.lock().unwrap().clone()
    }
}

async fn record(State(fake): State<FakeEvolution>, request: Request) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    let apikey = request
        .headers()
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if path.starts_with("/message/sendText/")
        && let Some(status) = *fake.fail_with.lock().unwrap()
    {
        return (StatusCode::from_u16(status).unwrap(), "{}").into_response();
    }
    fake.captured.lock().unwrap().push(Captured {
        path: path.clone(),
        apikey,
        body: body.clone(),
    });
    if path.starts_with("/message/sendText/") {
        let n = {
            let mut sends = fake.sends.lock().unwrap();
            *sends += 1;
            *sends
        };
        // The first send gets the id the delivery fixtures refer to.
        let id = if n == 1 {
            "3EB0C5A277F7F9B6C5990E".to_owned()
        } else {
            format!("3EB0FAKE{n:014}")
        };
        let mut response = fixture_json("outbound.sendText.response-201.json");
        response["key"]["id"] = json!(id);
        response["key"]["remoteJid"] = json!(format!(
            "{}@s.whatsapp.net",
            body["number"].as_str().unwrap_or("")
        ));
        response["message"]["conversation"] = body["text"].clone();
        return (StatusCode::CREATED, axum::Json(response)).into_response();
    }
    (StatusCode::CREATED, axum::Json(json!({}))).into_response()
}

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

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        into(req.send().await.unwrap()).await
    }

    async fn tenant_api(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        into(req.send().await.unwrap()).await
    }

    /// Creates the `loja-centro` tenant on the fake Evolution, with fast debounce, and its knowledge.
    async fn tenant(&self, evolution: SocketAddr) -> String {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/tenants",
                Some(json!({
                    "id": "loja-centro",
                    "name": "Loja Centro",
                    "provider": {"kind": "evolution", "base_url": format!("http://{evolution}"), "instance": "loja-centro",
                                 "api_key": "B6D711FC-DE4D-4FD5-9365-44120E713976", "webhook_token": TOKEN},
                    "settings": {"debounce_ms": 300, "max_buffer_ms": 2000},
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let key = body["api_key"].as_str().unwrap().to_owned();
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

    async fn webhook(&self, body: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}/webhooks/evolution/loja-centro", self.base))
            .header("content-type", "application/json")
            .header("apikey", TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        into(resp).await
    }
}

async fn into(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A text message from `number` with a fresh id, shaped like the text fixture.
fn text_from(number: &str, id: &str, text: &str) -> Vec<u8> {
    let mut body = fixture_json("messages.upsert.text-conversation.json");
    body["data"]["key"]["remoteJid"] = json!(format!("{number}@s.whatsapp.net"));
    body["data"]["key"]["id"] = json!(id);
    body["data"]["message"]["conversation"] = json!(text);
    serde_json::to_vec(&body).unwrap()
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

async fn state_of(conversa: &Conversa, key: &str, contact: &str) -> Value {
    conversa
        .tenant_api(
            key,
            reqwest::Method::GET,
            &format!("/api/v1/conversations/{contact}"),
            None,
        )
        .await
        .1
}

#[tokio::test]
async fn a_customer_question_is_answered_through_evolution() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant(evo).await;

    let (status, body) = conversa
        .webhook(fixture("messages.upsert.text-conversation.json"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("an answer to Maria", || !fake.texts_to(MARIA).is_empty()).await;
    let answer = &fake.texts_to(MARIA)[0];
    assert!(answer.contains("9h"), "{answer}");
    let send = fake
        .all()
        .into_iter()
        .find(|c| c.path == "/message/sendText/loja-centro")
        .unwrap();
    assert_eq!(
        send.apikey.as_deref(),
        Some("B6D711FC-DE4D-4FD5-9365-44120E713976")
    );
    let paths: Vec<String> = fake.all().into_iter().map(|c| c.path).collect();
    let presence = paths
        .iter()
        .position(|p| p == "/chat/sendPresence/loja-centro");
    let text = paths
        .iter()
        .position(|p| p == "/message/sendText/loja-centro");
    assert!(
        presence.is_some() && presence < text,
        "composing must come before the answer: {paths:?}"
    );

    // History: the question and the answer, newest first; the answer gets its provider id.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, history) = conversa
        .tenant_api(
            &key,
            reqwest::Method::GET,
            &format!("/api/v1/conversations/{MARIA}/messages"),
            None,
        )
        .await;
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0]["author"], "assistant");
    assert_eq!(history[0]["status"], "sent");
    assert_eq!(history[1]["text"], "Oi, vocês abrem amanhã?");

    // Delivery acks for our message move it forward.
    let (status, _) = conversa
        .webhook(fixture("messages.update.delivery-ack.json"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = conversa.webhook(fixture("messages.update.read.json")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, history) = conversa
        .tenant_api(
            &key,
            reqwest::Method::GET,
            &format!("/api/v1/conversations/{MARIA}/messages"),
            None,
        )
        .await;
    assert_eq!(history[0]["status"], "read");
    conversa.stop().await;
}

#[tokio::test]
async fn duplicates_groups_echoes_and_non_message_events_are_answered_200_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant(evo).await;

    for _ in 0..3 {
        let (status, _) = conversa
            .webhook(fixture("messages.upsert.text-conversation.json"))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    for name in [
        "messages.upsert.group.json",
        "send.message.json",
        "connection.update.open.json",
        "connection.update.close.json",
        "qrcode.updated.json",
        "messages.update.read.json",
    ] {
        let (status, body) = conversa.webhook(fixture(name)).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
    }
    eventually("one answer", || fake.texts_to(MARIA).len() == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        fake.texts_to(MARIA).len(),
        1,
        "a duplicate delivery was answered"
    );
    assert!(
        fake.texts_to("5511977776666").is_empty(),
        "a group message was answered"
    );
    let (_, list) = conversa
        .tenant_api(&key, reqwest::Method::GET, "/api/v1/conversations", None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let state = state_of(&conversa, &key, MARIA).await;
    assert_eq!(
        state["state"], "IA_ATIVA",
        "an echo of our own send was taken for a human"
    );

    let text = conversa
        .http
        .get(format!("{}/metrics", conversa.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"conversa_webhook_events_total{provider="evolution",result="duplicate"} 2"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"conversa_webhook_events_total{provider="evolution",result="ignored_group"} 1"#
    ));
    assert!(text.contains(r#"conversa_turns_total{outcome="answered"} 1"#));
    conversa.stop().await;
}

#[tokio::test]
async fn the_business_phone_takes_over_and_the_operator_works_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant(evo).await;

    let (status, _) = conversa
        .webhook(fixture("messages.upsert.from-me.json"))
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = state_of(&conversa, &key, MARIA).await;
    assert_eq!(state["state"], "HUMANO_RESPONDEU", "{state}");
    assert_eq!(state["reason"], "phone_reply");

    // The customer writes: recorded, never answered.
    conversa
        .webhook(fixture("messages.upsert.text-conversation.json"))
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(fake.texts_to(MARIA).is_empty());

    // The operator replies through the API, then gives the conversation back.
    let (status, msg) = conversa
        .tenant_api(
            &key,
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{MARIA}/messages"),
            Some(json!({"text": "Oi Maria, sou a Ana."})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{msg}");
    assert_eq!(msg["author"], "human");
    eventually("the operator's reply sent", || {
        fake.texts_to(MARIA) == ["Oi Maria, sou a Ana."]
    })
    .await;
    let (status, conv) = conversa
        .tenant_api(
            &key,
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{MARIA}/release"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(conv["state"], "IA_ATIVA");
    let (_, waiting) = conversa
        .tenant_api(
            &key,
            reqwest::Method::GET,
            "/api/v1/conversations?state=AGUARDANDO_HUMANO",
            None,
        )
        .await;
    assert!(waiting["items"].as_array().unwrap().is_empty());
    let (status, conv) = conversa
        .tenant_api(
            &key,
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{MARIA}/takeover"),
            None,
        )
        .await;
    assert_eq!(
        (status, conv["state"].as_str()),
        (StatusCode::OK, Some("AGUARDANDO_HUMANO"))
    );
    let (_, waiting) = conversa
        .tenant_api(
            &key,
            reqwest::Method::GET,
            "/api/v1/conversations?state=AGUARDANDO_HUMANO",
            None,
        )
        .await;
    assert_eq!(waiting["items"][0]["contact"], MARIA);
    conversa.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant(evo).await;
    let url = format!("{}/webhooks/evolution/loja-centro", conversa.base);
    let body = fixture("messages.upsert.text-conversation.json");

    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (conversa.http.post(&url).body(body.clone()), 401),
        (
            conversa
                .http
                .post(&url)
                .header("apikey", "wrong")
                .body(body.clone()),
            401,
        ),
        (
            conversa
                .http
                .post(format!("{url}?token={TOKEN}"))
                .body(body.clone()),
            200,
        ),
        (
            conversa
                .http
                .post(&url)
                .bearer_auth(TOKEN)
                .body(body.clone()),
            200,
        ),
        (
            conversa
                .http
                .post(format!("{}/webhooks/evolution/nao-existe", conversa.base))
                .header("apikey", TOKEN)
                .body(body.clone()),
            404,
        ),
        (
            conversa
                .http
                .post(&url)
                .header("apikey", TOKEN)
                .body("{not json"),
            400,
        ),
        (
            conversa
                .http
                .post(&url)
                .header("apikey", TOKEN)
                .body(vec![0xff, 0xfe, 0x00]),
            400,
        ),
        (
            conversa.http.post(&url).header("apikey", TOKEN).body(""),
            400,
        ),
        (
            conversa
                .http
                .post(&url)
                .header("apikey", TOKEN)
                .body(vec![b' '; 3 * 1024 * 1024]),
            413,
        ),
        (
            conversa
                .http
                .get(format!("{}/api/v1/tenants", conversa.base)),
            401,
        ),
        (
            conversa
                .http
                .get(format!("{}/api/v1/settings", conversa.base))
                .bearer_auth("cvk_wrong"),
            401,
        ),
        (
            conversa
                .http
                .put(format!("{}/api/v1/settings", conversa.base))
                .bearer_auth(&key)
                .json(&json!({"debounce_ms": "x"})),
            422,
        ),
        (
            conversa
                .http
                .put(format!("{}/api/v1/settings", conversa.base))
                .bearer_auth(&key)
                .json(&json!({"nope": 1})),
            422,
        ),
        (
            conversa
                .http
                .put(format!("{}/api/v1/knowledge", conversa.base))
                .bearer_auth(&key)
                .body("a ".repeat(25_001)),
            413,
        ),
        (
            conversa
                .http
                .get(format!("{}/api/v1/conversations?state=NOPE", conversa.base))
                .bearer_auth(&key),
            422,
        ),
        (
            conversa.http.get(format!("{}/nothing/here", conversa.base)),
            404,
        ),
    ];
    for (i, (request, expected)) in cases.into_iter().enumerate() {
        let resp = request.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, expected, "case {i}: {text}");
        if expected != 200 {
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("case {i}: not JSON: {text}"));
            assert!(
                v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                "case {i}: {v}"
            );
        }
    }
    // The settings error names the field.
    let (_, err) = conversa
        .tenant_api(
            &key,
            reqwest::Method::PUT,
            "/api/v1/settings",
            Some(json!({"confidence_threshold": 2})),
        )
        .await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("confidence_threshold"),
        "{err}"
    );
    conversa.stop().await;
}

#[tokio::test]
async fn overlapping_webhooks_from_many_contacts_never_cross() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, evo) = FakeEvolution::start().await;
    let conversa = Arc::new(Conversa::start(dir.path()).await);
    let key = conversa.tenant(evo).await;
    let contacts: Vec<String> = (0..40).map(|i| format!("55119{i:08}")).collect();
    let mut tasks = Vec::new();
    for (i, contact) in contacts.iter().enumerate() {
        let conversa = conversa.clone();
        let body = text_from(
            contact,
            &format!("ID{i:06}"),
            &format!("qual o horário de funcionamento? pedido {contact}"),
        );
        tasks.push(tokio::spawn(async move { conversa.webhook(body).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    eventually("every contact answered", || {
        contacts.iter().all(|c| !fake.texts_to(c).is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for contact in &contacts {
        assert_eq!(fake.texts_to(contact).len(), 1, "{contact}");
        let (_, history) = conversa
            .tenant_api(
                &key,
                reqwest::Method::GET,
                &format!("/api/v1/conversations/{contact}/messages"),
                None,
            )
            .await;
        let inbound: Vec<&Value> = history
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["direction"] == "in")
            .collect();
        assert_eq!(inbound.len(), 1);
        assert!(
            inbound[0]["text"]
                .as_str()
                .unwrap()
                .ends_with(contact.as_str()),
            "{inbound:?}"
        );
    }
    Arc::try_unwrap(conversa).ok().unwrap().stop().await;
}

#[tokio::test]
async fn suspended_tenants_record_but_never_answer_and_media_without_text_is_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant(evo).await;

    conversa
        .webhook(fixture("messages.upsert.audio-ptt.json"))
        .await;
    conversa
        .webhook(fixture("messages.upsert.image-caption.json"))
        .await;
    eventually("the caption answered", || fake.texts_to(MARIA).len() == 1).await;
    assert!(
        fake.texts_to(MARIA)[0].contains("M"),
        "{:?}",
        fake.texts_to(MARIA)
    );

    let (status, _) = conversa
        .admin(
            reqwest::Method::PATCH,
            "/api/v1/tenants/loja-centro",
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    conversa
        .webhook(text_from(
            MARIA,
            "SUSPENDED01",
            "qual o horário de funcionamento?",
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(fake.texts_to(MARIA).len(), 1, "a suspended tenant answered");
    let (_, history) = conversa
        .tenant_api(
            &key,
            reqwest::Method::GET,
            &format!("/api/v1/conversations/{MARIA}/messages?limit=10"),
            None,
        )
        .await;
    assert_eq!(history.as_array().unwrap().len(), 4, "{history}");
    let (_, tenant) = conversa
        .admin(reqwest::Method::GET, "/api/v1/tenants/loja-centro", None)
        .await;
    assert_eq!(tenant["status"], "suspended");
    assert!(!tenant.to_string().contains(TOKEN), "a secret was returned");
    conversa.stop().await;
}

#[tokio::test]
async fn a_pending_turn_survives_a_graceful_restart_and_is_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    conversa.tenant(evo).await;
    let (status, _) = conversa
        .admin(
            reqwest::Method::PATCH,
            "/api/v1/tenants/loja-centro",
            Some(json!({"settings": {"debounce_ms": 5000, "max_buffer_ms": 8000}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = conversa
        .webhook(fixture("messages.upsert.text-conversation.json"))
        .await;
    assert_eq!(status, StatusCode::OK);
    conversa.stop().await;
    assert!(fake.texts_to(MARIA).is_empty());

    let again = Conversa::start(dir.path()).await;
    let (status, _) = again
        .webhook(fixture("messages.upsert.text-conversation.json"))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a redelivery after restart is still a duplicate"
    );
    eventually("the pending turn answered", || {
        fake.texts_to(MARIA).len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(6000)).await;
    assert_eq!(fake.texts_to(MARIA).len(), 1);
    again.stop().await;
}

/// The real binary, killed with SIGKILL between the webhook's 200 and the answer.
#[tokio::test]
async fn a_killed_process_answers_after_restart_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, evo) = FakeEvolution::start().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_conversa"))
            .env("CONVERSA_LISTEN", format!("127.0.0.1:{port}"))
            .env("CONVERSA_DATA_DIR", dir.path())
            .env("CONVERSA_ADMIN_TOKEN", "kill-test-admin-token-0123")
            .env("CONVERSA_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let wait_up = || async {
        for _ in 0..200 {
            if http.get(format!("{base}/health")).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("conversa did not start");
    };
    let mut child = spawn();
    wait_up().await;
    let created = http
        .post(format!("{base}/api/v1/tenants"))
        .bearer_auth("kill-test-admin-token-0123")
        .json(&json!({"id": "loja-centro", "name": "Loja", "settings": {"debounce_ms": 3000, "max_buffer_ms": 5000},
                      "provider": {"kind": "evolution", "base_url": format!("http://{evo}"), "instance": "loja-centro", "api_key": "k", "webhook_token": TOKEN}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let key: Value = created.json().await.unwrap();
    let put = http
        .put(format!("{base}/api/v1/knowledge"))
        .bearer_auth(key["api_key"].as_str().unwrap())
        .body(KNOWLEDGE)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    let hook = http
        .post(format!("{base}/webhooks/evolution/loja-centro"))
        .header("apikey", TOKEN)
        .body(fixture("messages.upsert.text-conversation.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status().as_u16(), 200);
    child.kill().await.unwrap();
    let _ = child.wait().await;
    assert!(
        fake.texts_to(MARIA).is_empty(),
        "answered before the kill; the test proves nothing"
    );

    let mut child = spawn();
    wait_up().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while fake.texts_to(MARIA).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(fake.texts_to(MARIA).len(), 1, "{:?}", fake.texts_to(MARIA));
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_message_the_customer_edits_before_its_turn_is_answered_as_it_now_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    conversa.tenant(evo).await;
    // A debounce long enough that the edits below always land inside it.
    let (status, _) = conversa
        .admin(
            reqwest::Method::PATCH,
            "/api/v1/tenants/loja-centro",
            Some(json!({"settings": {"debounce_ms": 2000, "max_buffer_ms": 4000}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let edit = |id: &str, text: &str| {
        serde_json::to_vec(&json!({ "event": "messages.edited", "instance": "loja-centro", "data": {
            "key": { "remoteJid": format!("{MARIA}@s.whatsapp.net"), "fromMe": false, "id": id },
            "type": "MESSAGE_EDIT",
            "editedMessage": { "conversation": text },
            "timestampMs": "1749562900000"
        }}))
        .unwrap()
    };
    let (status, _) = conversa
        .webhook(fixture("messages.upsert.text-conversation.json"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = conversa
        .webhook(edit(
            "A1F3C2B9E7D84F1A9C0B3D5E6F708192",
            "Vocês fazem entregas em toda a cidade?",
        ))
        .await;
    assert_eq!(
        (status, &body["amended"]),
        (StatusCode::OK, &json!(1)),
        "{body}"
    );
    eventually("the answer to the edited question", || {
        !fake.texts_to(MARIA).is_empty()
    })
    .await;
    let answer = fake.texts_to(MARIA)[0].clone();
    assert!(
        answer.contains("ntreg"),
        "answers the edit, not the original: {answer}"
    );
    conversa.stop().await;
}
