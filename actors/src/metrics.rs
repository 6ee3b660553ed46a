//! The actor tree's metrics, registered in the one registry the gateway serves.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Debug, Clone)]
pub struct ActorMetrics {
    /// Turns by outcome (`answered`, `small_talk`, `handoff_keyword`, `handoff_low_confidence`,
    /// `silent_human`, `silent_suspended`, `no_tenant`).
    pub turns: IntCounterVec,
    /// Messages per turn (the debounce buffer's size at flush).
    pub turn_messages: Histogram,
    /// Engine time of a turn: from the flush decision to the committed turn (LLM excluded).
    pub turn_engine_seconds: Histogram,
    /// Buffering time: from the first message of a turn to its flush.
    pub turn_buffer_seconds: Histogram,
    /// From the turn's commit to the provider's acceptance of the answer.
    pub send_seconds: HistogramVec,
    /// Moves to a human, by reason.
    pub handoffs: IntCounterVec,
    /// Moves back to the assistant, by reason.
    pub returns: IntCounterVec,
    pub live_conversations: IntGauge,
    pub actor_restarts: IntCounter,
    /// Commands routed to conversation actors and not yet handled (a saturation signal).
    pub mailbox_depth: IntGauge,
    /// Outbound sends by provider and outcome (`sent`, `retry`, `failed`).
    pub sends: IntCounterVec,
    /// Store failures seen by the actors, by operation.
    pub store_errors: IntCounterVec,
    /// Human-timeout deadlines fired.
    pub deadlines_fired: IntCounter,
    /// Knowledge retrieval of a turn, by mode (`lexical`, `hybrid`); the question's embedding
    /// call is not included (see `conversa_embeddings_request_seconds`).
    pub retrieval_seconds: HistogramVec,
}

impl ActorMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let m = Self {
            turns: IntCounterVec::new(
                Opts::new("conversa_turns_total", "Turns by outcome"),
                &["outcome"],
            )?,
            turn_messages: Histogram::with_opts(
                HistogramOpts::new(
                    "conversa_turn_messages",
                    "Messages per turn (debounce buffer size at flush)",
                )
                .buckets(vec![1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 50.0]),
            )?,
            turn_engine_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "conversa_turn_engine_seconds",
                    "Engine time per turn: decision, retrieval and commit (LLM and send excluded)",
                )
                .buckets(latency.clone()),
            )?,
            turn_buffer_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "conversa_turn_buffer_seconds",
                    "Time from a turn's first message to its flush",
                )
                .buckets(vec![0.1, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 15.0, 30.0]),
            )?,
            send_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "conversa_send_seconds",
                    "Time from commit to the provider accepting the answer",
                )
                .buckets(latency),
                &["provider"],
            )?,
            handoffs: IntCounterVec::new(
                Opts::new("conversa_handoffs_total", "Handoffs to a human by reason"),
                &["reason"],
            )?,
            returns: IntCounterVec::new(
                Opts::new(
                    "conversa_returns_total",
                    "Conversations given back to the assistant by reason",
                ),
                &["reason"],
            )?,
            live_conversations: IntGauge::new(
                "conversa_live_conversations",
                "Conversation actors alive",
            )?,
            actor_restarts: IntCounter::new(
                "conversa_actor_restarts_total",
                "Conversation actors restarted after a failure",
            )?,
            mailbox_depth: IntGauge::new(
                "conversa_mailbox_depth",
                "Commands routed to conversation actors and not yet handled",
            )?,
            sends: IntCounterVec::new(
                Opts::new(
                    "conversa_outbound_sends_total",
                    "Outbound sends by provider and outcome",
                ),
                &["provider", "outcome"],
            )?,
            store_errors: IntCounterVec::new(
                Opts::new(
                    "conversa_actor_store_errors_total",
                    "Store failures seen by the actors by operation",
                ),
                &["op"],
            )?,
            deadlines_fired: IntCounter::new(
                "conversa_human_timeouts_total",
                "Human-timeout deadlines fired",
            )?,
            retrieval_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "conversa_retrieval_seconds",
                    "Knowledge retrieval and the decision of a turn, by mode (lexical, hybrid)",
                )
                .buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
                ]),
                &["mode"],
            )?,
        };
        registry.register(Box::new(m.turns.clone()))?;
        registry.register(Box::new(m.turn_messages.clone()))?;
        registry.register(Box::new(m.turn_engine_seconds.clone()))?;
        registry.register(Box::new(m.turn_buffer_seconds.clone()))?;
        registry.register(Box::new(m.send_seconds.clone()))?;
        registry.register(Box::new(m.handoffs.clone()))?;
        registry.register(Box::new(m.returns.clone()))?;
        registry.register(Box::new(m.live_conversations.clone()))?;
        registry.register(Box::new(m.actor_restarts.clone()))?;
        registry.register(Box::new(m.mailbox_depth.clone()))?;
        registry.register(Box::new(m.sends.clone()))?;
        registry.register(Box::new(m.store_errors.clone()))?;
        registry.register(Box::new(m.deadlines_fired.clone()))?;
        registry.register(Box::new(m.retrieval_seconds.clone()))?;
        Ok(m)
    }

    /// Metrics in a private registry, for tests.
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).expect("a fresh registry should accept every metric")
    }
}
