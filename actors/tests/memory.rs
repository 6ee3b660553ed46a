//! Memory per live conversation actor, measured (ignored by default; Linux only):
//! `cargo test --release -p actors --test memory -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Duration;

use actors::{ActorMetrics, Clock, Deps, TenantDirectory, TreePolicy};
use engine::testsuite::{
    CollectingEvents, MemoryStore, RecordingFactory, RecordingProvider, tenant,
};
use engine::{ContactId, TenantId};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it by hand"]
async fn memory_per_live_conversation_actor() {
    const N: usize = 20_000;
    let store = MemoryStore::new();
    let directory = TenantDirectory::new(Arc::new(RecordingFactory(RecordingProvider::new())));
    directory.upsert(tenant("loja"), None);
    let deps = Deps {
        store: Arc::new(store),
        events: Arc::new(CollectingEvents::default()),
        directory,
        clock: Clock::System,
        policy: TreePolicy {
            idle_after: Duration::from_secs(3600),
            ..TreePolicy::default()
        },
        metrics: Arc::new(ActorMetrics::unregistered()),
        llm: None,
        embedder: None,
        prompts: Default::default(),
    };
    let engine = actors::start(deps).await.unwrap();
    let t = TenantId::parse("loja").unwrap();
    // Warm up the runtime and allocator with one conversation.
    engine
        .handle
        .snapshot(&t, &ContactId::parse("5521900000000").unwrap())
        .await
        .unwrap();
    let before = rss_kib();
    for i in 0..N {
        let contact = ContactId::parse(&format!("55119{i:08}")).unwrap();
        engine.handle.snapshot(&t, &contact).await.unwrap();
    }
    let live = engine.handle.live_conversations(&t).await.unwrap();
    let after = rss_kib();
    println!(
        "live actors: {live}; RSS {before} KiB -> {after} KiB; {:.1} KiB per live conversation actor",
        (after.saturating_sub(before)) as f64 / N as f64
    );
    assert_eq!(live, N + 1);
}
