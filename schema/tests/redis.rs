//! The Redis hot state against a real `redis-server` (`CONVERSA_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`; `.ci/run` starts one when none listens): dedupe, rate limits, the
//! event fan-out across two "nodes", and what happens when Redis is down (a closed port).

use std::time::Duration;

use futures_util::StreamExt;
use schema::redis::{DedupeState, HotState, RedisSettings};

fn url() -> String {
    std::env::var("CONVERSA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn hot() -> HotState {
    HotState::new(RedisSettings::new(url())).unwrap()
}

/// A tenant id no other test run uses.
fn tenant(name: &str) -> String {
    format!("{name}-{:08x}", rand::random::<u32>())
}

#[tokio::test]
async fn dedupe_claims_once_and_answers_done_only_after_the_store_recorded() {
    let hot = hot();
    hot.ping().await.expect("the test redis should answer");
    let t = tenant("dedupe");
    let keys = vec!["evo:1".to_owned(), "evo:2".to_owned()];
    assert_eq!(
        hot.dedupe_claim(&t, &keys).await.unwrap(),
        [DedupeState::Claimed, DedupeState::Claimed]
    );
    // In flight: the store decides.
    assert_eq!(
        hot.dedupe_claim(&t, &keys[..1]).await.unwrap(),
        [DedupeState::Pending]
    );
    hot.dedupe_done(&t, &keys[..1]).await.unwrap();
    // The second could not be recorded: released, so the provider's retry claims it again.
    hot.dedupe_release(&t, &keys[1..]).await.unwrap();
    assert_eq!(
        hot.dedupe_claim(&t, &keys).await.unwrap(),
        [DedupeState::Done, DedupeState::Claimed]
    );
    // Tenants are isolated.
    assert_eq!(
        hot.dedupe_claim(&tenant("other"), &keys[..1])
            .await
            .unwrap(),
        [DedupeState::Claimed]
    );
}

#[tokio::test]
async fn concurrent_claims_of_one_key_give_exactly_one_claim() {
    let hot = hot();
    let t = tenant("race");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (hot, t) = (hot.clone(), t.clone());
        tasks.spawn(async move { hot.dedupe_claim(&t, &["k".to_owned()]).await.unwrap()[0] });
    }
    let states = tasks.join_all().await;
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == DedupeState::Claimed)
            .count(),
        1
    );
}

#[tokio::test]
async fn the_rate_limit_counts_messages_per_window_and_refunds_refusals() {
    let hot = HotState::new(RedisSettings {
        rate_window: Duration::from_secs(2),
        ..RedisSettings::new(url())
    })
    .unwrap();
    let t = tenant("rate");
    // Stay inside one window: start right after a window begins.
    let until_next = 2000 - (now_ms() % 2000);
    if until_next < 1500 {
        tokio::time::sleep(Duration::from_millis(until_next + 10)).await;
    }
    let first = hot.rate(&t, 3, 5).await.unwrap();
    assert!(first.allowed);
    assert_eq!(first.count, 3);
    let refused = hot.rate(&t, 3, 5).await.unwrap();
    assert!(!refused.allowed, "3 + 3 > 5");
    assert_eq!(refused.count, 3, "a refused request is not counted");
    assert!(refused.retry_after <= Duration::from_secs(2));
    assert!(hot.rate(&t, 2, 5).await.unwrap().allowed, "3 + 2 fits");
    assert!(
        hot.rate(&tenant("rate-other"), 5, 5).await.unwrap().allowed,
        "tenants have their own counters"
    );
    tokio::time::sleep(refused.retry_after + Duration::from_millis(50)).await;
    assert!(hot.rate(&t, 5, 5).await.unwrap().allowed, "a new window");
}

#[tokio::test]
async fn events_fan_out_to_every_node_in_seq_order() {
    let (node_a, node_b) = (hot(), hot());
    let t = tenant("events");
    let mut on_a = Box::pin(node_a.subscribe_events().await.unwrap());
    let mut on_b = Box::pin(node_b.subscribe_events().await.unwrap());
    // Both nodes publish, concurrently.
    let mut publishers = tokio::task::JoinSet::new();
    for (node, name) in [(node_a.clone(), "a"), (node_b.clone(), "b")] {
        let t = t.clone();
        publishers.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                let rest = format!(r#""type":"typing","conversation":"55{i}","origin":"{name}"}}"#);
                seqs.push(node.publish_event(&t, &rest).await.unwrap());
            }
            seqs
        });
    }
    let mut published: Vec<u64> = publishers.join_all().await.concat();
    published.sort_unstable();
    assert!(
        published.windows(2).all(|w| w[1] == w[0] + 1),
        "seqs are contiguous across nodes"
    );
    for stream in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        while got.len() < 100 {
            let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("every event arrives")
                .expect("the subscription stays open");
            if event.tenant != t {
                continue; // another test's tenant
            }
            let json: serde_json::Value = serde_json::from_str(&event.json).unwrap();
            assert_eq!(json["seq"], event.seq);
            assert_eq!(json["type"], "typing");
            got.push(event.seq);
        }
        assert_eq!(
            got, published,
            "each node sees every event once, in seq order"
        );
    }
}

#[tokio::test]
async fn a_redis_that_is_down_is_an_error_not_a_hang() {
    let hot = HotState::new(RedisSettings {
        timeout: Duration::from_millis(500),
        ..RedisSettings::new("redis://127.0.0.1:1")
    })
    .unwrap();
    let started = std::time::Instant::now();
    assert!(hot.ping().await.is_err());
    assert!(hot.dedupe_claim("t", &["k".to_owned()]).await.is_err());
    assert!(hot.rate("t", 1, 10).await.is_err());
    assert!(hot.publish_event("t", r#""type":"typing"}"#).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
