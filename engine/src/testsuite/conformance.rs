//! The conformance suite every [`Store`] implementation passes.
//!
//! Written once, run against each backend: `run_all(store).await` from that backend's tests, on an
//! empty store. Each check uses its own tenants, so checks do not see each other's data; the
//! store-wide reads (pending inbox and outbox, state counts) are filtered by tenant, and the checks
//! whose answers are store-wide (sweep counts, due deadlines) run first, while the store is empty.

use std::sync::Arc;

use crate::conversation::{Conversation, ConversationState, Reason};
use crate::error::ErrorKind;
use crate::ids::{ContactId, MessageId, TenantId};
use crate::knowledge::{Chunk, ChunkEmbedding};
use crate::message::{
    Amended, Amendment, Author, Change, DeliveryStatus, InboxEntry, InboxKind, IngestItem,
    IngestOutcome, MessageKind, OutboxItem, StoredMessage,
};
use crate::ports::{
    ConversationCommit, DeliveryUpdate, DueDeadline, Knowledge, Store, SweepReport,
};
use crate::tenant::TenantStatus;
use crate::time::Timestamp;

use super::{inbound, outbound, tenant};

/// A realistic "now" (November 2023), in milliseconds.
const T0: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;

/// Runs every conformance check against `store`, which must be empty.
pub async fn run_all(store: Arc<dyn Store>) {
    let s = store.as_ref();
    empty_and_healthy(s).await;
    // Store-wide answers: these two run while no other check has written anything.
    sweep_and_expiry(s).await;
    due_deadlines(s).await;
    tenants(s).await;
    knowledge(s).await;
    ingest_and_dedupe(s).await;
    inbox_and_commit(s).await;
    outbox(s).await;
    history_paging(s).await;
    conversation_round_trip(s).await;
    listing(s).await;
    erase_contact(s).await;
    state_counts(s).await;
    delivery_and_echoes(s).await;
    amendments(s).await;
    tenant_isolation(s).await;
    concurrent_writers(store).await;
}

async fn empty_and_healthy(store: &dyn Store) {
    store
        .health()
        .await
        .expect("a fresh store should be healthy");
    assert!(!store.backend().is_empty());
    assert!(
        store.list_tenants().await.unwrap().is_empty(),
        "the suite needs an empty store"
    );
    assert!(
        store.pending_inbox().await.unwrap().is_empty(),
        "the suite needs an empty store"
    );
    assert!(
        store.pending_outbox().await.unwrap().is_empty(),
        "the suite needs an empty store"
    );
}

/// Expired messages are never returned, swept or not; a sweep removes them, old dedupe keys and
/// done inbox entries, and counts exactly what it removed; a swept key can be ingested again.
async fn sweep_and_expiry(store: &dyn Store) {
    let t = "cf-sweep";
    let contact = "5511900000001";
    let mut short_lived = inbound(t, contact, "sweep-1", "esta some logo", T0);
    short_lived.expires_at = Timestamp(T0 + 1000);
    let long_lived = inbound(t, contact, "sweep-2", "esta fica", T0 + 10);
    let outcomes = store
        .ingest(
            &tid(t),
            vec![
                item(
                    "k-sweep-1",
                    short_lived.clone(),
                    Some(InboxKind::CustomerMessage),
                ),
                item("k-sweep-2", long_lived.clone(), None),
            ],
            Timestamp(T0),
        )
        .await
        .unwrap();
    let entry = recorded_entry(&outcomes[0]);

    let before_expiry = history_at(store, t, contact, T0 + 999).await;
    assert_eq!(before_expiry, [long_lived.clone(), short_lived.clone()]);
    let at_expiry = history_at(store, t, contact, T0 + 1000).await;
    assert_eq!(
        at_expiry,
        std::slice::from_ref(&long_lived),
        "a message is gone once expires_at <= now, before any sweep"
    );

    // The inbox entry is consumed: a sweep removes done entries.
    let conversation = store
        .load_conversation(&tid(t), &cid(contact))
        .await
        .unwrap()
        .unwrap();
    store
        .commit(ConversationCommit {
            conversation,
            consumed_inbox: vec![entry.seq],
            outbound: vec![],
        })
        .await
        .unwrap();

    let report = store
        .sweep(Timestamp(T0 + 1000), Timestamp(T0))
        .await
        .unwrap();
    assert_eq!(
        report,
        SweepReport {
            messages: 1,
            dedupe_keys: 0,
            inbox_entries: 1
        },
        "keys seen at T0 are kept"
    );
    assert_eq!(
        history_at(store, t, contact, T0).await,
        std::slice::from_ref(&long_lived),
        "the expired message is deleted"
    );

    let report = store
        .sweep(Timestamp(T0 + 1000), Timestamp(T0 + 1))
        .await
        .unwrap();
    assert_eq!(
        report,
        SweepReport {
            messages: 0,
            dedupe_keys: 2,
            inbox_entries: 0
        }
    );
    let report = store
        .sweep(Timestamp(T0 + 1000), Timestamp(T0 + 1))
        .await
        .unwrap();
    assert_eq!(
        report,
        SweepReport::default(),
        "a second sweep finds nothing"
    );

    // The swept key is new again; once ingested it is a duplicate again.
    let again = inbound(t, contact, "sweep-3", "de novo", T0 + 2000);
    let outcomes = store
        .ingest(
            &tid(t),
            vec![item("k-sweep-1", again.clone(), None)],
            Timestamp(T0 + 2000),
        )
        .await;
    assert_eq!(outcomes.unwrap(), [IngestOutcome::Recorded(None)]);
    let outcomes = store
        .ingest(
            &tid(t),
            vec![item("k-sweep-1", again, None)],
            Timestamp(T0 + 2001),
        )
        .await;
    assert_eq!(outcomes.unwrap(), [IngestOutcome::Duplicate]);
}

/// Only deadlines at or before `now`, earliest first, at most `limit`.
async fn due_deadlines(store: &dyn Store) {
    let t = "cf-due";
    let deadlines = [
        ("5511900000011", Some(T0 + 300)),
        ("5511900000012", Some(T0 + 100)),
        ("5511900000013", Some(T0 + 500)),
        ("5511900000014", Some(T0 + 501)),
        ("5511900000015", None),
    ];
    for (contact, deadline) in deadlines {
        let state = if deadline.is_some() {
            ConversationState::AguardandoHumano
        } else {
            ConversationState::IaAtiva
        };
        let mut conversation = conversation(t, contact, state, T0);
        conversation.human_deadline = deadline.map(Timestamp);
        commit_only(store, conversation).await;
    }
    let due = |contact: &str, deadline: i64| DueDeadline {
        tenant: tid(t),
        contact: cid(contact),
        deadline: Timestamp(deadline),
    };
    let expected = vec![
        due("5511900000012", T0 + 100),
        due("5511900000011", T0 + 300),
        due("5511900000013", T0 + 500),
    ];
    assert_eq!(
        store.due_deadlines(Timestamp(T0 + 500), 10).await.unwrap(),
        expected
    );
    assert_eq!(
        store.due_deadlines(Timestamp(T0 + 500), 2).await.unwrap(),
        expected[..2]
    );
    assert!(
        store
            .due_deadlines(Timestamp(T0 + 99), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Handed back to the assistant: the deadline is cleared and no longer due.
    commit_only(
        store,
        conversation(t, "5511900000012", ConversationState::IaAtiva, T0 + 200),
    )
    .await;
    assert_eq!(
        store.due_deadlines(Timestamp(T0 + 500), 10).await.unwrap(),
        expected[1..]
    );
}

/// Create (conflict on a duplicate), read, list, replace (not found when missing), delete with
/// everything the tenant owns.
async fn tenants(store: &dyn Store) {
    let mut a = tenant("cf-tenant-a");
    // Settings with floats that do not print short, to catch lossy encodings.
    a.settings.human_timeout_hours = 1.0 / 3.0;
    a.settings.history_ttl_days = 0.1 + 0.2;
    assert_eq!(store.get_tenant(&a.id).await.unwrap(), None);
    store.create_tenant(&a).await.unwrap();
    let duplicate = store
        .create_tenant(&a)
        .await
        .expect_err("a second create of the same id should fail");
    assert_eq!(duplicate.kind(), ErrorKind::Conflict);
    assert_eq!(store.get_tenant(&a.id).await.unwrap(), Some(a.clone()));

    let missing = store
        .update_tenant(&tenant("cf-tenant-missing"))
        .await
        .expect_err("updating a missing tenant");
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(
        store.get_tenant(&tid("cf-tenant-missing")).await.unwrap(),
        None,
        "an update never creates"
    );
    a.name = "Loja Renomeada".into();
    a.status = TenantStatus::Suspended;
    store.update_tenant(&a).await.unwrap();
    assert_eq!(store.get_tenant(&a.id).await.unwrap(), Some(a.clone()));

    // Deleting a tenant removes everything it owns.
    let b = tenant("cf-tenant-b");
    store.create_tenant(&b).await.unwrap();
    let listed: Vec<TenantId> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert!(
        listed.contains(&a.id) && listed.contains(&b.id),
        "both tenants are listed: {listed:?}"
    );
    let contact = "5511900000021";
    store
        .put_knowledge(&b.id, &knowledge_of("Abrimos às 9h.", T0))
        .await
        .unwrap();
    let message = inbound("cf-tenant-b", contact, "tb-1", "oi", T0);
    store
        .ingest(
            &b.id,
            vec![item(
                "k-tb-1",
                message.clone(),
                Some(InboxKind::CustomerMessage),
            )],
            Timestamp(T0),
        )
        .await
        .unwrap();
    let conversation = store
        .load_conversation(&b.id, &cid(contact))
        .await
        .unwrap()
        .unwrap();
    store
        .commit(ConversationCommit {
            conversation,
            consumed_inbox: vec![],
            outbound: vec![outbound("cf-tenant-b", contact, "tb-2", "olá", T0 + 1)],
        })
        .await
        .unwrap();
    assert!(
        store.delete_tenant(&b.id).await.unwrap(),
        "the tenant existed"
    );
    assert_eq!(store.get_tenant(&b.id).await.unwrap(), None);
    assert_eq!(store.get_knowledge(&b.id).await.unwrap(), None);
    assert!(
        history_at(store, "cf-tenant-b", contact, T0)
            .await
            .is_empty()
    );
    assert_eq!(
        store.load_conversation(&b.id, &cid(contact)).await.unwrap(),
        None
    );
    assert!(
        store
            .list_conversations(&b.id, None, 10, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(pending_inbox_of(store, "cf-tenant-b").await.is_empty());
    assert!(pending_outbox_of(store, "cf-tenant-b").await.is_empty());
    assert!(counts_of(store, "cf-tenant-b").await.is_empty());
    let outcomes = store
        .ingest(
            &b.id,
            vec![item("k-tb-1", message, None)],
            Timestamp(T0 + 2),
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [IngestOutcome::Recorded(None)],
        "the tenant's dedupe keys are deleted too"
    );
    assert!(
        !store.delete_tenant(&b.id).await.unwrap(),
        "a second delete finds nothing"
    );
    assert!(
        !store
            .list_tenants()
            .await
            .unwrap()
            .iter()
            .any(|t| t.id == b.id)
    );
    assert_eq!(
        store.get_tenant(&a.id).await.unwrap(),
        Some(a),
        "other tenants are untouched"
    );
}

async fn knowledge(store: &dyn Store) {
    let t = tid("cf-knowledge");
    assert_eq!(store.get_knowledge(&t).await.unwrap(), None);
    let first = Knowledge {
        text: "Horário: seg a sex, 9h às 18h.\n\nEntregamos em São Paulo.".into(),
        chunks: vec![
            Chunk::new(0, "Horário: seg a sex, 9h às 18h."),
            Chunk {
                id: 1,
                text: "Entregamos em São Paulo.".into(),
                embedding: Some(ChunkEmbedding {
                    model: "hash-512".into(),
                    vector: vec![0.25, -0.5, 0.125, 0.0625],
                }),
            },
        ],
        updated_at: Timestamp(T0),
    };
    store.put_knowledge(&t, &first).await.unwrap();
    assert_eq!(store.get_knowledge(&t).await.unwrap(), Some(first));
    let second = knowledge_of("Fechado aos domingos.", T0 + 1);
    store.put_knowledge(&t, &second).await.unwrap();
    assert_eq!(
        store.get_knowledge(&t).await.unwrap(),
        Some(second),
        "a put replaces"
    );
    assert_eq!(
        store
            .get_knowledge(&tid("cf-knowledge-other"))
            .await
            .unwrap(),
        None
    );
}

/// Ingest records history, conversation and inbox; a seen key is a duplicate and writes nothing;
/// the same key under another tenant is not a duplicate.
async fn ingest_and_dedupe(store: &dyn Store) {
    let t = "cf-ingest";
    let contact = "5511900000031";
    let first = inbound(t, contact, "ing-1", "oi, tudo bem?", T0 + 10);
    let mut photo = inbound(t, contact, "ing-2", "", T0 + 20);
    photo.kind = MessageKind::Image;
    photo.provider_id = None;
    let outcomes = store
        .ingest(
            &tid(t),
            vec![
                item("evo:c31:1", first.clone(), Some(InboxKind::CustomerMessage)),
                item("evo:c31:2", photo.clone(), None),
            ],
            Timestamp(T0),
        )
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 2);
    let entry1 = recorded_entry(&outcomes[0]);
    assert_eq!(
        (entry1.kind, &entry1.message),
        (InboxKind::CustomerMessage, &first)
    );
    assert_eq!(outcomes[1], IngestOutcome::Recorded(None));

    // Seen before: nothing is written, even when the message differs.
    let redelivered = inbound(t, contact, "ing-1-again", "oi de novo", T0 + 30);
    let outcomes = store
        .ingest(
            &tid(t),
            vec![item(
                "evo:c31:1",
                redelivered,
                Some(InboxKind::CustomerMessage),
            )],
            Timestamp(T0 + 30),
        )
        .await
        .unwrap();
    assert_eq!(outcomes, [IngestOutcome::Duplicate]);

    // A key twice in one call: the second is the duplicate. An older message does not move
    // `last_message_at` back.
    let older = inbound(t, contact, "ing-3", "mensagem atrasada", T0 + 5);
    let outcomes = store
        .ingest(
            &tid(t),
            vec![
                item("evo:c31:3", older.clone(), Some(InboxKind::PhoneReply)),
                item(
                    "evo:c31:3",
                    inbound(t, contact, "ing-3b", "eco", T0 + 6),
                    Some(InboxKind::CustomerMessage),
                ),
            ],
            Timestamp(T0 + 40),
        )
        .await
        .unwrap();
    let entry3 = recorded_entry(&outcomes[0]);
    assert_eq!(entry3.kind, InboxKind::PhoneReply);
    assert_eq!(outcomes[1], IngestOutcome::Duplicate);
    assert!(entry3.seq > entry1.seq, "inbox seqs increase");

    assert_eq!(
        history_at(store, t, contact, T0).await,
        [photo, first.clone(), older]
    );
    assert_eq!(pending_inbox_of(store, t).await, [entry1, entry3]);
    assert_eq!(
        store
            .load_conversation(&tid(t), &cid(contact))
            .await
            .unwrap(),
        Some(Conversation {
            tenant: tid(t),
            contact: cid(contact),
            state: ConversationState::IaAtiva,
            reason: None,
            updated_at: Timestamp(T0),
            last_message_at: Some(Timestamp(T0 + 20)),
            human_deadline: None,
            human_answered: false,
        }),
        "the first ingest creates the conversation in IA_ATIVA; later ones only move last_message_at forward"
    );

    // Tenant isolation of dedupe: the same key is new under another tenant.
    let other = "cf-ingest-other";
    let theirs = inbound(other, contact, "ing-1", "oi", T0 + 10);
    let outcomes = store
        .ingest(
            &tid(other),
            vec![item("evo:c31:1", theirs.clone(), None)],
            Timestamp(T0),
        )
        .await;
    assert_eq!(outcomes.unwrap(), [IngestOutcome::Recorded(None)]);
    assert_eq!(history_at(store, other, contact, T0).await, [theirs]);
    assert_eq!(history_at(store, t, contact, T0).await.len(), 3);
}

/// A commit stores the conversation, marks consumed inbox entries done, appends the outbound
/// messages and returns one outbox entry each, in order.
async fn inbox_and_commit(store: &dyn Store) {
    let t = "cf-commit";
    let (c1, c2, c3) = ("5511900000041", "5511900000042", "5511900000043");
    let m1 = inbound(t, c1, "cm-1", "quero falar com atendente", T0 + 1);
    let m2 = inbound(t, c2, "cm-2", "oi", T0 + 2);
    let m3 = inbound(t, c1, "cm-3", "alguém?", T0 + 3);
    let mut entries = Vec::new();
    for (key, message) in [("k-cm-1", &m1), ("k-cm-2", &m2), ("k-cm-3", &m3)] {
        let outcomes = store
            .ingest(
                &tid(t),
                vec![item(key, message.clone(), Some(InboxKind::CustomerMessage))],
                message.at,
            )
            .await
            .unwrap();
        entries.push(recorded_entry(&outcomes[0]));
    }
    assert!(
        entries.windows(2).all(|w| w[0].seq < w[1].seq),
        "inbox seqs increase in insertion order"
    );
    assert_eq!(pending_inbox_of(store, t).await, entries);

    let handed_off = Conversation {
        state: ConversationState::AguardandoHumano,
        reason: Some(Reason::HandoffKeyword),
        updated_at: Timestamp(T0 + 10),
        last_message_at: Some(Timestamp(T0 + 3)),
        human_deadline: Some(Timestamp(T0 + 10 + 24 * HOUR)),
        ..conversation(t, c1, ConversationState::IaAtiva, T0 + 1)
    };
    let reply = outbound(t, c1, "cm-o1", "Vou chamar uma pessoa da equipe.", T0 + 10);
    let notice = outbound(t, c1, "cm-o2", "Aguarde um momento.", T0 + 10);
    let items = store
        .commit(ConversationCommit {
            conversation: handed_off.clone(),
            consumed_inbox: vec![entries[0].seq, entries[2].seq],
            outbound: vec![reply.clone(), notice.clone()],
        })
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    assert!(items[0].seq < items[1].seq, "outbox seqs increase in order");
    for (item, message) in items.iter().zip([&reply, &notice]) {
        assert_eq!(
            (
                &item.tenant,
                &item.contact,
                &item.message_id,
                &item.text,
                item.attempts
            ),
            (
                &message.tenant,
                &message.contact,
                &message.id,
                &message.text,
                0
            )
        );
    }
    assert_eq!(
        pending_inbox_of(store, t).await,
        [entries[1].clone()],
        "consumed entries are done"
    );
    assert_eq!(pending_outbox_of(store, t).await, items);
    assert_eq!(
        store.load_conversation(&tid(t), &cid(c1)).await.unwrap(),
        Some(Conversation {
            last_message_at: Some(Timestamp(T0 + 10)),
            ..handed_off.clone()
        }),
        "the outbound messages move last_message_at"
    );
    assert_eq!(
        history_at(store, t, c1, T0).await,
        [notice, reply, m3, m1],
        "at equal times the later write first"
    );

    // Seqs keep increasing across commits.
    let later = outbound(t, c1, "cm-o3", "Ainda por aqui.", T0 + 20);
    let more = store
        .commit(ConversationCommit {
            conversation: handed_off,
            consumed_inbox: vec![],
            outbound: vec![later],
        })
        .await
        .unwrap();
    assert!(more[0].seq > items[1].seq);

    // A commit built from a stale snapshot does not undo a concurrent ingest's activity.
    let newer = inbound(t, c2, "cm-4", "ainda aqui?", T0 + 50);
    store
        .ingest(
            &tid(t),
            vec![item("k-cm-4", newer, None)],
            Timestamp(T0 + 50),
        )
        .await
        .unwrap();
    let stale = Conversation {
        last_message_at: Some(Timestamp(T0 + 2)),
        updated_at: Timestamp(T0 + 60),
        ..conversation(t, c2, ConversationState::IaAtiva, T0 + 2)
    };
    store
        .commit(ConversationCommit {
            conversation: stale.clone(),
            consumed_inbox: vec![entries[1].seq],
            outbound: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        store.load_conversation(&tid(t), &cid(c2)).await.unwrap(),
        Some(Conversation {
            last_message_at: Some(Timestamp(T0 + 50)),
            ..stale
        }),
        "last_message_at never moves back"
    );
    assert!(pending_inbox_of(store, t).await.is_empty());

    // A commit creates a conversation that has no message yet (an operator takeover).
    let takeover = Conversation {
        reason: Some(Reason::OperatorTakeover),
        human_deadline: Some(Timestamp(T0 + 100 * 24 * HOUR)),
        ..conversation(t, c3, ConversationState::AguardandoHumano, T0 + 70)
    };
    commit_only(store, takeover.clone()).await;
    assert_eq!(
        store.load_conversation(&tid(t), &cid(c3)).await.unwrap(),
        Some(takeover)
    );
}

/// Sent entries leave the outbox and give the message its provider id and `sent`; failed ones
/// leave it and mark the message `failed`; a status further along is never moved back.
async fn outbox(store: &dyn Store) {
    let t = "cf-outbox";
    let contact = "5511900000051";
    let messages: Vec<StoredMessage> = (0..3)
        .map(|i| {
            outbound(
                t,
                contact,
                &format!("ob-{i}"),
                &format!("resposta {i}"),
                T0 + i,
            )
        })
        .collect();
    let items = store
        .commit(ConversationCommit {
            conversation: conversation(t, contact, ConversationState::IaAtiva, T0),
            consumed_inbox: vec![],
            outbound: messages.clone(),
        })
        .await
        .unwrap();
    assert_eq!(pending_outbox_of(store, t).await, items);

    store
        .outbox_sent(items[0].seq, Some("wa-ob-0"), Timestamp(T0 + 10))
        .await
        .unwrap();
    assert_eq!(pending_outbox_of(store, t).await, items[1..]);
    let sent = message_in(store, t, contact, "ob-0").await;
    assert_eq!(
        (sent.provider_id.as_deref(), sent.status),
        (Some("wa-ob-0"), Some(DeliveryStatus::Sent))
    );

    store
        .outbox_failed(items[1].seq, "número inválido", Timestamp(T0 + 11))
        .await
        .unwrap();
    assert_eq!(pending_outbox_of(store, t).await, items[2..]);
    assert_eq!(
        message_in(store, t, contact, "ob-1").await.status,
        Some(DeliveryStatus::Failed)
    );

    // The read receipt came first; a repeated "sent" does not move the message back.
    let update = store
        .record_delivery(&tid(t), "wa-ob-0", DeliveryStatus::Read)
        .await
        .unwrap();
    assert!(update.is_some());
    store
        .outbox_sent(items[0].seq, Some("wa-ob-0"), Timestamp(T0 + 12))
        .await
        .unwrap();
    assert_eq!(
        message_in(store, t, contact, "ob-0").await.status,
        Some(DeliveryStatus::Read)
    );

    // Unknown seqs are ignored.
    store
        .outbox_sent(u64::MAX, None, Timestamp(T0))
        .await
        .unwrap();
    store
        .outbox_failed(u64::MAX - 1, "?", Timestamp(T0))
        .await
        .unwrap();
    assert_eq!(pending_outbox_of(store, t).await, items[2..]);
    assert_eq!(
        message_in(store, t, contact, "ob-2").await.status,
        Some(DeliveryStatus::Pending)
    );
}

/// Newest first, strictly older than `before`, at most `limit`, other contacts never included.
async fn history_paging(store: &dyn Store) {
    let t = "cf-history";
    let (contact, neighbour) = ("5511900000061", "5511900000062");
    let mut written = Vec::new();
    for i in 0..10 {
        let mut message = inbound(
            t,
            contact,
            &format!("h-{i}"),
            &format!("mensagem {i}"),
            T0 + i * 10,
        );
        if i == 5 {
            message.kind = MessageKind::Image;
            message.text = String::new();
            message.provider_id = None;
        }
        written.push(message);
    }
    // Two at the same millisecond, written one after the other.
    written.push(inbound(t, contact, "h-10", "primeira", T0 + 100));
    written.push(inbound(t, contact, "h-11", "segunda", T0 + 100));
    for message in &written {
        store
            .ingest(
                &tid(t),
                vec![item(&format!("k-{}", message.id), message.clone(), None)],
                message.at,
            )
            .await
            .unwrap();
    }
    let theirs = inbound(t, neighbour, "h-n", "outro contato", T0 + 55);
    store
        .ingest(
            &tid(t),
            vec![item("k-h-n", theirs, None)],
            Timestamp(T0 + 55),
        )
        .await
        .unwrap();

    let newest_first: Vec<StoredMessage> = written.iter().rev().cloned().collect();
    let now = T0 + 1000;
    let page = |before: Option<i64>| async move {
        store
            .history(
                &tid(t),
                &cid(contact),
                4,
                before.map(Timestamp),
                Timestamp(now),
            )
            .await
    };
    let first = page(None).await.unwrap();
    assert_eq!(first, newest_first[0..4]);
    let second = page(Some(first[3].at.as_millis())).await.unwrap();
    assert_eq!(second, newest_first[4..8]);
    let third = page(Some(second[3].at.as_millis())).await.unwrap();
    assert_eq!(third, newest_first[8..12]);
    assert!(
        page(Some(third[3].at.as_millis()))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(history_at(store, t, contact, now).await, newest_first);
    assert!(
        store
            .history(&tid(t), &cid(contact), 0, None, Timestamp(now))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(history_at(store, t, "5511900000069", now).await.is_empty());
}

/// Every state, every reason and every field of [`Conversation`] survive a commit and a load.
async fn conversation_round_trip(store: &dyn Store) {
    let t = "cf-state";
    assert_eq!(
        store
            .load_conversation(&tid(t), &cid("5511900000070"))
            .await
            .unwrap(),
        None
    );
    for (i, reason) in (0i64..).zip(Reason::ALL) {
        for (j, state) in (0i64..).zip(ConversationState::ALL) {
            let conversation = Conversation {
                reason: Some(reason),
                last_message_at: (j != 1).then_some(Timestamp(T0 - i)),
                human_deadline: state
                    .human_in_charge()
                    .then_some(Timestamp(T0 + 365 * 24 * HOUR + i)),
                human_answered: (i + j) % 2 == 0,
                ..conversation(t, &format!("55119007{i:02}{j:02}"), state, T0 + i * 3 + j)
            };
            commit_only(store, conversation.clone()).await;
            let loaded = store
                .load_conversation(&conversation.tenant, &conversation.contact)
                .await
                .unwrap();
            assert_eq!(loaded, Some(conversation));
        }
    }
    // Every field is replaced by the next commit (last_message_at only moves forward).
    let contact = "5511900000071";
    let waiting = Conversation {
        reason: Some(Reason::LowConfidence),
        last_message_at: Some(Timestamp(T0)),
        human_deadline: Some(Timestamp(T0 + 365 * 24 * HOUR)),
        human_answered: true,
        ..conversation(t, contact, ConversationState::HumanoRespondeu, T0)
    };
    commit_only(store, waiting).await;
    let back = Conversation {
        reason: Some(Reason::HumanTimeout),
        last_message_at: Some(Timestamp(T0 + 5)),
        ..conversation(t, contact, ConversationState::IaAtiva, T0 + 5)
    };
    commit_only(store, back.clone()).await;
    assert_eq!(
        store
            .load_conversation(&tid(t), &cid(contact))
            .await
            .unwrap(),
        Some(back)
    );
    let fresh = Conversation {
        last_message_at: Some(Timestamp(T0 + 5)),
        ..conversation(t, contact, ConversationState::IaAtiva, T0 + 6)
    };
    commit_only(store, fresh.clone()).await;
    assert_eq!(
        store
            .load_conversation(&tid(t), &cid(contact))
            .await
            .unwrap(),
        Some(fresh),
        "a reason can be cleared"
    );
}

/// Most recent activity first (last message, else last update; ties by contact), an optional state
/// filter, cursor pages without duplicates or gaps, another tenant's conversations never listed.
async fn listing(store: &dyn Store) {
    let t = "cf-list";
    let other = "cf-list-other";
    let mut expected: Vec<(i64, String, ConversationState)> = Vec::new();
    for i in 0..25i64 {
        let contact = format!("55118{i:07}");
        let at = T0 + (i / 2) * 10; // pairs share their activity: ties are broken by contact
        let message = inbound(t, &contact, &format!("l-{i}"), "oi", at);
        store
            .ingest(
                &tid(t),
                vec![item(&format!("k-l-{i}"), message, None)],
                Timestamp(at),
            )
            .await
            .unwrap();
        let mut state = ConversationState::IaAtiva;
        if i % 3 == 0 {
            state = ConversationState::AguardandoHumano;
            let mut waiting = store
                .load_conversation(&tid(t), &cid(&contact))
                .await
                .unwrap()
                .unwrap();
            waiting.state = state;
            waiting.reason = Some(Reason::LowConfidence);
            waiting.updated_at = Timestamp(T0 + 10_000); // activity stays the last message
            commit_only(store, waiting).await;
        }
        expected.push((at, contact, state));
    }
    // No message yet: its activity is its last update.
    let silent = "5511899999999";
    commit_only(
        store,
        conversation(t, silent, ConversationState::HumanoRespondeu, T0 + 125),
    )
    .await;
    expected.push((
        T0 + 125,
        silent.to_owned(),
        ConversationState::HumanoRespondeu,
    ));
    for i in 0..5i64 {
        let contact = format!("55118{i:07}");
        let message = inbound(other, &contact, &format!("l-{i}"), "oi", T0 + 10_000);
        store
            .ingest(
                &tid(other),
                vec![item(&format!("k-l-{i}"), message, None)],
                Timestamp(T0),
            )
            .await
            .unwrap();
    }
    expected.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));

    let all: Vec<String> = expected.iter().map(|(_, c, _)| c.clone()).collect();
    assert_eq!(
        list_all(store, t, None, 4).await,
        (all.clone(), 7),
        "26 conversations in pages of 4"
    );
    assert_eq!(
        list_all(store, t, None, 13).await,
        (all.clone(), 2),
        "no empty page after an exact fit"
    );
    assert_eq!(list_all(store, t, None, 100).await, (all, 1));
    let waiting: Vec<String> = expected
        .iter()
        .filter(|(_, _, s)| *s == ConversationState::AguardandoHumano)
        .map(|(_, c, _)| c.clone())
        .collect();
    assert_eq!(waiting.len(), 9);
    assert_eq!(
        list_all(store, t, Some(ConversationState::AguardandoHumano), 2).await,
        (waiting, 5)
    );
    assert_eq!(
        list_all(store, t, Some(ConversationState::HumanoRespondeu), 2).await,
        (vec![silent.to_owned()], 1)
    );

    // Items are the stored records.
    let page = store
        .list_conversations(&tid(t), None, 3, None)
        .await
        .unwrap();
    for listed in &page.items {
        let loaded = store
            .load_conversation(&tid(t), &listed.contact)
            .await
            .unwrap();
        assert_eq!(Some(listed), loaded.as_ref());
    }
    let malformed = store
        .list_conversations(&tid(t), None, 3, Some("not a cursor"))
        .await;
    assert_eq!(
        malformed.expect_err("a malformed cursor is refused").kind(),
        ErrorKind::Invalid
    );
    let theirs = store
        .list_conversations(&tid(other), None, 100, None)
        .await
        .unwrap();
    assert_eq!(theirs.items.len(), 5);
    assert!(theirs.items.iter().all(|c| c.tenant == tid(other)));
}

/// Erasing a contact removes its history, conversation, inbox and outbox entries, and nothing else.
async fn erase_contact(store: &dyn Store) {
    let t = "cf-erase";
    let (x, y) = ("5511900000081", "5511900000082");
    let mut entries = Vec::new();
    for (key, contact, id) in [
        ("k-e-1", x, "e-1"),
        ("k-e-2", y, "e-2"),
        ("k-e-3", x, "e-3"),
    ] {
        let message = inbound(t, contact, id, "oi", T0);
        let outcomes = store
            .ingest(
                &tid(t),
                vec![item(key, message, Some(InboxKind::CustomerMessage))],
                Timestamp(T0),
            )
            .await
            .unwrap();
        entries.push(recorded_entry(&outcomes[0]));
    }
    let mut outbox_items = Vec::new();
    for (contact, consumed) in [(x, entries[0].seq), (y, entries[1].seq)] {
        let mut conversation = store
            .load_conversation(&tid(t), &cid(contact))
            .await
            .unwrap()
            .unwrap();
        conversation.updated_at = Timestamp(T0 + 1);
        let items = store
            .commit(ConversationCommit {
                conversation,
                consumed_inbox: vec![consumed],
                outbound: vec![outbound(
                    t,
                    contact,
                    &format!("eo-{contact}"),
                    "olá",
                    T0 + 1,
                )],
            })
            .await
            .unwrap();
        outbox_items.extend(items);
    }
    // The erased contact still has a pending inbox entry (e-3) and a pending outbox entry.
    store.erase_contact(&tid(t), &cid(x)).await.unwrap();
    assert!(history_at(store, t, x, T0).await.is_empty());
    assert_eq!(
        store.load_conversation(&tid(t), &cid(x)).await.unwrap(),
        None
    );
    assert!(pending_inbox_of(store, t).await.is_empty(), "e-3 was x's");
    assert_eq!(pending_outbox_of(store, t).await, [outbox_items[1].clone()]);
    assert_eq!(history_at(store, t, y, T0).await.len(), 2);
    assert!(
        store
            .load_conversation(&tid(t), &cid(y))
            .await
            .unwrap()
            .is_some()
    );
    let listed = store
        .list_conversations(&tid(t), None, 10, None)
        .await
        .unwrap()
        .items;
    assert_eq!(
        listed
            .iter()
            .map(|c| c.contact.as_str())
            .collect::<Vec<_>>(),
        [y]
    );
    store
        .erase_contact(&tid(t), &cid(x))
        .await
        .expect("erasing an erased contact is not an error");

    // The contact may come back: it starts afresh.
    let back = inbound(t, x, "e-4", "voltei", T0 + 100);
    let outcomes = store
        .ingest(
            &tid(t),
            vec![item("k-e-4", back.clone(), None)],
            Timestamp(T0 + 100),
        )
        .await;
    assert_eq!(outcomes.unwrap(), [IngestOutcome::Recorded(None)]);
    assert_eq!(history_at(store, t, x, T0 + 100).await, [back]);
    let fresh = store
        .load_conversation(&tid(t), &cid(x))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (fresh.state, fresh.updated_at),
        (ConversationState::IaAtiva, Timestamp(T0 + 100))
    );
}

async fn state_counts(store: &dyn Store) {
    let t = "cf-counts";
    for i in 0..6 {
        let contact = format!("55119008{i:05}");
        let message = inbound(t, &contact, &format!("sc-{i}"), "oi", T0);
        store
            .ingest(
                &tid(t),
                vec![item(&format!("k-sc-{i}"), message, None)],
                Timestamp(T0),
            )
            .await
            .unwrap();
        let state = match i {
            0..3 => continue,
            3 | 4 => ConversationState::AguardandoHumano,
            _ => ConversationState::HumanoRespondeu,
        };
        commit_only(store, conversation(t, &contact, state, T0 + 1)).await;
    }
    assert_eq!(
        counts_of(store, t).await,
        [
            (ConversationState::AguardandoHumano, 2),
            (ConversationState::HumanoRespondeu, 1),
            (ConversationState::IaAtiva, 3)
        ]
    );
}

/// Delivery statuses only move forward and only for the tenant's outbound messages; an echo is
/// recognised only for messages Conversa's assistant sent.
async fn delivery_and_echoes(store: &dyn Store) {
    let t = "cf-delivery";
    let other = "cf-delivery-other";
    let contact = "5511900000091";
    let assistant = outbound(t, contact, "d-1", "resposta", T0);
    let human = StoredMessage {
        author: Author::Human,
        ..outbound(t, contact, "d-2", "aqui é a Ana", T0 + 1)
    };
    let items = store
        .commit(ConversationCommit {
            conversation: conversation(t, contact, ConversationState::HumanoRespondeu, T0 + 1),
            consumed_inbox: vec![],
            outbound: vec![assistant.clone(), human],
        })
        .await
        .unwrap();
    store
        .outbox_sent(items[0].seq, Some("wa-d-1"), Timestamp(T0 + 2))
        .await
        .unwrap();
    store
        .outbox_sent(items[1].seq, Some("wa-d-2"), Timestamp(T0 + 2))
        .await
        .unwrap();
    let mut incoming = inbound(t, contact, "d-3", "obrigado", T0 + 3);
    incoming.provider_id = Some("wa-d-3".into());
    store
        .ingest(
            &tid(t),
            vec![item("k-d-3", incoming, None)],
            Timestamp(T0 + 3),
        )
        .await
        .unwrap();

    let update = |status| DeliveryUpdate {
        contact: cid(contact),
        message_id: assistant.id.clone(),
        status,
    };
    let record = |provider_id: &'static str, status| async move {
        store.record_delivery(&tid(t), provider_id, status).await
    };
    assert_eq!(
        record("wa-d-1", DeliveryStatus::Delivered).await.unwrap(),
        Some(update(DeliveryStatus::Delivered))
    );
    assert_eq!(
        record("wa-d-1", DeliveryStatus::Delivered).await.unwrap(),
        None,
        "not newer"
    );
    assert_eq!(
        record("wa-d-1", DeliveryStatus::Sent).await.unwrap(),
        None,
        "older"
    );
    assert_eq!(
        record("wa-d-1", DeliveryStatus::Read).await.unwrap(),
        Some(update(DeliveryStatus::Read))
    );
    assert_eq!(
        message_in(store, t, contact, "d-1").await.status,
        Some(DeliveryStatus::Read)
    );
    assert_eq!(
        record("wa-d-1", DeliveryStatus::Failed).await.unwrap(),
        Some(update(DeliveryStatus::Failed))
    );
    assert_eq!(
        record("wa-d-1", DeliveryStatus::Read).await.unwrap(),
        None,
        "failed is final"
    );
    assert_eq!(
        message_in(store, t, contact, "d-1").await.status,
        Some(DeliveryStatus::Failed)
    );
    assert_eq!(
        record("wa-unknown", DeliveryStatus::Read).await.unwrap(),
        None
    );
    assert_eq!(
        record("wa-d-3", DeliveryStatus::Read).await.unwrap(),
        None,
        "inbound messages have no delivery"
    );
    let foreign = store
        .record_delivery(&tid(other), "wa-d-2", DeliveryStatus::Read)
        .await
        .unwrap();
    assert_eq!(foreign, None, "another tenant's message");
    assert_eq!(
        message_in(store, t, contact, "d-2").await.status,
        Some(DeliveryStatus::Sent)
    );

    assert!(
        store.is_own_message(&tid(t), "wa-d-1").await.unwrap(),
        "the assistant's message is an echo"
    );
    assert!(
        !store.is_own_message(&tid(t), "wa-d-2").await.unwrap(),
        "a human's message is not ours"
    );
    assert!(
        !store.is_own_message(&tid(t), "wa-d-3").await.unwrap(),
        "an inbound message is not ours"
    );
    assert!(!store.is_own_message(&tid(t), "wa-unknown").await.unwrap());
    assert!(
        !store.is_own_message(&tid(other), "wa-d-1").await.unwrap(),
        "another tenant's message"
    );
}

/// Two tenants with the same contact, message ids and dedupe keys never see each other.
async fn tenant_isolation(store: &dyn Store) {
    let (a, b) = ("cf-iso-a", "cf-iso-b");
    let contact = "5511900000101";
    for t in [a, b] {
        let message = inbound(t, contact, "iso-1", &format!("sou de {t}"), T0);
        let outcomes = store
            .ingest(
                &tid(t),
                vec![item("k-iso-1", message, Some(InboxKind::CustomerMessage))],
                Timestamp(T0),
            )
            .await
            .unwrap();
        let entry = recorded_entry(&outcomes[0]);
        let reply = outbound(t, contact, "iso-2", &format!("resposta de {t}"), T0 + 1);
        store
            .commit(ConversationCommit {
                conversation: conversation(t, contact, ConversationState::IaAtiva, T0 + 1),
                consumed_inbox: vec![entry.seq],
                outbound: vec![reply],
            })
            .await
            .unwrap();
    }
    let b_history = history_at(store, b, contact, T0).await;
    assert_eq!(b_history.len(), 2);
    for t in [a, b] {
        let history = history_at(store, t, contact, T0).await;
        assert_eq!(history.len(), 2);
        assert!(
            history
                .iter()
                .all(|m| m.tenant == tid(t) && m.text.ends_with(t)),
            "{t}: {history:?}"
        );
        let listed = store
            .list_conversations(&tid(t), None, 10, None)
            .await
            .unwrap()
            .items;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].tenant, tid(t));
        assert_eq!(pending_outbox_of(store, t).await.len(), 1);
    }
    // A's handoff leaves B's conversation alone.
    let waiting = Conversation {
        reason: Some(Reason::OperatorTakeover),
        human_deadline: Some(Timestamp(T0 + 365 * 24 * HOUR)),
        ..conversation(a, contact, ConversationState::AguardandoHumano, T0 + 2)
    };
    commit_only(store, waiting).await;
    let theirs = store
        .load_conversation(&tid(b), &cid(contact))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(theirs.state, ConversationState::IaAtiva);
    assert_eq!(counts_of(store, b).await, [(ConversationState::IaAtiva, 1)]);

    store.erase_contact(&tid(a), &cid(contact)).await.unwrap();
    store.delete_tenant(&tid(a)).await.unwrap();
    assert!(history_at(store, a, contact, T0).await.is_empty());
    assert_eq!(
        history_at(store, b, contact, T0).await,
        b_history,
        "erase and delete of A leave B alone"
    );
    assert_eq!(pending_outbox_of(store, b).await.len(), 1);
    assert!(
        store
            .load_conversation(&tid(b), &cid(contact))
            .await
            .unwrap()
            .is_some()
    );
}

/// Many writers at once on one conversation (and on many): nothing lost, nothing doubled, seqs
/// unique and increasing.
async fn concurrent_writers(store: Arc<dyn Store>) {
    let t = "cf-concurrent";
    let contact = "5511900000111";
    let mut ingests = tokio::task::JoinSet::new();
    for i in 0..50i64 {
        let store = Arc::clone(&store);
        ingests.spawn(async move {
            let message = inbound(
                t,
                contact,
                &format!("cc-{i}"),
                &format!("parte {i}"),
                T0 + i,
            );
            store
                .ingest(
                    &tid(t),
                    vec![item(
                        &format!("k-cc-{i}"),
                        message,
                        Some(InboxKind::CustomerMessage),
                    )],
                    Timestamp(T0 + i),
                )
                .await
        });
    }
    for i in 0..10i64 {
        let store = Arc::clone(&store);
        ingests.spawn(async move {
            let message = inbound(t, contact, &format!("cc-dup-{i}"), "repetida", T0 + 100);
            store
                .ingest(
                    &tid(t),
                    vec![item("k-cc-dup", message, Some(InboxKind::CustomerMessage))],
                    Timestamp(T0 + 100),
                )
                .await
        });
    }
    let mut commits = tokio::task::JoinSet::new();
    for i in 0..20i64 {
        let store = Arc::clone(&store);
        commits.spawn(async move {
            let contact = format!("55119011{i:05}");
            store
                .commit(ConversationCommit {
                    conversation: conversation(t, &contact, ConversationState::IaAtiva, T0 + i),
                    consumed_inbox: vec![],
                    outbound: vec![
                        outbound(t, &contact, &format!("cco-{i}-a"), "um", T0 + i),
                        outbound(t, &contact, &format!("cco-{i}-b"), "dois", T0 + i),
                    ],
                })
                .await
        });
    }
    let (mut recorded, mut duplicates) = (0, 0);
    for outcome in ingests.join_all().await {
        match outcome
            .expect("concurrent ingests should succeed")
            .as_slice()
        {
            [IngestOutcome::Recorded(Some(_))] => recorded += 1,
            [IngestOutcome::Duplicate] => duplicates += 1,
            other => panic!("unexpected ingest outcome {other:?}"),
        }
    }
    assert_eq!(
        (recorded, duplicates),
        (51, 9),
        "one of the ten deliveries of the same key is recorded"
    );
    let mut outbox_seqs = Vec::new();
    for items in commits.join_all().await {
        let items = items.expect("concurrent commits should succeed");
        assert_eq!(items.len(), 2);
        assert!(items[0].seq < items[1].seq);
        outbox_seqs.extend(items.iter().map(|item| item.seq));
    }

    let history = store
        .history(&tid(t), &cid(contact), 1000, None, Timestamp(T0))
        .await
        .unwrap();
    assert_eq!(history.len(), 51);
    let inbox = pending_inbox_of(store.as_ref(), t).await;
    assert_eq!(inbox.len(), 51);
    assert!(
        inbox.windows(2).all(|w| w[0].seq < w[1].seq),
        "pending inbox oldest first, seqs unique"
    );
    let conversation = store
        .load_conversation(&tid(t), &cid(contact))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conversation.last_message_at, Some(Timestamp(T0 + 100)));
    let outbox = pending_outbox_of(store.as_ref(), t).await;
    assert_eq!(outbox.len(), 40);
    assert!(
        outbox.windows(2).all(|w| w[0].seq < w[1].seq),
        "pending outbox oldest first, seqs unique"
    );
    outbox_seqs.sort_unstable();
    assert_eq!(
        outbox.iter().map(|item| item.seq).collect::<Vec<_>>(),
        outbox_seqs
    );
}

// ---- helpers ----

fn tid(id: &str) -> TenantId {
    TenantId::parse(id).expect("the suite's tenant ids should be valid slugs")
}

fn cid(contact: &str) -> ContactId {
    ContactId::parse(contact).expect("the suite's contacts should be valid phone numbers")
}

fn item(key: &str, message: StoredMessage, inbox: Option<InboxKind>) -> IngestItem {
    IngestItem {
        dedupe_key: key.to_owned(),
        message,
        inbox,
    }
}

fn conversation(t: &str, contact: &str, state: ConversationState, at: i64) -> Conversation {
    Conversation {
        state,
        ..Conversation::new(tid(t), cid(contact), Timestamp(at))
    }
}

fn knowledge_of(text: &str, at: i64) -> Knowledge {
    Knowledge {
        text: text.to_owned(),
        chunks: vec![Chunk::new(0, text)],
        updated_at: Timestamp(at),
    }
}

#[track_caller]
fn recorded_entry(outcome: &IngestOutcome) -> InboxEntry {
    match outcome {
        IngestOutcome::Recorded(Some(entry)) => entry.clone(),
        other => panic!("expected a recorded message with an inbox entry, got {other:?}"),
    }
}

/// Stores a conversation record alone.
async fn commit_only(store: &dyn Store, conversation: Conversation) {
    let items = store
        .commit(ConversationCommit {
            conversation,
            consumed_inbox: vec![],
            outbound: vec![],
        })
        .await;
    assert!(items.expect("a commit should succeed").is_empty());
}

/// An edit replaces the text of the message with that provider id, of that contact only; a
/// deletion empties it and is final; messages older than the look-back are not reached.
async fn amendments(store: &dyn Store) {
    let (t, other) = ("cf-amend", "cf-amend-other");
    let (contact, neighbour) = ("5511900000071", "5511900000072");
    let mut first = inbound(t, contact, "a-1", "tem no tamanho P?", T0);
    first.provider_id = Some("wa-a-1".into());
    let mut second = inbound(t, contact, "a-2", "e na cor azul?", T0 + 1);
    second.provider_id = Some("wa-a-2".into());
    store
        .ingest(
            &tid(t),
            vec![item("k-a-1", first, None), item("k-a-2", second, None)],
            Timestamp(T0 + 1),
        )
        .await
        .unwrap();
    let amend = |t: &'static str,
                 contact: &'static str,
                 id: &'static str,
                 a: Amendment,
                 at: i64| async move {
        store
            .amend_message(&tid(t), &cid(contact), id, &a, Timestamp(at))
            .await
            .unwrap()
    };
    let edit = || Amendment::Edit("tem no tamanho M?".into());
    assert_eq!(
        amend(t, neighbour, "wa-a-1", edit(), T0 + 5).await,
        None,
        "another contact"
    );
    assert_eq!(
        amend(other, contact, "wa-a-1", edit(), T0 + 5).await,
        None,
        "another tenant"
    );
    assert_eq!(amend(t, contact, "wa-unknown", edit(), T0 + 5).await, None);

    let edited = amend(t, contact, "wa-a-1", edit(), T0 + 5)
        .await
        .expect("the message is edited");
    assert_eq!(edited.id, MessageId("a-1".into()));
    assert_eq!(edited.text, "tem no tamanho M?");
    let was_edited = Some(Amended {
        change: Change::Edited,
        at: Timestamp(T0 + 5),
    });
    assert_eq!(edited.amended, was_edited);
    assert_eq!(message_in(store, t, contact, "a-1").await, edited);

    let revoked = amend(t, contact, "wa-a-1", Amendment::Revoke, T0 + 6)
        .await
        .expect("the message is deleted");
    assert_eq!(revoked.text, "");
    assert_eq!(revoked.amended.map(|a| a.change), Some(Change::Revoked));
    assert_eq!(
        amend(t, contact, "wa-a-1", edit(), T0 + 7).await,
        None,
        "a deletion is final"
    );
    assert_eq!(message_in(store, t, contact, "a-1").await, revoked);

    // Beyond the look-back, nothing is reached (the message itself is still in history).
    let late = T0 + 1 + (crate::message::AMEND_LOOKBACK_DAYS * 86_400_000.0) as i64 + 1;
    assert_eq!(amend(t, contact, "wa-a-2", edit(), late).await, None);
    assert_eq!(
        message_in(store, t, contact, "a-2").await.text,
        "e na cor azul?"
    );
    assert_eq!(message_in(store, t, contact, "a-2").await.amended, None);
}

async fn history_at(store: &dyn Store, t: &str, contact: &str, now: i64) -> Vec<StoredMessage> {
    store
        .history(&tid(t), &cid(contact), 1000, None, Timestamp(now))
        .await
        .unwrap()
}

async fn message_in(store: &dyn Store, t: &str, contact: &str, id: &str) -> StoredMessage {
    let history = history_at(store, t, contact, T0).await;
    let found = history
        .into_iter()
        .find(|m| m.id == MessageId(id.to_owned()));
    found.unwrap_or_else(|| panic!("message {id} should be in the history"))
}

async fn pending_inbox_of(store: &dyn Store, t: &str) -> Vec<InboxEntry> {
    let entries = store.pending_inbox().await.unwrap();
    entries
        .into_iter()
        .filter(|e| e.message.tenant == tid(t))
        .collect()
}

async fn pending_outbox_of(store: &dyn Store, t: &str) -> Vec<OutboxItem> {
    let items = store.pending_outbox().await.unwrap();
    items
        .into_iter()
        .filter(|item| item.tenant == tid(t))
        .collect()
}

/// The tenant's conversation counts, by state name.
async fn counts_of(store: &dyn Store, t: &str) -> Vec<(ConversationState, u64)> {
    let counts = store.state_counts().await.unwrap();
    let mut mine: Vec<(ConversationState, u64)> = counts
        .into_iter()
        .filter(|(tenant, _, _)| *tenant == tid(t))
        .map(|(_, state, n)| (state, n))
        .collect();
    mine.sort_by_key(|(state, _)| state.as_str());
    mine
}

/// Every page of a listing: the contacts in order and how many pages it took. Fails on a page
/// longer than `limit`, a cursor on the last page or a missing cursor on any other.
async fn list_all(
    store: &dyn Store,
    t: &str,
    state: Option<ConversationState>,
    limit: usize,
) -> (Vec<String>, usize) {
    let mut contacts = Vec::new();
    let mut cursor: Option<String> = None;
    for pages in 1..=100 {
        let page = store
            .list_conversations(&tid(t), state, limit, cursor.as_deref())
            .await
            .unwrap();
        assert!(
            page.items.len() <= limit,
            "page {pages} is longer than {limit}"
        );
        assert!(
            page.items
                .iter()
                .all(|c| c.tenant == tid(t) && state.is_none_or(|s| c.state == s))
        );
        contacts.extend(page.items.iter().map(|c| c.contact.to_string()));
        match page.next_cursor {
            Some(next) => {
                assert_eq!(page.items.len(), limit, "only the last page may be short");
                cursor = Some(next);
            }
            None => return (contacts, pages),
        }
    }
    panic!("the listing of {t} did not end after 100 pages");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsuite::MemoryStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_store_conforms() {
        run_all(Arc::new(MemoryStore::new())).await;
    }
}
