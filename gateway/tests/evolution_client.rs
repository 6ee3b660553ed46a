//! `EvolutionClient` against a real HTTP server on 127.0.0.1 playing Evolution API v2: the exact
//! requests it makes, the provider ids it returns, and which failures it retries.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use engine::ContactId;
use engine::ports::Provider;
use gateway::providers::evolution::EvolutionClient;
use gateway::providers::{RetryPolicy, shared_http_client};
use serde_json::{Value, json};

const API_KEY: &str = "B6D711FC-DE4D-4FD5-9365-44120E713976";
const INSTANCE: &str = "loja-centro";
const CREATED: &str = include_str!("fixtures/evolution/outbound.sendText.response-201.json");
const NOT_ON_WHATSAPP: &str =
    include_str!("fixtures/evolution/outbound.sendText.error-400-not-on-whatsapp.json");
const UNAUTHORIZED: &str = include_str!("fixtures/evolution/outbound.error-401.json");
const SERVER_ERROR: &str =
    r#"{"status":500,"error":"Internal Server Error","response":{"message":"Connection Closed"}}"#;
const TEXT: &str = "Temos sim! O tamanho M está disponível na loja.";

/// The client's whole-request timeout in these tests.
const TIMEOUT: Duration = Duration::from_millis(300);

/// One request as the fake Evolution saw it.
#[derive(Debug)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Value,
}

/// What the fake Evolution answers to the next request.
#[derive(Debug)]
enum Reply {
    /// This status and JSON body (429 also carries `Retry-After: 1`).
    Json(u16, &'static str),
    /// A body that is not JSON.
    Plain(u16, &'static str),
    /// Answers 201 only after this long, later than the client waits.
    Slow(Duration),
}

#[derive(Debug, Default)]
struct FakeEvolution {
    script: Mutex<VecDeque<Reply>>,
    calls: Mutex<Vec<Recorded>>,
}

impl FakeEvolution {
    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

async fn play(
    State(fake): State<Arc<FakeEvolution>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.calls.lock().unwrap().push(Recorded {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
    });
    let reply = fake.script.lock().unwrap().pop_front();
    match reply.expect("the fake Evolution got more requests than scripted") {
        Reply::Json(code, body) => {
            let status = StatusCode::from_u16(code).unwrap();
            let mut response =
                (status, [("content-type", "application/json")], body).into_response();
            if status == StatusCode::TOO_MANY_REQUESTS {
                response
                    .headers_mut()
                    .insert("retry-after", "1".parse().unwrap());
            }
            response
        }
        Reply::Plain(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            (
                StatusCode::CREATED,
                [("content-type", "application/json")],
                CREATED,
            )
                .into_response()
        }
    }
}

/// Starts a fake Evolution answering `script` in order; returns its base URL.
async fn start(script: Vec<Reply>) -> (String, Arc<FakeEvolution>) {
    let fake = Arc::new(FakeEvolution {
        script: Mutex::new(script.into()),
        calls: Mutex::default(),
    });
    let app = Router::new().fallback(play).with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), fake)
}

fn retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

fn client(base_url: &str, attempts: u32) -> EvolutionClient {
    EvolutionClient::new(
        shared_http_client(TIMEOUT),
        base_url,
        INSTANCE,
        API_KEY,
        retry(attempts),
    )
}

fn maria() -> ContactId {
    ContactId::parse("5511999999999").unwrap()
}

#[tokio::test]
async fn send_text_posts_number_and_text_and_returns_the_whatsapp_id() {
    let (base_url, fake) = start(vec![Reply::Json(201, CREATED)]).await;
    let receipt = client(&base_url, 3)
        .send_text(&maria(), TEXT)
        .await
        .unwrap();
    assert_eq!(
        receipt.provider_id.as_deref(),
        Some("3EB0C5A277F7F9B6C5990E")
    );

    let calls = fake.calls.lock().unwrap();
    let [call] = calls.as_slice() else {
        panic!("expected one call, got {calls:?}")
    };
    assert_eq!(call.method, Method::POST);
    assert_eq!(call.path, "/message/sendText/loja-centro");
    assert_eq!(call.headers["apikey"], API_KEY);
    assert_eq!(call.headers["content-type"], "application/json");
    assert!(
        call.headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("conversa/")
    );
    assert_eq!(
        call.body,
        json!({ "number": "5511999999999", "text": TEXT })
    );
}

#[tokio::test]
async fn base_url_prefix_trailing_slash_and_escaped_instance() {
    let (base_url, fake) = start(vec![Reply::Json(201, CREATED), Reply::Json(201, "{}")]).await;
    let client = EvolutionClient::new(
        shared_http_client(TIMEOUT),
        &format!("{base_url}/evo/"),
        "loja centro/2",
        API_KEY,
        retry(1),
    );
    client.send_text(&maria(), "oi").await.unwrap();
    client.typing(&maria(), true).await.unwrap();
    let calls = fake.calls.lock().unwrap();
    assert_eq!(calls[0].path, "/evo/message/sendText/loja%20centro%2F2");
    assert_eq!(calls[1].path, "/evo/chat/sendPresence/loja%20centro%2F2");
}

#[tokio::test]
async fn a_2xx_without_json_is_a_success_without_id() {
    let (base_url, fake) = start(vec![Reply::Plain(200, "OK")]).await;
    let receipt = client(&base_url, 3)
        .send_text(&maria(), "oi")
        .await
        .unwrap();
    assert_eq!(receipt.provider_id, None);
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn not_on_whatsapp_is_final_and_says_why() {
    let (base_url, fake) = start(vec![Reply::Json(400, NOT_ON_WHATSAPP)]).await;
    let to = ContactId::parse("5511900000000").unwrap();
    let error = client(&base_url, 3).send_text(&to, "oi").await.unwrap_err();
    assert!(!error.retryable);
    assert_eq!(error.status, Some(400));
    assert_eq!(
        error.message,
        "evolution sendText: HTTP 400: 5511900000000 is not on whatsapp"
    );
    assert_eq!(fake.calls(), 1, "a 400 is not retried");
}

#[tokio::test]
async fn unauthorized_is_final_and_never_shows_the_key() {
    let (base_url, fake) = start(vec![Reply::Json(401, UNAUTHORIZED)]).await;
    let error = client(&base_url, 3)
        .send_text(&maria(), "oi")
        .await
        .unwrap_err();
    assert!(!error.retryable);
    assert_eq!(error.status, Some(401));
    assert_eq!(error.message, "evolution sendText: HTTP 401: Unauthorized");
    assert!(!error.message.contains(API_KEY));
    assert_eq!(fake.calls(), 1, "a 401 is not retried");
}

#[tokio::test]
async fn a_500_is_retried_until_it_succeeds() {
    let (base_url, fake) = start(vec![
        Reply::Json(500, SERVER_ERROR),
        Reply::Json(201, CREATED),
    ])
    .await;
    let receipt = client(&base_url, 3)
        .send_text(&maria(), TEXT)
        .await
        .unwrap();
    assert_eq!(
        receipt.provider_id.as_deref(),
        Some("3EB0C5A277F7F9B6C5990E")
    );
    let calls = fake.calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].body, calls[1].body,
        "the retry sends the same request"
    );
}

#[tokio::test]
async fn persistent_5xx_gives_a_retryable_error_after_every_attempt() {
    let script = vec![
        Reply::Json(502, "{}"),
        Reply::Json(500, SERVER_ERROR),
        Reply::Json(503, SERVER_ERROR),
    ];
    let (base_url, fake) = start(script).await;
    let error = client(&base_url, 3)
        .send_text(&maria(), "oi")
        .await
        .unwrap_err();
    assert!(error.retryable);
    assert_eq!(error.status, Some(503));
    assert_eq!(
        error.message,
        "evolution sendText: HTTP 503: Connection Closed"
    );
    assert_eq!(fake.calls(), 3);
}

#[tokio::test]
async fn a_429_is_retried_with_retry_after_capped_by_the_policy() {
    let (base_url, fake) = start(vec![Reply::Json(429, "{}"), Reply::Json(201, CREATED)]).await;
    let started = Instant::now();
    client(&base_url, 2)
        .send_text(&maria(), "oi")
        .await
        .unwrap();
    assert_eq!(fake.calls(), 2);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "Retry-After: 1 is capped at max_delay"
    );
}

#[tokio::test]
async fn a_timeout_is_retried_then_reported_as_retryable() {
    let slow = Duration::from_secs(2);
    let (base_url, fake) = start(vec![Reply::Slow(slow), Reply::Slow(slow)]).await;
    let started = Instant::now();
    let error = client(&base_url, 2)
        .send_text(&maria(), "oi")
        .await
        .unwrap_err();
    assert!(error.retryable);
    assert_eq!(error.status, None);
    assert_eq!(error.message, "evolution sendText: timed out");
    assert_eq!(fake.calls(), 2);
    assert!(
        started.elapsed() < slow,
        "the client gave up before the server answered"
    );
}

#[tokio::test]
async fn a_closed_port_is_a_retryable_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let error = client(&format!("http://{address}"), 2)
        .send_text(&maria(), "oi")
        .await
        .unwrap_err();
    assert!(error.retryable);
    assert_eq!(error.status, None);
    assert_eq!(error.message, "evolution sendText: could not connect");
}

#[tokio::test]
async fn typing_sends_composing_then_paused() {
    let (base_url, fake) = start(vec![Reply::Json(201, "{}"), Reply::Json(201, "{}")]).await;
    let client = client(&base_url, 3);
    client.typing(&maria(), true).await.unwrap();
    client.typing(&maria(), false).await.unwrap();
    let calls = fake.calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    for call in calls.iter() {
        assert_eq!(call.method, Method::POST);
        assert_eq!(call.path, "/chat/sendPresence/loja-centro");
        assert_eq!(call.headers["apikey"], API_KEY);
        assert_eq!(call.headers["content-type"], "application/json");
    }
    assert_eq!(
        calls[0].body,
        json!({ "number": "5511999999999", "presence": "composing", "delay": 1200 })
    );
    assert_eq!(
        calls[1].body,
        json!({ "number": "5511999999999", "presence": "paused", "delay": 0 })
    );
}

#[tokio::test]
async fn typing_is_never_retried() {
    let (base_url, fake) = start(vec![Reply::Json(500, SERVER_ERROR)]).await;
    let error = client(&base_url, 3)
        .typing(&maria(), true)
        .await
        .unwrap_err();
    assert_eq!(error.status, Some(500));
    assert_eq!(
        error.message,
        "evolution sendPresence: HTTP 500: Connection Closed"
    );
    assert_eq!(fake.calls(), 1);
}

#[test]
fn kind_and_debug_hide_the_key() {
    let client = EvolutionClient::new(
        reqwest::Client::new(),
        "https://evo.example.com",
        INSTANCE,
        API_KEY,
        retry(1),
    );
    assert_eq!(client.kind(), "evolution");
    let debug = format!("{client:?}");
    assert!(debug.contains("loja-centro"), "{debug}");
    assert!(!debug.contains(API_KEY), "{debug}");
}
