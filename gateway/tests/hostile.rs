//! Hostile webhook input, through the real `conversa` server on 127.0.0.1:0, for every provider
//! route: empty, invalid, wrongly shaped, non-UTF-8, deeply nested and oversized bodies, wrong
//! content types, missing, wrong and replayed signatures or tokens, unknown tenants, and bodies with
//! 10,000 fields or events. Every answer must be the contract's status with a JSON error, come back
//! fast, record nothing, and leave the server serving.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha512;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const EVOLUTION_TOKEN: &str = "hostile-evolution-token";
const WAHA_KEY: &str = "waha-hmac-demo-secret";
const META_SECRET: &str = "0f2e4d6c8b0a9e7d5c3b1a2f4e6d8c0b";
const MAX_BODY: usize = 2 * 1024 * 1024;
/// No hostile request may take longer than this to answer (a debug build on 2 cores).
const FAST: Duration = Duration::from_secs(3);

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{path}")).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Evolution,
    Waha,
    Meta,
}

const ROUTES: [Route; 3] = [Route::Evolution, Route::Waha, Route::Meta];

impl Route {
    fn tenant(self) -> &'static str {
        match self {
            Route::Evolution => "hostil-evolution",
            Route::Waha => "hostil-waha",
            Route::Meta => "hostil-meta",
        }
    }

    fn path(self, tenant: &str) -> String {
        let provider = match self {
            Route::Evolution => "evolution",
            Route::Waha => "waha",
            Route::Meta => "meta",
        };
        format!("/webhooks/{provider}/{tenant}")
    }

    /// A valid body for this route.
    fn valid_body(self) -> Vec<u8> {
        match self {
            Route::Evolution => fixture("evolution/messages.upsert.text-conversation.json"),
            Route::Waha => {
                let mut body: Value =
                    serde_json::from_slice(&fixture("waha/message.text.noweb.json")).unwrap();
                body["timestamp"] = json!(now_ms());
                serde_json::to_vec(&body).unwrap()
            }
            Route::Meta => fixture("meta/messages.text.json"),
        }
    }

    /// The authentication headers a genuine sender would put on `body`.
    fn auth(self, body: &[u8]) -> Vec<(String, String)> {
        match self {
            Route::Evolution => vec![("apikey".into(), EVOLUTION_TOKEN.into())],
            Route::Waha => {
                let mut mac = Hmac::<Sha512>::new_from_slice(WAHA_KEY.as_bytes()).unwrap();
                mac.update(body);
                vec![
                    (
                        "x-webhook-hmac".into(),
                        hex::encode(mac.finalize().into_bytes()),
                    ),
                    ("x-webhook-timestamp".into(), now_ms().to_string()),
                ]
            }
            Route::Meta => vec![(
                "x-hub-signature-256".into(),
                gateway::providers::meta::signature::sign(META_SECRET.as_bytes(), body),
            )],
        }
    }
}

struct Server {
    base: String,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    keys: Vec<(Route, String)>,
}

impl Server {
    async fn start(data_dir: &std::path::Path) -> Self {
        let mut config = gateway::config::Config::for_tests(data_dir.to_path_buf());
        config.max_body_bytes = MAX_BODY;
        let (tx, rx) = oneshot::channel::<()>();
        let running = gateway::server::spawn(config, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
        let mut server = Self {
            base: format!("http://{}", running.addr),
            addr: running.addr,
            http: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(running.task),
            keys: Vec::new(),
        };
        // Providers that point nowhere: nothing here must ever be sent.
        let providers = [
            (
                Route::Evolution,
                json!({"kind": "evolution", "base_url": "http://127.0.0.1:9", "instance": "i",
                       "api_key": "k", "webhook_token": EVOLUTION_TOKEN}),
            ),
            (
                Route::Waha,
                json!({"kind": "waha", "base_url": "http://127.0.0.1:9", "session": "default",
                       "api_key": "k", "hmac_secret": WAHA_KEY}),
            ),
            (
                Route::Meta,
                json!({"kind": "meta", "graph_url": "http://127.0.0.1:9", "phone_number_id": "112233445566778",
                       "access_token": "t", "app_secret": META_SECRET, "verify_token": "v"}),
            ),
        ];
        for (route, provider) in providers {
            let response = server
                .http
                .post(format!("{}/api/v1/tenants", server.base))
                .bearer_auth(&running.admin_token)
                .json(&json!({"id": route.tenant(), "name": "Hostil", "provider": provider}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            let key = response.json::<Value>().await.unwrap()["api_key"]
                .as_str()
                .unwrap()
                .to_owned();
            server.keys.push((route, key));
        }
        server
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Sends one request and checks the universal rules: it is answered (no panic, no dropped
    /// connection), fast, and any error is JSON `{"error":{"code","message"}}`.
    async fn send(&self, case: &str, request: reqwest::RequestBuilder) -> (u16, Value) {
        let started = Instant::now();
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{case}: no answer: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = response.bytes().await.unwrap();
        assert!(
            started.elapsed() < FAST,
            "{case}: took {:?}",
            started.elapsed()
        );
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 400 {
            assert!(
                content_type.starts_with("application/json"),
                "{case}: {content_type}"
            );
            assert!(
                body["error"]["code"].is_string() && body["error"]["message"].is_string(),
                "{case}: not a JSON error: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        (status, body)
    }

    fn post(
        &self,
        route: Route,
        body: Vec<u8>,
        headers: &[(String, String)],
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(format!("{}{}", self.base, route.path(route.tenant())))
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request
    }

    /// A body posted with genuine authentication and a JSON content type.
    async fn authentic(&self, case: &str, route: Route, body: Vec<u8>) -> (u16, Value) {
        let mut headers = route.auth(&body);
        headers.push(("content-type".into(), "application/json".into()));
        self.send(
            &format!("{route:?} {case}"),
            self.post(route, body, &headers),
        )
        .await
    }

    async fn conversations(&self, route: Route) -> usize {
        let key = &self.keys.iter().find(|(r, _)| *r == route).unwrap().1;
        let listed: Value = self
            .http
            .get(format!("{}/api/v1/conversations", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed["items"].as_array().unwrap().len()
    }
}

fn nested(depth: usize) -> Vec<u8> {
    let mut body = "[".repeat(depth).into_bytes();
    body.extend(std::iter::repeat_n(b']', depth));
    body
}

/// A valid envelope of `route` whose innermost payload nests `depth` levels deep.
fn nested_inside(route: Route, depth: usize) -> Vec<u8> {
    let deep = String::from_utf8(nested(depth)).unwrap();
    let body = match route {
        Route::Evolution => format!(r#"{{"event":"messages.upsert","data":{{"key":{deep}}}}}"#),
        Route::Waha => {
            format!(
                r#"{{"event":"message","timestamp":{},"payload":{{"x":{deep}}}}}"#,
                now_ms()
            )
        }
        Route::Meta => {
            format!(r#"{{"object":"whatsapp_business_account","entry":[{{"changes":{deep}}}]}}"#)
        }
    };
    body.into_bytes()
}

/// A valid message of `route` with 10,000 extra distinct fields beside its content.
fn ten_thousand_fields(route: Route) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&route.valid_body()).unwrap();
    let target = match route {
        Route::Evolution => &mut body["data"],
        Route::Waha => &mut body["payload"],
        Route::Meta => &mut body["entry"][0]["changes"][0]["value"]["messages"][0],
    };
    let object = target.as_object_mut().unwrap();
    for i in 0..10_000 {
        object.insert(format!("campo_{i}"), json!(i));
    }
    serde_json::to_vec(&body).unwrap()
}

/// Sends a chunked request without `Content-Length` over a raw socket and returns the status line
/// and body: the size limit must hold when the sender does not declare a size.
async fn raw_chunked(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(String, String)],
    total: usize,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\nconnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let size = chunk.len().min(total - sent);
        let frame = [format!("{size:x}\r\n").as_bytes(), &chunk[..size], b"\r\n"].concat();
        if stream.write_all(&frame).await.is_err() {
            break; // the server may stop reading once the limit is passed
        }
        sent += size;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(FAST, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_the_contract_status_a_json_error_and_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;

    for route in ROUTES {
        // Malformed bodies, genuinely authenticated: 400.
        let mut malformed: Vec<(&str, Vec<u8>)> = vec![
            ("empty body", Vec::new()),
            (
                "invalid JSON",
                b"{\"event\": \"messages.upsert\", ".to_vec(),
            ),
            ("not JSON at all", b"oi, tudo bem?".to_vec()),
            (
                "invalid UTF-8",
                vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
            ),
            (
                "UTF-16",
                "{\"event\":\"message\"}"
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect(),
            ),
            ("a JSON array", b"[]".to_vec()),
            ("a JSON string", b"\"message\"".to_vec()),
            ("a JSON null", b"null".to_vec()),
            (
                "an object of the wrong shape",
                br#"{"hello":"world","n":[1,2,3]}"#.to_vec(),
            ),
            ("a number out of range", br#"{"event":1e999}"#.to_vec()),
            ("deeply nested JSON", nested(100_000)),
            (
                "deep nesting inside a valid envelope",
                nested_inside(route, 5_000),
            ),
        ];
        match route {
            Route::Evolution => malformed.push((
                "data of the wrong type",
                br#"{"event":"messages.upsert","data":7}"#.to_vec(),
            )),
            Route::Waha => malformed.push((
                "payload of the wrong type",
                format!(
                    r#"{{"event":"message","timestamp":{},"payload":"x"}}"#,
                    now_ms()
                )
                .into_bytes(),
            )),
            Route::Meta => malformed.push((
                "entry of the wrong type",
                br#"{"object":"whatsapp_business_account","entry":{}}"#.to_vec(),
            )),
        }
        for (case, body) in malformed {
            let (status, response) = server.authentic(case, route, body).await;
            assert_eq!(status, 400, "{route:?} {case}: {response}");
            assert_eq!(response["error"]["code"], "bad_request", "{route:?} {case}");
        }

        // Wrong content types, with a valid body and genuine authentication: 400.
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/xml",
            "",
        ] {
            let body = route.valid_body();
            let mut headers = route.auth(&body);
            headers.push(("content-type".into(), content_type.into()));
            let case = format!("{route:?} content type {content_type:?}");
            let (status, response) = server.send(&case, server.post(route, body, &headers)).await;
            assert_eq!(status, 400, "{case}: {response}");
            assert_eq!(
                response["error"]["code"], "unsupported_media_type",
                "{case}"
            );
        }

        // Missing or wrong authentication: 401, whatever the body.
        let body = route.valid_body();
        let wrong: Vec<(String, String)> = match route {
            Route::Evolution => vec![("apikey".into(), "not-the-token".into())],
            Route::Waha => vec![("x-webhook-hmac".into(), "ab".repeat(64))],
            Route::Meta => vec![(
                "x-hub-signature-256".into(),
                format!("sha256={}", "ab".repeat(32)),
            )],
        };
        let mut cases = vec![
            ("missing authentication", vec![]),
            ("wrong authentication", wrong),
        ];
        if route != Route::Evolution {
            // Evolution signs nothing: its token is the same for every body.
            cases.push(("a signature of another body", route.auth(b"{}")));
        }
        for (case, headers) in cases {
            let case = format!("{route:?} {case}");
            let (status, response) = server
                .send(&case, server.post(route, body.clone(), &headers))
                .await;
            assert_eq!(status, 401, "{case}: {response}");
            assert_eq!(response["error"]["code"], "unauthorized");
        }
        // Unauthenticated garbage is refused before it is read as JSON.
        let (status, _) = server
            .send(
                "garbage without auth",
                server.post(route, vec![0xff; 100], &[]),
            )
            .await;
        assert_eq!(status, 401, "{route:?}");

        // Unknown tenants and tenants of another provider: 404.
        for tenant in [
            "nao-existe",
            "hostil-outro-provedor",
            "UPPER",
            "a%2F..%2Fb",
            "%FF%FE",
            &"x".repeat(200),
        ] {
            let body = route.valid_body();
            let headers = route.auth(&body);
            let mut request = server
                .http
                .post(format!("{}{}", server.base, route.path(tenant)))
                .body(body);
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            let case = format!("{route:?} tenant {tenant:.20}");
            let (status, response) = server.send(&case, request).await;
            assert_eq!(status, 404, "{case}: {response}");
        }
        let other = ROUTES.into_iter().find(|r| *r != route).unwrap();
        let body = route.valid_body();
        let mut request = server
            .http
            .post(format!("{}{}", server.base, route.path(other.tenant())))
            .body(body.clone());
        for (name, value) in route.auth(&body) {
            request = request.header(name, value);
        }
        let (status, _) = server
            .send(&format!("{route:?} another provider's tenant"), request)
            .await;
        assert_eq!(status, 404);

        // Bodies over the limit: 413, declared or not.
        let oversized = vec![b' '; MAX_BODY + 1];
        let mut headers = route.auth(&oversized);
        headers.push(("content-type".into(), "application/json".into()));
        let (status, response) = server
            .send(
                &format!("{route:?} oversized"),
                server.post(route, oversized, &headers),
            )
            .await;
        assert_eq!(status, 413, "{route:?}: {response}");
        assert_eq!(response["error"]["code"], "payload_too_large");
        let (status, body) = raw_chunked(
            server.addr,
            &route.path(route.tenant()),
            &route.auth(b"")[..usize::from(route == Route::Evolution)],
            MAX_BODY + 64 * 1024,
        )
        .await;
        assert_eq!(status, 413, "{route:?} chunked: {body}");
        assert!(body.contains("payload_too_large"), "{route:?}: {body}");

        // 10,000 distinct fields beside a genuine message: read, recorded, fast.
        let (status, response) = server
            .authentic("10,000 fields", route, ten_thousand_fields(route))
            .await;
        assert_eq!(status, 200, "{route:?}: {response}");
    }

    // Nothing refused was recorded; only the three genuine messages with 10,000 fields were.
    for route in ROUTES {
        assert_eq!(server.conversations(route).await, 1, "{route:?}");
    }
    let ready = server
        .send("ready", server.http.get(format!("{}/ready", server.base)))
        .await;
    assert_eq!(ready.0, 200, "{}", ready.1);
    server.stop().await;
}

#[tokio::test]
async fn replays_are_refused_or_have_no_effect() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;

    // WAHA: the README's vector is a genuine signature from June 2025; replayed now it is refused.
    let vector: Value =
        serde_json::from_slice(&fixture("waha/webhook-signature.example.json")).unwrap();
    let headers: Vec<(String, String)> = [
        "X-Webhook-Hmac",
        "X-Webhook-Timestamp",
        "X-Webhook-Hmac-Algorithm",
        "Content-Type",
    ]
    .iter()
    .map(|name| {
        (
            (*name).to_owned(),
            vector["headers"][*name].as_str().unwrap().to_owned(),
        )
    })
    .collect();
    let (status, response) = server
        .send(
            "waha replay",
            server.post(
                Route::Waha,
                fixture("waha/message.text.noweb.json"),
                &headers,
            ),
        )
        .await;
    assert_eq!(status, 401, "{response}");
    assert_eq!(server.conversations(Route::Waha).await, 0);

    // Meta and Evolution sign nothing with a time: a replay is a duplicate, answered 200, no effect.
    for route in [Route::Meta, Route::Evolution] {
        let body = route.valid_body();
        let (status, first) = server
            .authentic("first delivery", route, body.clone())
            .await;
        assert_eq!(
            (status, &first["recorded"]),
            (200, &json!(1)),
            "{route:?}: {first}"
        );
        for _ in 0..3 {
            let (status, again) = server.authentic("replay", route, body.clone()).await;
            assert_eq!(
                (status, &again["recorded"], &again["duplicates"]),
                (200, &json!(0), &json!(1)),
                "{route:?}: {again}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn batches_over_the_event_limit_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let statuses: Vec<Value> = (0..10_001)
        .map(|i| json!({ "id": format!("wamid.{i}"), "status": "read" }))
        .collect();
    let mut messages: Vec<Value> = (0..3)
        .map(|i| json!({ "from": "5511999999999", "id": format!("wamid.M{i}"), "type": "text", "text": { "body": "oi" } }))
        .collect();
    messages.truncate(3);
    let body = serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{ "changes": [{ "field": "messages", "value": { "messages": messages, "statuses": statuses } }] }]
    }))
    .unwrap();
    assert!(body.len() < MAX_BODY);
    let (status, response) = server.authentic("10,004 events", Route::Meta, body).await;
    assert_eq!(status, 413, "{response}");
    assert_eq!(
        server.conversations(Route::Meta).await,
        0,
        "nothing of a refused batch is recorded"
    );
    server.stop().await;
}

#[tokio::test]
async fn hostile_verification_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let url = |tenant: &str, query: &str| format!("{}/webhooks/meta/{tenant}?{query}", server.base);
    let cases = [
        ("no query", url("hostil-meta", ""), 403),
        (
            "wrong token",
            url(
                "hostil-meta",
                "hub.mode=subscribe&hub.verify_token=x&hub.challenge=1",
            ),
            403,
        ),
        (
            "wrong mode",
            url(
                "hostil-meta",
                "hub.mode=unsubscribe&hub.verify_token=v&hub.challenge=1",
            ),
            403,
        ),
        (
            "no challenge",
            url("hostil-meta", "hub.mode=subscribe&hub.verify_token=v"),
            400,
        ),
        (
            "markup challenge",
            url(
                "hostil-meta",
                "hub.mode=subscribe&hub.verify_token=v&hub.challenge=%3Cscript%3E",
            ),
            400,
        ),
        (
            "huge challenge",
            url(
                "hostil-meta",
                &format!(
                    "hub.mode=subscribe&hub.verify_token=v&hub.challenge={}",
                    "9".repeat(10_000)
                ),
            ),
            400,
        ),
        (
            "invalid percent-encoding",
            url("hostil-meta", "hub.mode=%FF%FE&hub.verify_token=%C3"),
            403,
        ),
        (
            "unknown tenant",
            url(
                "nao-existe",
                "hub.mode=subscribe&hub.verify_token=v&hub.challenge=1",
            ),
            404,
        ),
        (
            "tenant of another provider",
            url(
                "hostil-waha",
                "hub.mode=subscribe&hub.verify_token=v&hub.challenge=1",
            ),
            404,
        ),
    ];
    for (case, url, expected) in cases {
        let (status, response) = server.send(case, server.http.get(url)).await;
        assert_eq!(status, expected, "{case}: {response}");
    }
    let response = server
        .http
        .get(url(
            "hostil-meta",
            "hub.mode=subscribe&hub.verify_token=v&hub.challenge=1158201444",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "1158201444");
    server.stop().await;
}
