//! Test peers for the LLM tests: a fake Evolution API that records what Conversa sends, a server
//! speaking the OpenAI chat-completions protocol with scripted behaviour (and `/v1/embeddings`,
//! answered with real bag-of-words hashing vectors), and a running Conversa.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub(crate) const TOKEN: &str = "s3cr3t-shared-token";

/// Records every request Conversa makes to "Evolution" and answers like it.
#[derive(Clone, Default)]
pub(crate) struct FakeEvolution {
    pub(crate) captured: Arc<Mutex<Vec<(String, Value)>>>,
}

impl FakeEvolution {
    pub(crate) async fn start() -> (Self, SocketAddr) {
        let fake = Self::default();
        let app = axum::Router::new()
            .fallback(evolution)
            .with_state(fake.clone());
        (fake, serve(app).await)
    }

    pub(crate) fn texts_to(&self, number: &str) -> Vec<String> {
        self.captured
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, b)| p.starts_with("/message/sendText/") && b["number"] == number)
            .map(|(_, b)| b["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

async fn evolution(
    State(fake): State<FakeEvolution>,
    request: Request,
) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let n = {
        let mut c = fake.captured.lock().unwrap();
        c.push((path, body));
        c.len()
    };
    (
        StatusCode::CREATED,
        axum::Json(json!({"key": {"id": format!("3EB0LLM{n:015}")}})),
    )
        .into_response()
}

/// What the fake LLM does with the next requests.
#[derive(Clone, Debug)]
pub(crate) enum Script {
    /// Answer this text.
    Answer(String),
    /// Wait, then answer (longer than the client timeout = a timeout; also "slow headers").
    Delay(Duration, String),
    /// Answer with this HTTP status and an OpenAI error body.
    Status(u16),
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with an empty completion.
    Empty,
    /// 200 with a refusal.
    Refusal,
}

#[derive(Clone)]
pub(crate) struct FakeLlm {
    /// Behaviours consumed in order; the last one repeats.
    pub(crate) script: Arc<Mutex<Vec<Script>>>,
    pub(crate) requests: Arc<Mutex<Vec<Value>>>,
    /// The inputs of every embeddings request, one list per request.
    pub(crate) embedded: Arc<Mutex<Vec<Vec<String>>>>,
    /// While true, `/v1/embeddings` answers 503.
    pub(crate) embeddings_down: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeLlm {
    pub(crate) async fn start(script: Vec<Script>) -> (Self, SocketAddr) {
        let fake = Self {
            script: Arc::new(Mutex::new(script)),
            requests: Arc::default(),
            embedded: Arc::default(),
            embeddings_down: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(chat))
            .route("/v1/embeddings", axum::routing::post(embeddings))
            .with_state(fake.clone());
        (fake, serve(app).await)
    }

    pub(crate) fn set(&self, script: Vec<Script>) {
        *self.script.lock().unwrap() = script;
    }

    pub(crate) fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    pub(crate) fn embedded(&self) -> Vec<Vec<String>> {
        self.embedded.lock().unwrap().clone()
    }

    pub(crate) fn embeddings_down(&self, down: bool) {
        self.embeddings_down
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `/v1/embeddings` per the OpenAI protocol: a string or an array of strings in, one vector per
/// input out (in reverse order, with their indexes, as servers may do).
async fn embeddings(
    State(fake): State<FakeLlm>,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or_default().to_owned())
            .collect(),
        _ => return (StatusCode::BAD_REQUEST, "input must be text").into_response(),
    };
    fake.embedded.lock().unwrap().push(inputs.clone());
    if fake
        .embeddings_down
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": {"message": "down", "type": "server_error", "param": null, "code": null}})),
        )
            .into_response();
    }
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(index, text)| {
            json!({"object": "embedding", "index": index,
                   "embedding": engine::testsuite::hashing_embedding(text)})
        })
        .collect();
    axum::Json(json!({
        "object": "list", "model": body["model"], "data": data,
        "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}
    }))
    .into_response()
}

async fn chat(
    State(fake): State<FakeLlm>,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    fake.requests.lock().unwrap().push(body.clone());
    let step = {
        let mut script = fake.script.lock().unwrap();
        if script.len() > 1 {
            script.remove(0)
        } else {
            script[0].clone()
        }
    };
    let completion = |text: &str| {
        axum::Json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
        }))
        .into_response()
    };
    match step {
        Script::Answer(text) => completion(&text),
        Script::Delay(d, text) => {
            tokio::time::sleep(d).await;
            completion(&text)
        }
        Script::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            axum::Json(json!({"error": {"message": "scripted failure", "type": "server_error", "param": null, "code": null}})),
        )
            .into_response(),
        Script::Malformed => (StatusCode::OK, [("content-type", "application/json")], "{\"choices\": [").into_response(),
        Script::Empty => completion(""),
        Script::Refusal => axum::Json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": "Não posso ajudar."}, "finish_reason": "stop"}]
        }))
        .into_response(),
    }
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A running Conversa on loopback.
pub(crate) struct Conversa {
    pub(crate) base: String,
    pub(crate) admin: String,
    pub(crate) http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Conversa {
    pub(crate) async fn start(
        data_dir: &std::path::Path,
        configure: impl FnOnce(&mut gateway::config::Config),
    ) -> Self {
        let mut config = gateway::config::Config::for_tests(data_dir.to_path_buf());
        config.deadline_scan = Duration::from_millis(200);
        configure(&mut config);
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

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Creates an Evolution tenant with fast debounce and its knowledge; returns its API key.
    pub(crate) async fn tenant(
        &self,
        id: &str,
        evolution: SocketAddr,
        settings: Value,
        knowledge: &str,
    ) -> String {
        let mut all = json!({"debounce_ms": 200, "max_buffer_ms": 1000});
        for (k, v) in settings.as_object().unwrap() {
            all[k] = v.clone();
        }
        let resp = self
            .http
            .post(format!("{}/api/v1/tenants", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({
                "id": id, "name": format!("Loja {id}"),
                "provider": {"kind": "evolution", "base_url": format!("http://{evolution}"), "instance": id,
                             "api_key": "evo-key", "webhook_token": TOKEN},
                "settings": all,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let key = resp.json::<Value>().await.unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_owned();
        let put = self
            .http
            .put(format!("{}/api/v1/knowledge", self.base))
            .bearer_auth(&key)
            .body(knowledge.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 200);
        key
    }

    /// Posts an Evolution text message from `number`.
    pub(crate) async fn customer(&self, tenant: &str, number: &str, id: &str, text: &str) {
        let body = json!({"event": "messages.upsert", "instance": tenant, "data": {
            "key": {"remoteJid": format!("{number}@s.whatsapp.net"), "fromMe": false, "id": id},
            "pushName": "Cliente", "message": {"conversation": text}, "messageTimestamp": 1749562325}});
        let resp = self
            .http
            .post(format!("{}/webhooks/evolution/{tenant}", self.base))
            .header("apikey", TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }

    pub(crate) async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn post(&self, key: &str, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn metrics(&self) -> String {
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

pub(crate) async fn eventually(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}
