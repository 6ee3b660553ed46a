//! What the stream and console tests share: the real `conversa` server on 127.0.0.1:0, a real
//! HTTP server playing Evolution API (recording what Conversa sends), and a dashboard client
//! speaking WebSocket. Copied in spirit from `e2e_evolution.rs`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/evolution");
pub(crate) const TOKEN: &str = "s3cr3t-shared-token";
pub(crate) const MARIA: &str = "5511999999999";
pub(crate) const JOAO: &str = "5511988887777";

pub(crate) fn fixture_json(name: &str) -> Value {
    let bytes = std::fs::read(format!("{FIXTURES}/{name}")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// One request Conversa made to the fake provider.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub(crate) path: String,
    pub(crate) body: Value,
}

#[derive(Clone, Default)]
pub(crate) struct FakeEvolution {
    captured: Arc<Mutex<Vec<Captured>>>,
    sends: Arc<Mutex<u32>>,
}

impl FakeEvolution {
    pub(crate) async fn start() -> (Self, SocketAddr) {
        let fake = FakeEvolution::default();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, addr)
    }

    pub(crate) fn texts_to(&self, number: &str) -> Vec<String> {
        self.captured
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path.starts_with("/message/sendText/") && c.body["number"] == number)
            .map(|c| c.body["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

async fn record(State(fake): State<FakeEvolution>, request: Request) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    fake.captured.lock().unwrap().push(Captured {
        path: path.clone(),
        body: body.clone(),
    });
    if path.starts_with("/message/sendText/") {
        let n = {
            let mut sends = fake.sends.lock().unwrap();
            *sends += 1;
            *sends
        };
        let mut response = fixture_json("outbound.sendText.response-201.json");
        response["key"]["id"] = json!(format!("3EB0FAKE{n:014}"));
        response["key"]["remoteJid"] = json!(format!(
            "{}@s.whatsapp.net",
            body["number"].as_str().unwrap_or("")
        ));
        response["message"]["conversation"] = body["text"].clone();
        return (StatusCode::CREATED, axum::Json(response)).into_response();
    }
    (StatusCode::CREATED, axum::Json(json!({}))).into_response()
}

/// The real server, in this process.
pub(crate) struct Conversa {
    pub(crate) addr: SocketAddr,
    pub(crate) base: String,
    pub(crate) admin: String,
    pub(crate) http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Conversa {
    pub(crate) async fn start(data_dir: &std::path::Path) -> Self {
        Self::start_with(data_dir, |_| {}).await
    }

    pub(crate) async fn start_with(
        data_dir: &std::path::Path,
        tweak: impl FnOnce(&mut gateway::config::Config),
    ) -> Self {
        let mut config = gateway::config::Config::for_tests(data_dir.to_path_buf());
        tweak(&mut config);
        config.validate().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let running = gateway::server::spawn(config, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
        Self {
            addr: running.addr,
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
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the server should stop, open dashboards or not")
                .unwrap()
                .unwrap();
        }
    }

    /// Creates tenant `id` on the fake Evolution and returns its API key. A `quiet` tenant is
    /// suspended: its customers' messages are recorded and streamed, never answered.
    pub(crate) async fn tenant(&self, id: &str, evolution: SocketAddr, quiet: bool) -> String {
        let resp = self
            .http
            .post(format!("{}/api/v1/tenants", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({
                "id": id,
                "name": format!("Loja {id}"),
                "provider": {"kind": "evolution", "base_url": format!("http://{evolution}"), "instance": id,
                             "api_key": "B6D711FC-DE4D-4FD5-9365-44120E713976", "webhook_token": TOKEN},
                "settings": {"debounce_ms": 200, "max_buffer_ms": 1000},
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let body: Value = resp.json().await.unwrap();
        if quiet {
            let resp = self
                .http
                .patch(format!("{}/api/v1/tenants/{id}", self.base))
                .bearer_auth(&self.admin)
                .json(&json!({"status": "suspended"}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
        }
        body["api_key"].as_str().unwrap().to_owned()
    }

    /// Posts an Evolution webhook for `tenant`; answers the status.
    pub(crate) async fn webhook(&self, tenant: &str, body: Vec<u8>) -> u16 {
        self.http
            .post(format!("{}/webhooks/evolution/{tenant}", self.base))
            .header("content-type", "application/json")
            .header("apikey", TOKEN)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A customer's text message to `tenant`, recorded and streamed.
    pub(crate) async fn customer_says(&self, tenant: &str, number: &str, id: &str, text: &str) {
        assert_eq!(self.webhook(tenant, text_from(number, id, text)).await, 200);
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

    pub(crate) fn stream_url(&self, query: &str) -> String {
        format!("ws://{}/api/v1/stream{query}", self.addr)
    }
}

/// A text message from `number` with a fresh id and the current time, shaped like the fixture.
pub(crate) fn text_from(number: &str, id: &str, text: &str) -> Vec<u8> {
    let mut body = fixture_json("messages.upsert.text-conversation.json");
    body["data"]["key"]["remoteJid"] = json!(format!("{number}@s.whatsapp.net"));
    body["data"]["key"]["id"] = json!(id);
    body["data"]["message"]["conversation"] = json!(text);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    body["data"]["messageTimestamp"] = json!(now);
    serde_json::to_vec(&body).unwrap()
}

pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The value of a metric line (`name{labels} value`) in the exposition text.
pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A dashboard: one WebSocket connection to `/api/v1/stream`.
pub(crate) struct Dashboard {
    pub(crate) ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection attempt was refused, when it was.
pub(crate) fn refused_status(e: &tungstenite::Error) -> Option<u16> {
    match e {
        tungstenite::Error::Http(response) => Some(response.status().as_u16()),
        _ => None,
    }
}

impl Dashboard {
    /// Connects with the key in the `Authorization` header.
    pub(crate) async fn connect(
        conversa: &Conversa,
        key: &str,
        since: Option<u64>,
    ) -> Result<Self, tungstenite::Error> {
        let query = since.map_or(String::new(), |s| format!("?since={s}"));
        let mut request = conversa.stream_url(&query).into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { ws })
    }

    /// Connects over `stream` (a socket the test shaped, for example with a tiny buffer).
    pub(crate) async fn connect_over(
        conversa: &Conversa,
        key: &str,
        stream: TcpStream,
    ) -> Result<Self, tungstenite::Error> {
        let mut request = conversa.stream_url("").into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        let (ws, _) =
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await?;
        Ok(Self { ws })
    }

    /// The next frame that is not a WebSocket ping or pong; `None` once the stream ended.
    pub(crate) async fn next_frame(&mut self) -> Option<Message> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(15), self.ws.next())
                .await
                .expect("no frame from the server within 15 s");
            match frame {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(frame)) => return Some(frame),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next JSON frame; panics on anything else.
    pub(crate) async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Some(Message::Text(text)) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Reads until `ready` and returns the events before it (the replay) and its `seq`.
    pub(crate) async fn until_ready(&mut self) -> (Vec<Value>, u64) {
        let mut replay = Vec::new();
        loop {
            let frame = self.next_json().await;
            if frame["type"] == "ready" {
                return (replay, frame["seq"].as_u64().unwrap());
            }
            replay.push(frame);
        }
    }

    /// The next frame with `seq` (an event), skipping command answers.
    pub(crate) async fn next_event(&mut self) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame.get("seq").is_some() {
                return frame;
            }
        }
    }

    /// Reads events until one matches.
    pub(crate) async fn event_where(&mut self, what: impl Fn(&Value) -> bool) -> Value {
        loop {
            let frame = self.next_json().await;
            if what(&frame) {
                return frame;
            }
        }
    }

    /// True when no frame but pings and pongs arrives within `wait`.
    pub(crate) async fn nothing_for(&mut self, wait: Duration) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, self.ws.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(_) => return false,
            }
        }
    }

    pub(crate) async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    /// Reads on until the server closes; answers the close code and reason.
    pub(crate) async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            match self.next_frame().await {
                Some(Message::Close(frame)) => {
                    return frame
                        .map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()));
                }
                Some(_) => continue,
                None => return None,
            }
        }
    }

    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_secs(2), self.ws.next()).await
        {}
    }
}
