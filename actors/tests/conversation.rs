//! The actor tree on paused Tokio time, with the in-memory store and a recording provider:
//! debounce, exactly one answer per turn, silence while a human is in charge, the human timeout,
//! supervision, idle stop and reload, and failed commits.

use std::sync::Arc;
use std::time::Duration;

use actors::{ActorMetrics, Clock, Deps, Engine, TenantDirectory, TreePolicy};
use engine::conversation::ConversationState;
use engine::events::EventBody;
use engine::knowledge::{ChunkEmbedding, KnowledgeIndex, chunk};
use engine::message::{Author, Direction, InboxKind, IngestItem, IngestOutcome};
use engine::ports::Store;
use engine::tenant::TenantStatus;
use engine::testsuite::{
    CollectingEvents, HASHING_MODEL, HashingEmbedder, MemoryStore, RecordingFactory,
    RecordingProvider, hashing_embedding, inbound, tenant,
};
use engine::{ContactId, Reason, TenantId, Timestamp};

const KNOWLEDGE: &str = "Nosso horário de funcionamento é de segunda a sábado, das 9h às 18h. Aos domingos a loja fica fechada.\n\n\
Fazemos entregas em toda a cidade de São Paulo. O frete é grátis para compras acima de R$ 200.\n\n\
Trocas podem ser feitas em até 30 dias com a nota fiscal.";
const T0: i64 = 1_750_000_000_000;
const ALICE: &str = "5511999999999";
const BOB: &str = "5511988888888";

struct Harness {
    store: MemoryStore,
    provider: RecordingProvider,
    events: CollectingEvents,
    directory: TenantDirectory,
    engine: Engine,
    metrics: Arc<ActorMetrics>,
    next_id: u32,
}

impl Harness {
    async fn new() -> Self {
        Self::with_store(MemoryStore::new()).await
    }

    async fn with_store(store: MemoryStore) -> Self {
        Self::build(store, None).await
    }

    /// With an embedder, the tenants' chunks carry its vectors and retrieval is hybrid.
    async fn build(store: MemoryStore, embedder: Option<HashingEmbedder>) -> Self {
        let provider = RecordingProvider::new();
        let events = CollectingEvents::default();
        let directory = TenantDirectory::new(Arc::new(RecordingFactory(provider.clone())));
        let metrics = Arc::new(ActorMetrics::unregistered());
        for id in ["loja", "outra"] {
            let t = tenant(id);
            if store.get_tenant(&t.id).await.unwrap().is_none() {
                store.create_tenant(&t).await.unwrap();
            }
            let mut chunks = chunk(KNOWLEDGE).unwrap();
            if embedder.is_some() {
                for c in &mut chunks {
                    c.embedding = Some(ChunkEmbedding {
                        model: HASHING_MODEL.into(),
                        vector: hashing_embedding(&c.text),
                    });
                }
            }
            let index = Arc::new(KnowledgeIndex::build(chunks));
            directory.upsert(t, Some(index));
        }
        let deps = Deps {
            store: Arc::new(store.clone()),
            events: Arc::new(events.clone()),
            directory: directory.clone(),
            clock: Clock::tokio_at(Timestamp(T0)),
            policy: TreePolicy {
                idle_after: Duration::from_secs(60),
                deadline_scan: Duration::from_secs(1),
                send_retry_base: Duration::from_millis(10),
                ..TreePolicy::default()
            },
            metrics: metrics.clone(),
            llm: None,
            embedder: embedder.map(|e| Arc::new(e) as Arc<dyn engine::ports::Embedder>),
            prompts: Default::default(),
        };
        let engine = actors::start(deps).await.unwrap();
        Self {
            store,
            provider,
            events,
            directory,
            engine,
            metrics,
            next_id: 0,
        }
    }

    /// Records an inbound customer message as the gateway does, then dispatches it.
    async fn customer(&mut self, tenant: &str, contact: &str, text: &str) {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        let message = inbound(tenant, contact, &id, text, T0);
        self.ingest(tenant, &id, message, InboxKind::CustomerMessage)
            .await;
    }

    /// The business typed on its own phone.
    async fn phone(&mut self, tenant: &str, contact: &str, text: &str) {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        let mut message = inbound(tenant, contact, &id, text, T0);
        message.direction = Direction::Out;
        message.author = Author::Human;
        self.ingest(tenant, &id, message, InboxKind::PhoneReply)
            .await;
    }

    async fn ingest(
        &mut self,
        tenant: &str,
        id: &str,
        message: engine::message::StoredMessage,
        kind: InboxKind,
    ) {
        let item = IngestItem {
            dedupe_key: id.to_owned(),
            message,
            inbox: Some(kind),
        };
        let outcomes = self
            .store
            .ingest(&TenantId::parse(tenant).unwrap(), vec![item], Timestamp(T0))
            .await
            .unwrap();
        let entries: Vec<_> = outcomes
            .into_iter()
            .filter_map(|o| match o {
                IngestOutcome::Recorded(e) => e,
                IngestOutcome::Duplicate => None,
            })
            .collect();
        self.engine.handle.deliver(entries);
    }

    fn sent_to(&self, contact: &str) -> Vec<String> {
        self.provider.sent_to(contact)
    }

    async fn state(&self, tenant: &str, contact: &str) -> ConversationState {
        self.engine
            .handle
            .snapshot(
                &TenantId::parse(tenant).unwrap(),
                &ContactId::parse(contact).unwrap(),
            )
            .await
            .unwrap()
            .conversation
            .state
    }

    fn reasons(&self, contact: &str) -> Vec<Reason> {
        self.events
            .events()
            .into_iter()
            .filter(|(_, c, _)| c.as_str() == contact)
            .filter_map(|(_, _, b)| match b {
                EventBody::State { reason, .. } => Some(reason),
                _ => None,
            })
            .collect()
    }
}

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn c(s: &str) -> ContactId {
    ContactId::parse(s).unwrap()
}

/// Lets paused time run forward (timers fire, tasks run) for `secs` seconds.
async fn run_for(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn a_burst_inside_the_debounce_window_gets_exactly_one_answer() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "oi").await;
    run_for(0.5).await;
    h.customer("loja", ALICE, "queria saber").await;
    run_for(0.5).await;
    h.customer("loja", ALICE, "qual o horário de funcionamento da loja?")
        .await;
    run_for(1.0).await;
    assert!(
        h.sent_to(ALICE).is_empty(),
        "answered before the debounce ended"
    );
    run_for(60.0).await;
    let sent = h.sent_to(ALICE);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("segunda a sábado"), "{sent:?}");
    assert!(
        h.store.pending_inbox().await.unwrap().is_empty(),
        "every entry is done"
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_after_the_flush_becomes_the_next_turn() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(1.6).await;
    h.customer("loja", ALICE, "vocês fazem entrega em São Paulo?")
        .await;
    run_for(10.0).await;
    let sent = h.sent_to(ALICE);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[1].contains("entregas"), "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn the_same_phone_on_two_tenants_is_two_conversations() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    h.customer("outra", ALICE, "vocês fazem entregas?").await;
    run_for(10.0).await;
    assert_eq!(h.sent_to(ALICE).len(), 2);
    assert_eq!(h.store.pending_inbox().await.unwrap().len(), 0);
    let a = h
        .store
        .history(&tid("loja"), &c(ALICE), 10, None, Timestamp(T0 + 60_000))
        .await
        .unwrap();
    assert!(
        a.iter().all(|m| !m.text.contains("vocês fazem entregas")),
        "a message landed on the wrong tenant"
    );
}

#[tokio::test(start_paused = true)]
async fn low_confidence_hands_off_and_the_handoff_outlasts_the_next_message() {
    let mut h = Harness::new().await;
    h.customer(
        "loja",
        ALICE,
        "vocês consertam motor de geladeira industrial?",
    )
    .await;
    run_for(5.0).await;
    let sent = h.sent_to(ALICE);
    assert_eq!(
        sent,
        [engine::tenant::TenantSettings::default().fallback_message]
    );
    assert_eq!(
        h.state("loja", ALICE).await,
        ConversationState::AguardandoHumano
    );
    assert_eq!(h.reasons(ALICE), [Reason::LowConfidence]);

    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(30.0).await;
    assert_eq!(
        h.sent_to(ALICE).len(),
        1,
        "the assistant answered while a human was expected"
    );
    assert_eq!(
        h.state("loja", ALICE).await,
        ConversationState::AguardandoHumano
    );
    assert!(
        h.store.pending_inbox().await.unwrap().is_empty(),
        "silent turns are consumed too"
    );
}

#[tokio::test(start_paused = true)]
async fn a_handoff_keyword_hands_off() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "quero falar com um atendente")
        .await;
    run_for(5.0).await;
    assert_eq!(h.reasons(ALICE), [Reason::HandoffKeyword]);
    assert_eq!(h.sent_to(ALICE).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn small_talk_is_answered_and_never_hands_off() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "Oi, boa tarde!").await;
    run_for(5.0).await;
    assert_eq!(
        h.sent_to(ALICE),
        [engine::tenant::TenantSettings::default().greeting]
    );
    assert_eq!(h.state("loja", ALICE).await, ConversationState::IaAtiva);
}

#[tokio::test(start_paused = true)]
async fn human_reply_then_timeout_returns_with_the_return_message() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "quero falar com um humano").await;
    run_for(5.0).await;
    let msg = h
        .engine
        .handle
        .human_reply(&tid("loja"), &c(ALICE), "Oi, aqui é a Ana!".into())
        .await
        .unwrap();
    assert_eq!(msg.author, Author::Human);
    run_for(1.0).await;
    assert_eq!(
        h.state("loja", ALICE).await,
        ConversationState::HumanoRespondeu
    );
    assert_eq!(h.sent_to(ALICE).last().unwrap(), "Oi, aqui é a Ana!");

    // The customer writes again: still no assistant answer.
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(23.0 * 3600.0).await;
    assert_eq!(h.sent_to(ALICE).len(), 2);
    run_for(3600.0 + 10.0).await;
    let sent = h.sent_to(ALICE);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(
        sent[2],
        engine::tenant::TenantSettings::default().return_message
    );
    assert_eq!(h.state("loja", ALICE).await, ConversationState::IaAtiva);
    assert_eq!(
        h.reasons(ALICE),
        [
            Reason::HandoffKeyword,
            Reason::HumanReply,
            Reason::HumanTimeout
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_without_any_human_sends_the_no_human_message() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "atendente por favor").await;
    run_for(24.0 * 3600.0 + 10.0).await;
    let sent = h.sent_to(ALICE);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        sent[1],
        engine::tenant::TenantSettings::default().no_human_message
    );
    assert_eq!(h.state("loja", ALICE).await, ConversationState::IaAtiva);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_fires_even_after_the_actor_stopped_idle() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "atendente").await;
    run_for(600.0).await;
    assert_eq!(
        h.engine
            .handle
            .live_conversations(&tid("loja"))
            .await
            .unwrap(),
        0,
        "idle actor still alive"
    );
    run_for(24.0 * 3600.0).await;
    assert_eq!(h.sent_to(ALICE).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn typing_on_the_business_phone_means_a_human_took_over() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    h.phone("loja", ALICE, "Oi! Abrimos às 9h.").await;
    run_for(10.0).await;
    assert!(
        h.sent_to(ALICE).is_empty(),
        "the assistant answered a turn a human had taken"
    );
    assert_eq!(
        h.state("loja", ALICE).await,
        ConversationState::HumanoRespondeu
    );
    assert_eq!(h.reasons(ALICE), [Reason::PhoneReply]);
}

#[tokio::test(start_paused = true)]
async fn takeover_and_release() {
    let mut h = Harness::new().await;
    let conv = h
        .engine
        .handle
        .takeover(&tid("loja"), &c(ALICE))
        .await
        .unwrap();
    assert_eq!(conv.state, ConversationState::AguardandoHumano);
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(5.0).await;
    assert!(h.sent_to(ALICE).is_empty());
    let conv = h
        .engine
        .handle
        .release(&tid("loja"), &c(ALICE))
        .await
        .unwrap();
    assert_eq!(conv.state, ConversationState::IaAtiva);
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(5.0).await;
    assert_eq!(h.sent_to(ALICE).len(), 1);
    assert_eq!(
        h.reasons(ALICE),
        [Reason::OperatorTakeover, Reason::OperatorRelease]
    );
}

#[tokio::test(start_paused = true)]
async fn a_suspended_tenant_records_but_never_answers() {
    let mut h = Harness::new().await;
    let mut suspended = tenant("loja");
    suspended.status = TenantStatus::Suspended;
    h.directory.upsert(suspended, None);
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(10.0).await;
    assert!(h.sent_to(ALICE).is_empty());
    assert_eq!(
        h.store
            .history(&tid("loja"), &c(ALICE), 10, None, Timestamp(T0))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_crashed_conversation_is_restarted_from_the_store_and_its_neighbours_are_untouched() {
    let mut h = Harness::new().await;
    h.engine
        .handle
        .takeover(&tid("loja"), &c(BOB))
        .await
        .unwrap();
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    h.customer("loja", BOB, "oi").await;
    h.engine.handle.crash(&tid("loja"), &c(ALICE));
    run_for(10.0).await;
    assert_eq!(h.metrics.actor_restarts.get(), 1);
    // Alice's turn was still pending in the inbox: the restarted actor answers it, once.
    assert_eq!(h.sent_to(ALICE).len(), 1, "{:?}", h.sent_to(ALICE));
    // Bob's conversation kept its actor and its state.
    assert_eq!(
        h.state("loja", BOB).await,
        ConversationState::AguardandoHumano
    );
    assert!(h.sent_to(BOB).is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_idle_conversation_stops_and_reloads_its_state() {
    let mut h = Harness::new().await;
    h.engine
        .handle
        .takeover(&tid("loja"), &c(ALICE))
        .await
        .unwrap();
    assert_eq!(
        h.engine
            .handle
            .live_conversations(&tid("loja"))
            .await
            .unwrap(),
        1
    );
    run_for(61.0).await;
    run_for(61.0).await;
    assert_eq!(
        h.engine
            .handle
            .live_conversations(&tid("loja"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(h.metrics.live_conversations.get(), 0);
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(5.0).await;
    assert_eq!(
        h.state("loja", ALICE).await,
        ConversationState::AguardandoHumano,
        "state lost across idle stop"
    );
    assert!(h.sent_to(ALICE).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_commit_loses_nothing_and_is_retried() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    h.store.set_fail_writes(true);
    run_for(5.0).await;
    assert!(h.sent_to(ALICE).is_empty());
    h.store.set_fail_writes(false);
    run_for(5.0).await;
    assert_eq!(h.sent_to(ALICE).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_replayed_inbox_entry_is_answered_once() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    let pending = h.store.pending_inbox().await.unwrap();
    h.engine.handle.deliver(pending);
    run_for(10.0).await;
    assert_eq!(h.sent_to(ALICE).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_restart_answers_pending_turns_once() {
    let store = MemoryStore::new();
    let mut h = Harness::with_store(store.clone()).await;
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(0.5).await;
    h.engine.shutdown(Duration::from_secs(1)).await;
    assert_eq!(store.pending_inbox().await.unwrap().len(), 1);

    let h2 = Harness::with_store(store.clone()).await;
    run_for(10.0).await;
    assert_eq!(h2.sent_to(ALICE).len(), 1);
    assert!(store.pending_inbox().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn retryable_send_failures_are_retried_in_order() {
    let mut h = Harness::new().await;
    h.provider.fail_next(2);
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(5.0).await;
    assert_eq!(h.sent_to(ALICE).len(), 1);
    assert!(h.store.pending_outbox().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn metrics_count_handoffs_and_returns_not_human_replies() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "atendente").await;
    run_for(5.0).await;
    h.engine
        .handle
        .human_reply(&tid("loja"), &c(ALICE), "Oi!".into())
        .await
        .unwrap();
    h.engine
        .handle
        .release(&tid("loja"), &c(ALICE))
        .await
        .unwrap();
    let m = &h.metrics;
    assert_eq!(m.handoffs.with_label_values(&["handoff_keyword"]).get(), 1);
    assert_eq!(m.handoffs.with_label_values(&["human_reply"]).get(), 0);
    assert_eq!(m.returns.with_label_values(&["operator_release"]).get(), 1);
}

#[tokio::test(start_paused = true)]
async fn typing_goes_out_before_the_answer() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(5.0).await;
    assert_eq!(h.provider.typing(), [(c(ALICE), true)]);
    let kinds = h.events.kinds_for(ALICE);
    let typing = kinds.iter().position(|k| *k == "typing").unwrap();
    let delivery = kinds.iter().position(|k| *k == "delivery").unwrap();
    assert!(typing < delivery, "{kinds:?}");
}

#[tokio::test(start_paused = true)]
async fn an_answer_with_paragraphs_is_sent_as_several_messages_in_order() {
    let mut h = Harness::new().await;
    let mut t = tenant("loja");
    t.settings.greeting = "Olá!\n\nSou a assistente da Loja.\n\nComo posso ajudar?".into();
    h.directory.upsert(t, None);
    h.customer("loja", ALICE, "oi").await;
    run_for(10.0).await;
    assert_eq!(
        h.sent_to(ALICE),
        ["Olá!", "Sou a assistente da Loja.", "Como posso ajudar?"]
    );
    let history = h
        .store
        .history(&tid("loja"), &c(ALICE), 10, None, Timestamp(T0 + 60_000))
        .await
        .unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|m| m.direction == Direction::Out)
            .count(),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn a_tenant_burst_is_paced_to_its_outbound_rate() {
    let mut h = Harness::new().await;
    let mut t = tenant("loja");
    t.settings.outbound_rate_per_sec = 2.0;
    t.settings.typing_ms_per_char = 0;
    h.directory.upsert(t.clone(), None);
    let contacts: Vec<String> = (0..6).map(|i| format!("55119000000{i:02}")).collect();
    for contact in &contacts {
        h.customer("loja", contact, "qual o horário de funcionamento?")
            .await;
    }
    run_for(1.55).await;
    run_for(1.0).await;
    let early = h.provider.sent().len();
    assert!(
        (2..=3).contains(&early),
        "{early} sent in the first second at 2 per second"
    );
    run_for(5.0).await;
    assert_eq!(h.provider.sent().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn hybrid_retrieval_decides_turns_and_a_failed_embedding_falls_back_to_lexical() {
    let embedder = HashingEmbedder::new();
    let mut h = Harness::build(MemoryStore::new(), Some(embedder.clone())).await;
    h.customer("loja", ALICE, "vocês entregam em são paulo?")
        .await;
    run_for(5.0).await;
    let sent = h.sent_to(ALICE);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("entregas"), "{sent:?}");
    assert_eq!(embedder.calls(), 1, "the turn was embedded");

    // Small talk needs no knowledge: nothing is embedded for it.
    h.customer("loja", BOB, "oi").await;
    run_for(5.0).await;
    assert_eq!(embedder.calls(), 1);

    embedder.fail(true);
    h.customer("loja", BOB, "qual o horário de funcionamento?")
        .await;
    run_for(5.0).await;
    let sent = h.sent_to(BOB);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[1].contains("9h"), "{sent:?}");
    let retrieval = &h.metrics.retrieval_seconds;
    assert_eq!(
        retrieval.with_label_values(&["hybrid"]).get_sample_count(),
        1
    );
    assert_eq!(
        retrieval.with_label_values(&["lexical"]).get_sample_count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_during_the_embedding_joins_the_next_turn_and_a_takeover_silences_it() {
    let embedder = HashingEmbedder::with_delay(Duration::from_secs(2));
    let mut h = Harness::build(MemoryStore::new(), Some(embedder.clone())).await;
    h.customer("loja", ALICE, "vocês entregam em são paulo?")
        .await;
    // Past the debounce: the turn is being embedded.
    run_for(2.5).await;
    assert_eq!(embedder.calls(), 1);
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(10.0).await;
    let sent = h.sent_to(ALICE);
    assert_eq!(sent.len(), 2, "one answer per turn: {sent:?}");
    assert!(
        sent[0].contains("entregas") && sent[1].contains("9h"),
        "{sent:?}"
    );

    h.customer("loja", BOB, "vocês fazem trocas?").await;
    run_for(2.5).await;
    h.engine
        .handle
        .takeover(&tid("loja"), &c(BOB))
        .await
        .unwrap();
    run_for(10.0).await;
    assert!(
        h.sent_to(BOB).is_empty(),
        "no answer once a human took over"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_embedding_endpoint_never_holds_the_answer_past_the_wait() {
    let embedder = HashingEmbedder::with_delay(Duration::from_secs(60));
    let mut h = Harness::build(MemoryStore::new(), Some(embedder.clone())).await;
    h.customer("loja", ALICE, "vocês entregam em são paulo?")
        .await;
    // Debounce (1.5 s), the embedding wait (3 s) and the typing pause (at most 2 s): the answer,
    // decided lexically, long before the endpoint would have answered.
    run_for(8.0).await;
    assert_eq!(embedder.calls(), 1);
    let sent = h.sent_to(ALICE);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("entregas"), "{sent:?}");
    let retrieval = &h.metrics.retrieval_seconds;
    assert_eq!(
        retrieval.with_label_values(&["lexical"]).get_sample_count(),
        1
    );
    assert_eq!(
        retrieval.with_label_values(&["hybrid"]).get_sample_count(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_edited_or_deleted_before_its_turn_is_answered_as_it_now_reads() {
    let mut h = Harness::new().await;
    h.customer("loja", ALICE, "qual o horário de funcionamento?")
        .await;
    run_for(0.5).await;
    // The customer corrects the question inside the debounce window: the turn answers the edit.
    h.engine.handle.amend(
        &tid("loja"),
        &c(ALICE),
        engine::MessageId("m1".into()),
        "vocês fazem entregas em são paulo?".into(),
    );
    run_for(5.0).await;
    let sent = h.sent_to(ALICE);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("entregas"), "{sent:?}");

    // A message deleted before its turn is never answered, and its inbox entry is settled.
    h.customer("loja", BOB, "qual o horário de funcionamento?")
        .await;
    run_for(0.5).await;
    h.engine.handle.amend(
        &tid("loja"),
        &c(BOB),
        engine::MessageId("m2".into()),
        String::new(),
    );
    run_for(5.0).await;
    assert!(h.sent_to(BOB).is_empty(), "{:?}", h.sent_to(BOB));
    assert_eq!(
        h.metrics.turns.with_label_values(&["silent_deleted"]).get(),
        1
    );
    assert!(h.store.pending_inbox().await.unwrap().is_empty());
}
