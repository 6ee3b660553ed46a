//! An OpenAI-compatible server (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`) whose answers
//! take `--llm-latency`, so a run measures Conversa with an LLM of known speed and no cost.
//!
//! Completions are short, grounded-looking Portuguese answers; embeddings are a deterministic
//! bag-of-words hashing embedder (real vectors: similar texts get similar vectors).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Dimensions of the hashing embedder.
pub const EMBEDDING_DIMS: usize = 64;
/// The model the server claims to be.
pub const MODEL: &str = "loadtest-llm";

/// What the server was asked.
#[derive(Debug, Default)]
pub struct LlmStats {
    pub chat_requests: AtomicU64,
    pub embedding_requests: AtomicU64,
    pub embedded_inputs: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    latency: Duration,
    stats: Arc<LlmStats>,
}

/// A running OpenAI-compatible server.
#[derive(Debug)]
pub struct LlmServer {
    pub addr: SocketAddr,
    pub stats: Arc<LlmStats>,
    task: tokio::task::JoinHandle<()>,
}

impl LlmServer {
    pub async fn start(listen: SocketAddr, latency: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {listen} for the OpenAI-compatible server (--llm-listen): {e}"
            )
        })?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(LlmStats::default());
        let app = router(latency, stats.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, stats, task })
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server's routes (tests call it without a socket).
pub fn router(latency: Duration, stats: Arc<LlmStats>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .with_state(Arc::new(Shared { latency, stats }))
}

async fn models() -> axum::Json<Value> {
    axum::Json(
        json!({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "loadtest"}]}),
    )
}

async fn chat(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    shared.stats.chat_requests.fetch_add(1, Ordering::Relaxed);
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON body");
    };
    tokio::time::sleep(shared.latency).await;
    let model = request["model"].as_str().unwrap_or(MODEL).to_owned();
    let question = request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let content =
        "Claro! Abrimos de segunda a sábado, das 9h às 18h, e entregamos em toda a cidade.";
    let prompt_tokens = (body.len() / 4) as u64;
    let completion_tokens = (content.len() / 4) as u64;
    let id = format!("chatcmpl-lt{}", question.len());
    if request["stream"] == true {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_749_562_620u64, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut sse = String::new();
        for event in [
            chunk(
                json!({"role": "assistant", "content": content}),
                Value::Null,
            ),
            chunk(json!({}), json!("stop")),
        ] {
            sse.push_str(&format!("data: {event}\n\n"));
        }
        sse.push_str("data: [DONE]\n\n");
        return ([(header::CONTENT_TYPE, "text/event-stream")], sse).into_response();
    }
    axum::Json(json!({
        "id": id, "object": "chat.completion", "created": 1_749_562_620u64, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response()
}

async fn embeddings(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    shared
        .stats
        .embedding_requests
        .fetch_add(1, Ordering::Relaxed);
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON body");
    };
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "input must be a string or an array of strings",
            );
        }
    };
    shared
        .stats
        .embedded_inputs
        .fetch_add(inputs.len() as u64, Ordering::Relaxed);
    tokio::time::sleep(shared.latency / 4).await;
    let tokens: usize = inputs.iter().map(|s| s.len() / 4).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": embed(text)}))
        .collect();
    axum::Json(json!({
        "object": "list", "data": data, "model": request["model"].as_str().unwrap_or(MODEL),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

/// A normalised bag-of-words vector: each lowercase word adds 1 to one of the dimensions.
pub fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; EMBEDDING_DIMS];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        // FNV-1a: stable across runs and platforms.
        let hash = word
            .to_lowercase()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        v[(hash % EMBEDDING_DIMS as u64) as usize] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn speaks_the_openai_protocol_with_the_configured_latency() {
        let server = LlmServer::start("127.0.0.1:0".parse().unwrap(), Duration::from_millis(120))
            .await
            .unwrap();
        let base = format!("http://{}/v1", server.addr);
        let http = reqwest::Client::new();
        let started = std::time::Instant::now();
        let chat: Value = http
            .post(format!("{base}/chat/completions"))
            .json(
                &json!({"model": "m", "messages": [{"role": "user", "content": "abrem amanhã?"}]}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(120));
        assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
        assert!(chat["usage"]["total_tokens"].as_u64().unwrap() > 0);
        let emb: Value = http
            .post(format!("{base}/embeddings"))
            .json(&json!({"model": "e", "input": ["a b", "c"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(emb["data"].as_array().unwrap().len(), 2);
        assert_eq!(
            emb["data"][1]["embedding"].as_array().unwrap().len(),
            EMBEDDING_DIMS
        );
        let models: Value = http
            .get(format!("{base}/models"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(models["data"][0]["id"], MODEL);
        assert_eq!(server.stats.chat_requests.load(Ordering::Relaxed), 1);
        assert_eq!(server.stats.embedded_inputs.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn similar_texts_get_similar_vectors() {
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let q = embed("qual o horário da loja");
        assert!(dot(&q, &embed("horário da loja")) > dot(&q, &embed("frete grátis acima de 200")));
    }
}
