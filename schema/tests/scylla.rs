//! The ScyllaDB store against a real cluster, when `CONVERSA_TEST_SCYLLA_NODES` names one
//! (`host:port`, comma separated); otherwise every test says it skipped and why. Each test works in
//! a keyspace of its own (`conversa_test_<random>`), created by the migrations and dropped at the
//! end: migrations (idempotent, ledger, refusal of an edited file), the conformance suite every
//! store passes, a restart (drop the store, reopen it), physical TTL expiry and the lazy connection.

use std::sync::Arc;
use std::time::Duration;

use engine::message::InboxKind;
use engine::message::{IngestItem, IngestOutcome};
use engine::ports::{ConversationCommit, Store};
use engine::testsuite::{conformance, inbound, outbound, tenant};
use engine::{ContactId, ErrorKind, TenantId, Timestamp};
use schema::migrate::{self, MIGRATIONS};
use schema::scylla::{ScyllaSettings, ScyllaStore, connect};

/// The cluster's nodes, or `None` after printing why the test is skipped.
fn nodes(test: &str) -> Option<Vec<String>> {
    match std::env::var("CONVERSA_TEST_SCYLLA_NODES") {
        Ok(nodes) if !nodes.trim().is_empty() => {
            Some(nodes.split(',').map(|n| n.trim().to_owned()).collect())
        }
        _ => {
            println!(
                "skipped {test}: CONVERSA_TEST_SCYLLA_NODES is not set (no ScyllaDB cluster to test against)"
            );
            None
        }
    }
}

/// A fresh keyspace with every migration applied (replication factor 1: a test cluster).
async fn fresh_keyspace(nodes: &[String]) -> ScyllaSettings {
    let keyspace = format!("conversa_test_{:08x}", rand::random::<u32>());
    let settings = ScyllaSettings {
        consistency: scylla::statement::Consistency::One,
        ttl_grace: Duration::ZERO,
        ..ScyllaSettings::new(nodes.to_vec(), keyspace.clone())
    };
    let session = connect(&settings, false)
        .await
        .expect("the test cluster should answer");
    let report = migrate::migrate(
        &session,
        &keyspace,
        r#"{"class":"SimpleStrategy","replication_factor":1}"#,
    )
    .await
    .expect("migrations should apply to a fresh keyspace");
    assert_eq!(report.applied.len(), MIGRATIONS.len());
    settings
}

async fn drop_keyspace(settings: &ScyllaSettings) {
    let session = connect(settings, false).await.unwrap();
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", settings.keyspace), ())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_refuse_an_edited_file() {
    let Some(nodes) = nodes("migrations_are_idempotent_and_refuse_an_edited_file") else {
        return;
    };
    let settings = fresh_keyspace(&nodes).await;
    let session = connect(&settings, false).await.unwrap();
    let replication = r#"{"class":"SimpleStrategy","replication_factor":1}"#;
    let again = migrate::migrate(&session, &settings.keyspace, replication)
        .await
        .unwrap();
    assert!(again.applied.is_empty(), "a second run applies nothing");
    assert_eq!(again.skipped.len(), MIGRATIONS.len());

    // Pretend the ledger saw another text for the last file.
    session
        .query_unpaged(
            format!(
                "UPDATE {}.schema_migrations SET checksum = 'edited' WHERE file = '{}'",
                settings.keyspace,
                MIGRATIONS.last().unwrap().file
            ),
            (),
        )
        .await
        .unwrap();
    let refused = migrate::migrate(&session, &settings.keyspace, replication).await;
    assert!(
        matches!(refused, Err(migrate::MigrateError::ChecksumChanged { .. })),
        "{refused:?}"
    );
    drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scylla_store_conforms() {
    let Some(nodes) = nodes("the_scylla_store_conforms") else {
        return;
    };
    let settings = fresh_keyspace(&nodes).await;
    let store = ScyllaStore::connect(settings.clone()).await.unwrap();
    conformance::run_all(Arc::new(store)).await;
    drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_store_sees_everything_committed() {
    let Some(nodes) = nodes("a_reopened_store_sees_everything_committed") else {
        return;
    };
    let settings = fresh_keyspace(&nodes).await;
    let t = TenantId::parse("restart").unwrap();
    let contact = ContactId::parse("5511900000001").unwrap();
    let t0 = 1_700_000_000_000;
    let entry_seq = {
        let store = ScyllaStore::connect(settings.clone()).await.unwrap();
        store.create_tenant(&tenant("restart")).await.unwrap();
        let outcomes = store
            .ingest(
                &t,
                vec![IngestItem {
                    dedupe_key: "k-1".into(),
                    message: inbound("restart", contact.as_str(), "r-1", "oi", t0),
                    inbox: Some(InboxKind::CustomerMessage),
                }],
                Timestamp(t0),
            )
            .await
            .unwrap();
        let IngestOutcome::Recorded(Some(entry)) = &outcomes[0] else {
            panic!("{outcomes:?}");
        };
        let conversation = store
            .load_conversation(&t, &contact)
            .await
            .unwrap()
            .unwrap();
        store
            .commit(ConversationCommit {
                conversation,
                consumed_inbox: vec![],
                outbound: vec![outbound("restart", contact.as_str(), "r-2", "olá", t0 + 1)],
            })
            .await
            .unwrap();
        entry.seq
    };
    let store = ScyllaStore::connect(settings.clone()).await.unwrap();
    assert!(store.get_tenant(&t).await.unwrap().is_some());
    let history = store
        .history(&t, &contact, 10, None, Timestamp(t0))
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    let pending = store.pending_inbox().await.unwrap();
    assert_eq!(
        pending.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [entry_seq]
    );
    assert_eq!(store.pending_outbox().await.unwrap().len(), 1);
    drop_keyspace(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_rows_leave_the_disk_by_ttl() {
    let Some(nodes) = nodes("history_rows_leave_the_disk_by_ttl") else {
        return;
    };
    let settings = fresh_keyspace(&nodes).await;
    let store = ScyllaStore::connect(settings.clone()).await.unwrap();
    let t = TenantId::parse("ttl").unwrap();
    let contact = ContactId::parse("5511900000002").unwrap();
    let now = Timestamp(engine_now());
    let mut short = inbound(
        "ttl",
        contact.as_str(),
        "t-1",
        "some em 2 s",
        now.as_millis(),
    );
    short.expires_at = now.plus_millis(2000);
    store
        .ingest(
            &t,
            vec![IngestItem {
                dedupe_key: "k-ttl".into(),
                message: short,
                inbox: None,
            }],
            now,
        )
        .await
        .unwrap();
    // Asked with a clock far in the past, the row is still there until the TTL removes it.
    let early = Timestamp(0);
    assert_eq!(
        store
            .history(&t, &contact, 10, None, early)
            .await
            .unwrap()
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        store
            .history(&t, &contact, 10, None, early)
            .await
            .unwrap()
            .is_empty(),
        "the TTL removed the row"
    );
    drop_keyspace(&settings).await;
}

#[tokio::test]
async fn an_unreachable_cluster_is_reported_not_fatal() {
    // Runs everywhere: a closed port on loopback.
    let settings = ScyllaSettings {
        connect_timeout: Duration::from_millis(500),
        ..ScyllaSettings::new(vec!["127.0.0.1:1".into()], "conversa")
    };
    let store = ScyllaStore::new(settings);
    let error = store.health().await.expect_err("nothing listens on port 1");
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(
        error.to_string().contains("127.0.0.1:1"),
        "the error names the nodes: {error}"
    );
    let again = store.list_tenants().await.expect_err("still unreachable");
    assert_eq!(again.kind(), ErrorKind::Unavailable);
}

fn engine_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// History appends per second and the p99 latency of one append (an ingest of one message, the
/// webhook's write), for the embedded store always and for ScyllaDB when a cluster is given.
/// A measurement, not a check: `cargo test -p schema --release --test scylla -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn append_throughput_and_latency() {
    let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
    let embedded = schema::EmbeddedStore::open(dir.path()).await.unwrap();
    measure("embedded (synchronous=FULL)", Arc::new(embedded)).await;
    if let Some(nodes) = nodes("append_throughput_and_latency (scylla part)") {
        let settings = fresh_keyspace(&nodes).await;
        let store = ScyllaStore::connect(settings.clone()).await.unwrap();
        measure("scylla", Arc::new(store)).await;
        drop_keyspace(&settings).await;
    }
}

async fn measure(backend: &str, store: Arc<dyn Store>) {
    const TOTAL: usize = 20_000;
    const WRITERS: usize = 64;
    let t0 = engine_now();
    let started = std::time::Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.spawn(async move {
            let mut latencies = Vec::with_capacity(TOTAL / WRITERS);
            for i in (w..TOTAL).step_by(WRITERS) {
                let t = format!("bench-{}", i % 10);
                let contact = format!("55119{:08}", i % 2000);
                let message = inbound(
                    &t,
                    &contact,
                    &format!("m-{i}"),
                    "quero saber o preço da pizza grande",
                    t0 + i as i64,
                );
                let item = IngestItem {
                    dedupe_key: format!("bench:{contact}:{i}"),
                    message,
                    inbox: Some(InboxKind::CustomerMessage),
                };
                let one = std::time::Instant::now();
                store
                    .ingest(&TenantId::parse(&t).unwrap(), vec![item], Timestamp(t0))
                    .await
                    .unwrap();
                latencies.push(one.elapsed());
            }
            latencies
        });
    }
    let mut latencies: Vec<Duration> = writers.join_all().await.concat();
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{backend}: {TOTAL} appends by {WRITERS} writers in {elapsed:.2?}: {:.0} appends/s; latency p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        TOTAL as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.99),
        latencies[latencies.len() - 1]
    );
}
