//! Conversa with Redis configured, through real servers on 127.0.0.1:0 and a real `redis-server`
//! (`CONVERSA_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`): two nodes share dedupe, the
//! tenant rate and the dashboard stream; with Redis down, `/ready` says so and webhooks answer 503.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "redis-test-webhook-token";

fn redis_url() -> String {
    std::env::var("CONVERSA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct Node {
    base: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
    admin: String,
}

impl Node {
    async fn start(redis_url: &str, tenant_rate: u64) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut config = gateway::config::Config::for_tests(dir.path().to_path_buf());
        config.redis_url = Some(redis_url.to_owned());
        config.redis_timeout = Duration::from_millis(500);
        config.tenant_rate = tenant_rate;
        let (tx, rx) = oneshot::channel::<()>();
        let running = gateway::server::spawn(config, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
        Node {
            base: format!("http://{}", running.addr),
            http: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(running.task),
            _dir: dir,
            admin: running.admin_token,
        }
    }

    /// Creates the tenant; returns its API key.
    async fn tenant(&self, id: &str) -> String {
        let response = self
            .http
            .post(format!("{}/api/v1/tenants", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({"id": id, "name": "Loja", "provider": {
                "kind": "evolution", "base_url": "http://127.0.0.1:9", "instance": "i",
                "api_key": "k", "webhook_token": TOKEN}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn webhook(&self, tenant: &str, message_id: &str, text: &str) -> (u16, Value) {
        let body = json!({
            "event": "messages.upsert", "instance": "i",
            "data": {"key": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": false, "id": message_id},
                     "pushName": "Maria", "message": {"conversation": text},
                     "messageType": "conversation", "messageTimestamp": 1749562325}
        });
        let response = self
            .http
            .post(format!("{}/webhooks/evolution/{tenant}", self.base))
            .header("apikey", TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn history_len(&self, key: &str) -> usize {
        let response = self
            .http
            .get(format!(
                "{}/api/v1/conversations/5511999999999/messages",
                self.base
            ))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        if response.status() == 404 {
            return 0;
        }
        let body: Value = response.json().await.unwrap();
        body.as_array()
            .or_else(|| body["items"].as_array())
            .or_else(|| body["messages"].as_array())
            .map_or(0, Vec::len)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

fn unique(name: &str) -> String {
    format!("{name}-{:08x}", rand::random::<u32>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_ready_says_so_and_webhooks_answer_503() {
    let node = Node::start("redis://127.0.0.1:1", 0).await;
    let tenant = unique("sem-redis");
    let key = node.tenant(&tenant).await;

    let ready = node
        .http
        .get(format!("{}/ready", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "degraded");
    assert!(
        ready["checks"]["redis"]
            .as_str()
            .is_some_and(|s| s.starts_with("error: ")),
        "{ready}"
    );
    assert_eq!(ready["checks"]["embedded"], "ok");

    let (status, body) = node.webhook(&tenant, &unique("MSG"), "oi").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(node.history_len(&key).await, 0, "nothing was recorded");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_dedupe_and_the_dashboard_stream() {
    let url = redis_url();
    let (a, b) = (Node::start(&url, 0).await, Node::start(&url, 0).await);
    let tenant = unique("loja");
    let key_a = a.tenant(&tenant).await;
    let key_b = b.tenant(&tenant).await;
    for node in [&a, &b] {
        let ready: Value = node
            .http
            .get(format!("{}/ready", node.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["checks"]["redis"], "ok", "{ready}");
    }

    // A dashboard on node B.
    let ws_url = format!(
        "{}/api/v1/stream?access_token={key_b}",
        b.base.replace("http://", "ws://")
    );
    let (mut dashboard, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();

    // The message reaches node A; the same delivery then reaches node B.
    let message_id = unique("MSG");
    let (status, body) = a.webhook(&tenant, &message_id, "oi, tudo bem?").await;
    assert_eq!((status, &body["recorded"]), (200, &json!(1)), "{body}");
    let (status, body) = b.webhook(&tenant, &message_id, "oi, tudo bem?").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["recorded"], &body["duplicates"]),
        (&json!(0), &json!(1)),
        "node B knows from Redis that node A recorded it: {body}"
    );
    assert_eq!(a.history_len(&key_a).await, 1);
    assert_eq!(b.history_len(&key_b).await, 0, "not recorded twice");

    // The dashboard on B saw A's message event.
    let mut seen = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.is_none() {
        let frame = tokio::time::timeout_at(deadline, dashboard.next())
            .await
            .expect("the event crosses nodes within 10 s")
            .expect("the stream stays open")
            .unwrap();
        if let Message::Text(text) = frame {
            let event: Value = serde_json::from_str(&text).unwrap();
            if event["type"] == "message" {
                seen = Some(event);
            }
        }
    }
    let event = seen.unwrap();
    assert_eq!(event["text"], "oi, tudo bem?");
    assert_eq!(event["conversation"], "5511999999999");
    assert!(event["seq"].as_u64().is_some());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_tenant_rate_is_429_and_records_nothing() {
    let node = Node::start(&redis_url(), 1).await;
    let tenant = unique("rapida");
    let key = node.tenant(&tenant).await;
    // One message per second: of three sent at once, at least one is refused.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, body) = node.webhook(&tenant, &unique("MSG"), "oi").await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(node.history_len(&key).await, accepted);
    node.stop().await;
}
