//! What the conformance suite cannot say generically about the embedded store: restarts, the
//! file layout, errors on bad stored data, and (ignored by default) a throughput measurement.

use std::sync::Arc;
use std::time::Instant;

use engine::ErrorKind;
use engine::conversation::ConversationState;
use engine::message::{InboxKind, IngestItem, IngestOutcome};
use engine::ports::{ConversationCommit, Store};
use engine::testsuite::{inbound, outbound, tenant};
use engine::{ContactId, TenantId, Timestamp};
use schema::{Durability, EmbeddedStore};

const T0: i64 = 1_700_000_000_000;

fn tid(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

fn cid(contact: &str) -> ContactId {
    ContactId::parse(contact).unwrap()
}

fn item(
    key: &str,
    message: engine::message::StoredMessage,
    inbox: Option<InboxKind>,
) -> IngestItem {
    IngestItem {
        dedupe_key: key.to_owned(),
        message,
        inbox,
    }
}

#[tokio::test]
async fn a_reopened_store_sees_everything_committed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join("data");
    let t = "restart";
    let (c1, c2) = ("5511900000001", "5511900000002");
    let store = EmbeddedStore::open(&data_dir).await.unwrap();
    assert_eq!(store.backend(), "embedded");
    assert!(store.path().ends_with("conversa.db"));
    store.create_tenant(&tenant(t)).await.unwrap();
    let pending_message = inbound(t, c1, "r-1", "oi", T0);
    let outcomes = store
        .ingest(
            &tid(t),
            vec![
                item(
                    "k-r-1",
                    pending_message.clone(),
                    Some(InboxKind::CustomerMessage),
                ),
                item(
                    "k-r-2",
                    inbound(t, c2, "r-2", "olá", T0 + 1),
                    Some(InboxKind::CustomerMessage),
                ),
            ],
            Timestamp(T0),
        )
        .await
        .unwrap();
    let IngestOutcome::Recorded(Some(consumed)) = &outcomes[1] else {
        panic!("{outcomes:?}")
    };
    let mut conversation = store
        .load_conversation(&tid(t), &cid(c2))
        .await
        .unwrap()
        .unwrap();
    conversation.state = ConversationState::AguardandoHumano;
    conversation.human_deadline = Some(Timestamp(T0 + 1000));
    let items = store
        .commit(ConversationCommit {
            conversation: conversation.clone(),
            consumed_inbox: vec![consumed.seq],
            outbound: vec![outbound(t, c2, "r-3", "vou chamar alguém", T0 + 2)],
        })
        .await
        .unwrap();
    let clone = store.clone();
    drop(store);
    clone.health().await.unwrap();
    drop(clone);

    let store = EmbeddedStore::open(&data_dir).await.unwrap();
    assert_eq!(store.get_tenant(&tid(t)).await.unwrap(), Some(tenant(t)));
    let pending = store.pending_inbox().await.unwrap();
    assert_eq!(pending.len(), 1, "the unconsumed entry is still pending");
    assert_eq!(pending[0].message, pending_message);
    assert_eq!(store.pending_outbox().await.unwrap(), items);
    let reloaded = store
        .load_conversation(&tid(t), &cid(c2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reloaded,
        engine::Conversation {
            last_message_at: Some(Timestamp(T0 + 2)),
            ..conversation
        }
    );
    assert_eq!(
        store
            .due_deadlines(Timestamp(T0 + 1000), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .history(&tid(t), &cid(c2), 10, None, Timestamp(T0))
            .await
            .unwrap()
            .len(),
        2
    );
    // Dedupe keys survive too, and seqs continue after the old ones.
    let again = store
        .ingest(
            &tid(t),
            vec![item("k-r-1", inbound(t, c1, "r-1", "oi", T0), None)],
            Timestamp(T0),
        )
        .await;
    assert_eq!(again.unwrap(), [IngestOutcome::Duplicate]);
    let newer = store
        .ingest(
            &tid(t),
            vec![item(
                "k-r-4",
                inbound(t, c1, "r-4", "?", T0 + 5),
                Some(InboxKind::CustomerMessage),
            )],
            Timestamp(T0 + 5),
        )
        .await
        .unwrap();
    let IngestOutcome::Recorded(Some(entry)) = &newer[0] else {
        panic!("{newer:?}")
    };
    assert!(entry.seq > consumed.seq);
    let more = store
        .commit(ConversationCommit {
            conversation: reloaded,
            consumed_inbox: vec![],
            outbound: vec![outbound(t, c2, "r-5", "!", T0 + 6)],
        })
        .await
        .unwrap();
    assert!(more[0].seq > items[0].seq);
}

#[tokio::test]
async fn a_sweep_does_not_reuse_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(dir.path(), Durability::Normal)
        .await
        .unwrap();
    let t = "seqs";
    let contact = "5511900000003";
    let first = store
        .ingest(
            &tid(t),
            vec![item(
                "k-1",
                inbound(t, contact, "s-1", "oi", T0),
                Some(InboxKind::CustomerMessage),
            )],
            Timestamp(T0),
        )
        .await
        .unwrap();
    let IngestOutcome::Recorded(Some(first)) = &first[0] else {
        panic!()
    };
    let conversation = store
        .load_conversation(&tid(t), &cid(contact))
        .await
        .unwrap()
        .unwrap();
    store
        .commit(ConversationCommit {
            conversation,
            consumed_inbox: vec![first.seq],
            outbound: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .sweep(Timestamp(T0), Timestamp(T0))
            .await
            .unwrap()
            .inbox_entries,
        1
    );
    let second = store
        .ingest(
            &tid(t),
            vec![item(
                "k-2",
                inbound(t, contact, "s-2", "oi", T0),
                Some(InboxKind::CustomerMessage),
            )],
            Timestamp(T0),
        )
        .await
        .unwrap();
    let IngestOutcome::Recorded(Some(second)) = &second[0] else {
        panic!()
    };
    assert!(
        second.seq > first.seq,
        "the newest entry was swept, yet its seq is not reused"
    );
}

#[tokio::test]
async fn a_large_sweep_runs_in_steps_and_counts_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(dir.path(), Durability::Normal)
        .await
        .unwrap();
    let t = "big-sweep";
    let items: Vec<IngestItem> = (0..5000)
        .map(|i| {
            let mut message = inbound(t, "5511900000004", &format!("b-{i}"), "oi", T0);
            message.expires_at = Timestamp(T0 + 1);
            item(&format!("k-{i}"), message, None)
        })
        .collect();
    store.ingest(&tid(t), items, Timestamp(T0)).await.unwrap();
    let report = store
        .sweep(Timestamp(T0 + 1), Timestamp(T0 + 1))
        .await
        .unwrap();
    assert_eq!((report.messages, report.dedupe_keys), (5000, 5000));
}

#[tokio::test]
async fn bad_stored_data_is_an_internal_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).await.unwrap();
    let t = "corrupt";
    let contact = "5511900000005";
    store
        .ingest(
            &tid(t),
            vec![item("k", inbound(t, contact, "c-1", "oi", T0), None)],
            Timestamp(T0),
        )
        .await
        .unwrap();
    {
        let conn = rusqlite_connection(store.path());
        conn.execute("UPDATE conversations SET state = 'PERDIDO'", [])
            .unwrap();
        conn.execute("UPDATE messages SET kind = 'hologram'", [])
            .unwrap();
    }
    let error = store
        .load_conversation(&tid(t), &cid(contact))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Internal);
    let error = store
        .history(&tid(t), &cid(contact), 10, None, Timestamp(T0))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Internal);
    store.health().await.expect("the store keeps working");
}

#[tokio::test]
async fn opening_a_path_that_is_a_file_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let error = EmbeddedStore::open(&file).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
}

/// Prints the ingest rate with many concurrent webhooks. Run with
/// `cargo test -p schema --release --test embedded -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn ingest_throughput() {
    for durability in [Durability::Full, Durability::Normal] {
        let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
        let store = Arc::new(
            EmbeddedStore::open_with(dir.path(), durability)
                .await
                .unwrap(),
        );
        let total: i64 = 20_000;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                let t = format!("tenant-{}", i % 10);
                let contact = format!("55119{:08}", i % 2000);
                let message = inbound(
                    &t,
                    &contact,
                    &format!("m-{i}"),
                    "quero saber o preço da pizza grande",
                    T0 + i,
                );
                let item = item(
                    &format!("evolution:{contact}:{i}"),
                    message,
                    Some(InboxKind::CustomerMessage),
                );
                store.ingest(&tid(&t), vec![item], Timestamp(T0 + i)).await
            });
        }
        for result in tasks.join_all().await {
            result.unwrap();
        }
        let elapsed = started.elapsed();
        // One at a time: no group to share the commit with.
        let sequential: i64 = 500;
        let sequential_started = Instant::now();
        for i in 0..sequential {
            let message = inbound("solo", "5511988887777", &format!("s-{i}"), "oi", T0 + i);
            let item = item(&format!("solo:{i}"), message, None);
            store
                .ingest(&tid("solo"), vec![item], Timestamp(T0 + i))
                .await
                .unwrap();
        }
        println!(
            "{durability:?}: {sequential} sequential ingests: {:.2?} each",
            sequential_started.elapsed() / u32::try_from(sequential).unwrap()
        );
        println!(
            "{durability:?}: {total} concurrent single-message ingests in {elapsed:.2?}: {:.0}/s",
            total as f64 / elapsed.as_secs_f64()
        );
    }
}

fn rusqlite_connection(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}
