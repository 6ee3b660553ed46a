//! One actor per conversation `(tenant, contact)`: it owns the conversation's state and its
//! debounce buffer, decides each turn through `engine`, and commits every change to the store
//! before anything is sent.
//!
//! Guarantees (each has a test in `actors/tests`):
//! - Commands of one conversation are handled one at a time, in the order the tenant supervisor
//!   routed them.
//! - A turn is answered at most once: its inbox entries are marked done in the same transaction
//!   that records the answer and queues it in the outbox.
//! - Nothing is answered while a human is in charge or the tenant is suspended (`engine::turn`).
//! - A failed commit puts the turn back in the buffer; nothing is lost, the flush is retried.
//! - A message that arrives while a turn is being decided joins the next turn.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::buffer::{BufferLimits, Fragment, MessageBuffer, turn_text};
use engine::conversation::{Conversation, Outcome, Reason, Transition};
use engine::events::EventBody;
use engine::knowledge::DenseQuery;
use engine::memory::{MemoryEntry, MemoryWindow};
use engine::message::{
    Author, DeliveryStatus, Direction, InboxEntry, InboxKind, MessageKind, StoredMessage,
};
use engine::ports::{ConversationCommit, LlmAnswer, LlmError};
use engine::turn::{TurnDecision, decide_with, needs_retrieval};
use engine::{ContactId, EngineError, MessageId, TenantId, Timestamp};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, error, info, warn};

use crate::Deps;
use crate::outbox;
use crate::tenant::TenantMsg;

/// How many consumed inbox sequence numbers a conversation remembers to ignore replays.
const REMEMBERED_SEQS: usize = 512;
/// How long to wait before retrying a flush whose commit failed.
const COMMIT_RETRY: Duration = Duration::from_secs(1);

/// A command for one conversation, routed through the root and the tenant supervisor.
#[derive(Debug)]
pub enum Command {
    /// An accepted inbound event from the durable inbox.
    Inbox(InboxEntry),
    /// A human operator's reply (tenant API or dashboard).
    HumanReply {
        text: String,
        reply: RpcReplyPort<Result<StoredMessage, EngineError>>,
    },
    /// The customer edited (or, with empty text, deleted) a message that may still wait in the
    /// buffer: the turn answers what the customer now says.
    Amend { message: MessageId, text: String },
    /// The operator takes the conversation over.
    Takeover {
        reply: RpcReplyPort<Result<Conversation, EngineError>>,
    },
    /// The operator gives the conversation back to the assistant.
    Release {
        reply: RpcReplyPort<Result<Conversation, EngineError>>,
    },
    /// A human-timeout deadline passed (from the deadline scanner).
    HumanTimeout,
    /// The provider says a human must take over (WhatsApp's 24-hour window closed).
    FlagForHuman(Reason),
    /// A serialisable view of the actor's state.
    Snapshot(RpcReplyPort<ConversationSnapshot>),
    /// Panics inside the handler: lets tests prove that supervision restarts the actor.
    #[cfg(feature = "testsuite")]
    Crash,
}

#[derive(Debug)]
pub enum ConversationMsg {
    /// A routed command; counted so the supervisor knows when the mailbox is empty.
    Routed(Command),
    /// The debounce timer of buffer generation `generation` fired.
    FlushIfDue { generation: u64 },
    /// The idle timer fired.
    IdleTick,
    /// The embedding of turn `id` is ready (`None`: retrieval is lexical).
    Embedded { id: u64, query: Option<DenseQuery> },
    /// The LLM call of turn `id` finished.
    LlmDone {
        id: u64,
        result: Result<LlmAnswer, LlmError>,
    },
}

/// The embedding of a customer's question for hybrid retrieval, or `None` (lexical) when the
/// endpoint fails or takes longer than `wait`: a slow endpoint (its own retries can take a
/// minute) never holds an answer for more than `wait`.
pub async fn embed_question(
    embedder: &dyn engine::ports::Embedder,
    tenant: &TenantId,
    text: String,
    wait: Duration,
) -> Option<DenseQuery> {
    match tokio::time::timeout(wait, embedder.embed(tenant, &[text])).await {
        Ok(Ok(mut vectors)) => DenseQuery::new(
            embedder.model(),
            &vectors.pop().unwrap_or_default(),
            embedder.calibration(),
        ),
        Ok(Err(e)) => {
            warn!(error = %e, "question not embedded; retrieval is lexical");
            None
        }
        Err(_) => {
            warn!(?wait, "question not embedded in time; retrieval is lexical");
            None
        }
    }
}

/// What the buffer keeps of each message of a turn.
#[derive(Debug, Clone)]
pub struct Tag {
    /// The inbox entry, marked done when the turn commits.
    seq: u64,
    /// The stored message (excluded from the memory of its own turn).
    message: MessageId,
    /// When it was recorded.
    at: Timestamp,
}

/// A turn waiting on a call off the actor: its embedding, then possibly its LLM answer.
#[derive(Debug)]
struct InFlight {
    id: u64,
    fragments: Vec<Fragment<Tag>>,
    /// Engine time spent on the turn before the call.
    engine_before_llm: Duration,
}

/// How a turn ends.
#[derive(Debug)]
enum Resolution {
    /// Send this answer; the label is the turn outcome for metrics.
    Reply(String, &'static str),
    /// Send this message and hand off for this reason.
    Handoff(Reason, String),
    /// Say nothing.
    Silent(&'static str),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationSnapshot {
    pub conversation: Conversation,
    pub buffered: usize,
    pub commands_handled: u64,
    /// An LLM answer is being written.
    pub answering: bool,
}

#[derive(Debug)]
pub struct ConversationArgs {
    pub tenant: TenantId,
    pub contact: ContactId,
    /// Shared with the supervisor: routed commands handled so far.
    pub handled: Arc<AtomicU64>,
}

#[derive(Debug)]
pub struct ConversationState {
    tenant: TenantId,
    contact: ContactId,
    conv: Conversation,
    buffer: MessageBuffer<Tag>,
    in_flight: Option<InFlight>,
    turn_counter: u64,
    /// Inbox entries in the buffer or consumed recently: a replayed entry is ignored.
    seen: HashSet<u64>,
    seen_order: VecDeque<u64>,
    /// Routed commands handled so far (compared with the supervisor's count before stopping idle).
    handled: Arc<AtomicU64>,
    last_activity: tokio::time::Instant,
    idle_timer_armed: bool,
    sender: mpsc::UnboundedSender<Box<engine::message::OutboxItem>>,
    span: tracing::Span,
}

#[derive(Debug)]
pub struct ConversationActor {
    pub(crate) deps: Deps,
    pub(crate) supervisor: ActorRef<TenantMsg>,
}

impl Actor for ConversationActor {
    type Msg = ConversationMsg;
    type State = ConversationState;
    type Arguments = ConversationArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConversationArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Restarted actors come back from storage, so a crash loses at most the open buffer, whose
        // entries are still pending in the inbox and are routed again by the supervisor.
        let span = tracing::info_span!("conversation", tenant = %args.tenant, conversation = %args.contact);
        let conv = self
            .deps
            .store
            .load_conversation(&args.tenant, &args.contact)
            .instrument(span.clone())
            .await?
            .unwrap_or_else(|| {
                Conversation::new(
                    args.tenant.clone(),
                    args.contact.clone(),
                    self.deps.clock.now(),
                )
            });
        let sender = outbox::spawn_sender(
            self.deps.clone(),
            span.clone(),
            outbox::Owner::Supervisor(self.supervisor.clone()),
        );
        self.deps.metrics.live_conversations.inc();
        Ok(ConversationState {
            tenant: args.tenant,
            contact: args.contact,
            conv,
            buffer: MessageBuffer::new(),
            in_flight: None,
            turn_counter: 0,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            handled: args.handled,
            last_activity: tokio::time::Instant::now(),
            idle_timer_armed: false,
            sender,
            span,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.deps.metrics.live_conversations.dec();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        // Boxed: the actor's task then keeps only a pointer between messages, not room for the
        // largest handler's state (this is most of a live conversation's memory).
        Box::pin(
            async {
                match msg {
                    ConversationMsg::Routed(command) => {
                        state.handled.fetch_add(1, Ordering::SeqCst);
                        self.deps.metrics.mailbox_depth.dec();
                        state.last_activity = tokio::time::Instant::now();
                        self.on_command(&myself, state, command).await;
                        self.arm_idle(&myself, state);
                    }
                    ConversationMsg::FlushIfDue { generation } => {
                        if generation == state.buffer.generation() {
                            self.flush_if_due(&myself, state).await;
                        }
                    }
                    ConversationMsg::IdleTick => self.on_idle_tick(&myself, state),
                    ConversationMsg::Embedded { id, query } => {
                        state.last_activity = tokio::time::Instant::now();
                        self.on_embedded(&myself, state, id, query).await;
                    }
                    ConversationMsg::LlmDone { id, result } => {
                        state.last_activity = tokio::time::Instant::now();
                        self.on_llm_done(&myself, state, id, result).await;
                    }
                }
            }
            .instrument(span),
        )
        .await;
        Ok(())
    }
}

impl ConversationActor {
    async fn on_command(
        &self,
        myself: &ActorRef<ConversationMsg>,
        state: &mut ConversationState,
        command: Command,
    ) {
        match command {
            Command::Inbox(entry) => self.on_inbox(myself, state, entry).await,
            Command::HumanReply { text, reply } => {
                let _ = reply.send(self.on_human_reply(state, text).await);
            }
            Command::Takeover { reply } => {
                let _ = reply.send(
                    self.change_state(state, Reason::OperatorTakeover, Vec::new())
                        .await,
                );
            }
            Command::Release { reply } => {
                let _ = reply.send(
                    self.change_state(state, Reason::OperatorRelease, Vec::new())
                        .await,
                );
            }
            Command::HumanTimeout => self.on_human_timeout(state).await,
            Command::FlagForHuman(reason) => {
                if let Err(e) = self.change_state(state, reason, Vec::new()).await {
                    warn!(error = %e, %reason, "conversation not flagged for a human");
                }
            }
            Command::Amend { message, text } => {
                if state.buffer.amend(|tag| tag.message == message, &text) {
                    info!(message = %message.as_str(), deleted = text.is_empty(), "buffered message amended before its turn");
                }
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(ConversationSnapshot {
                    conversation: state.conv.clone(),
                    buffered: state.buffer.len(),
                    commands_handled: state.handled.load(Ordering::SeqCst),
                    answering: state.in_flight.is_some(),
                });
            }
            #[cfg(feature = "testsuite")]
            Command::Crash => panic!("crash requested by a test"),
        }
    }

    async fn on_inbox(
        &self,
        myself: &ActorRef<ConversationMsg>,
        state: &mut ConversationState,
        entry: InboxEntry,
    ) {
        if !state.seen.insert(entry.seq) {
            debug!(seq = entry.seq, "inbox entry replayed; ignored");
            return;
        }
        remember(state, entry.seq);
        state.conv.last_message_at = Some(
            state
                .conv
                .last_message_at
                .map_or(entry.message.at, |t| t.max(entry.message.at)),
        );
        match entry.kind {
            InboxKind::PhoneReply => {
                // The business wrote from its own phone: a human is in charge from now on. The
                // message itself is in the history since ingest.
                if let Err(e) = self
                    .change_state(state, Reason::PhoneReply, vec![entry.seq])
                    .await
                {
                    warn!(error = %e, "phone reply not recorded; it stays in the inbox");
                    state.seen.remove(&entry.seq);
                }
            }
            InboxKind::CustomerMessage => {
                let now = self.deps.clock.now();
                let tag = Tag {
                    seq: entry.seq,
                    message: entry.message.id,
                    at: entry.message.at,
                };
                state.buffer.push(Fragment {
                    text: entry.message.text,
                    at: now,
                    tag,
                });
                self.arm_flush(myself, state, now);
            }
        }
    }

    fn limits(&self, tenant: &TenantId) -> BufferLimits {
        self.deps
            .directory
            .get(tenant)
            .map(|rt| BufferLimits::from(&rt.tenant.settings))
            .unwrap_or_else(|| BufferLimits::from(&engine::tenant::TenantSettings::default()))
    }

    /// Arms the debounce timer for the buffer's current generation (or flushes now when due).
    fn arm_flush(
        &self,
        myself: &ActorRef<ConversationMsg>,
        state: &ConversationState,
        now: Timestamp,
    ) {
        let limits = self.limits(&state.tenant);
        let Some(deadline) = state.buffer.deadline(&limits) else {
            return;
        };
        let generation = state.buffer.generation();
        let delay = Duration::from_millis(deadline.millis_since(now));
        myself.send_after(delay, move || ConversationMsg::FlushIfDue { generation });
    }

    async fn flush_if_due(
        &self,
        myself: &ActorRef<ConversationMsg>,
        state: &mut ConversationState,
    ) {
        if state.in_flight.is_some() {
            // One turn at a time: this one is flushed when the answer in flight is settled.
            return;
        }
        let now = self.deps.clock.now();
        let limits = self.limits(&state.tenant);
        if !state.buffer.is_due(now, &limits) {
            self.arm_flush(myself, state, now);
            return;
        }
        let fragments = state.buffer.take();
        let started = std::time::Instant::now();
        let text = turn_text(&fragments);
        if text.is_empty() {
            // Every message of the turn was deleted by the customer before it was answered.
            self.finish_turn(
                myself,
                state,
                fragments,
                started,
                Resolution::Silent("silent_deleted"),
            )
            .await;
            return;
        }
        let Some(rt) = self.deps.directory.get(&state.tenant) else {
            self.finish_turn(
                myself,
                state,
                fragments,
                started,
                Resolution::Silent("no_tenant"),
            )
            .await;
            return;
        };
        let settings = &rt.tenant.settings;
        if let Some(embedder) = &self.deps.embedder
            && rt.index.embedding_model() == Some(embedder.model())
            && needs_retrieval(&text, state.conv.state, rt.tenant.status, settings)
        {
            self.embed_turn(myself, state, embedder.clone(), fragments, text, started);
            return;
        }
        self.decide_turn(myself, state, &rt, fragments, &text, started, None)
            .await;
    }

    /// Embeds the turn's text in its own task (like the LLM call, so the actor keeps buffering);
    /// the turn is decided when [`ConversationMsg::Embedded`] comes. A failed embedding leaves
    /// the decision lexical: the customer is answered either way.
    fn embed_turn(
        &self,
        myself: &ActorRef<ConversationMsg>,
        state: &mut ConversationState,
        embedder: Arc<dyn engine::ports::Embedder>,
        fragments: Vec<Fragment<Tag>>,
        text: String,
        started: std::time::Instant,
    ) {
        state.turn_counter += 1;
        let id = state.turn_counter;
        state.in_flight = Some(InFlight {
            id,
            fragments,
            engine_before_llm: started.elapsed(),
        });
        let (tenant, me) = (state.tenant.clone(), myself.clone());
        let wait = self.deps.policy.embed_wait;
        tokio::spawn(
            async move {
                let query = embed_question(embedder.as_ref(), &tenant, text, wait).await;
                let _ = me.cast(ConversationMsg::Embedded { id, query });
            }
            .instrument(state.span.clone()),
        );
    }

    async fn on_embedded(
        &self,
        myself: &ActorRef<ConversationMsg>,
        state: &mut ConversationState,
        id: u64,
        query: Option<DenseQuery>,
    ) {
        let Some(in_flight) = state.in_flight.take_if(|f| f.id == id) else {
            return;
        };
        let started = std::time::Instant::now()
            .checked_sub(in_flight.engine_before_llm)
            .unwrap_or_else(std::time::Instant::now);
        let text = turn_text(&in_flight.fragments);
        match self.deps.directory.get(&state.tenant) {
            Some(rt) => {
                self.decide_turn(
                    myself,
                    state,
                    &rt,
                    in_flight.fragments,
                    &text,
                    started,
                    query.as_ref(),
                )
                .await
            }
            None => {
                self.finish_turn(
                    myself,
                    state,
                    in_flight.fragments,
                    started,
                    Resolution::Silent("no_tenant"),
                )
                .await
            }
        }
        // Messages that arrived meanwhile form the next turn.
        if !state.buffer.is_empty() && state.in_flight.is_none() {
            self.flush_if_due(myself, state).await;
        }
    }

    /// Decides a turn (hybrid when `dense` is given) and settles it, or starts its LLM call.
    #[allow(clippy::too_many_arguments)]
    async fn decide_turn(
        &self,
        myself: &ActorRef<ConversationMsg>,
        state: &mut ConversationState,
        rt: &crate::TenantRuntime,
        fragments: Vec<Fragment<Tag>>,
        text: &str,
        started: std::time::Instant,
        dense: Option<&DenseQuery>,
    ) {
        let settings = &rt.tenant.settings;
        let deciding = std::time::Instant::now();
        let decision = decide_with(
            text,
            state.conv.state,
            rt.tenant.status,
            settings,
            &rt.index,
            dense,
        );
        if matches!(
            decision,
            TurnDecision::Answer { .. }
                | TurnDecision::Handoff {
                    reason: Reason::LowConfidence,
                    ..
                }
        ) {
            let mode = match dense {
                Some(query) if rt.index.embedding_model() == Some(query.model.as_str()) => "hybrid",
                _ => "lexical",
            };
            self.deps
                .metrics
                .retrieval_seconds
                .with_label_values(&[mode])
                .observe(deciding.elapsed().as_secs_f64());
        }
        let text = text.to_owned();
        let resolution = match decision {
            TurnDecision::Answer { hits, .. } if self.deps.llm.is_some() => {
                self.ask_llm(myself, state, rt, fragments, text, hits, started);
                return;
            }
            TurnDecision::Answer { reply, .. } => Resolution::Reply(reply, "answered"),
            TurnDecision::SmallTalk { reply, .. } => Resolution::Reply(reply, "small_talk"),
            TurnDecision::Handoff { reason, reply, .. } => Resolution::Handoff(reason, reply),
            TurnDecision::Silent { why } => Resolution::Silent(match why {
                engine::turn::Silence::HumanInCharge => "silent_human",
                engine::turn::Silence::Suspended => "silent_suspended",
            }),
        };
        self.finish_turn(myself, state, fragments, started, resolution)
            .await;
    }

    /// Starts the LLM call for a turn in its own task; the actor keeps handling commands and
    /// buffering messages meanwhile, and settles the turn when [`ConversationMsg::LlmDone`] comes.
    #[allow(clippy::too_many_arguments)]
    fn ask_llm(
        &self,
        myself: &ActorRef<ConversationMsg>,
        state: &mut ConversationState,
        rt: &crate::TenantRuntime,
        fragments: Vec<Fragment<Tag>>,
        text: String,
        hits: Vec<engine::knowledge::Hit>,
        started: std::time::Instant,
    ) {
        let Some(llm) = self.deps.llm.clone() else {
            return;
        };
        state.turn_counter += 1;
        let id = state.turn_counter;
        let turn_ids: HashSet<MessageId> =
            fragments.iter().map(|f| f.tag.message.clone()).collect();
        let last_at = fragments.iter().map(|f| f.tag.at).max().unwrap_or_default();
        let (deps, tenant, contact, me) = (
            self.deps.clone(),
            state.tenant.clone(),
            state.contact.clone(),
            myself.clone(),
        );
        let settings = rt.tenant.settings.clone();
        let name = rt.tenant.name.clone();
        // The LLM's time is measured by its own metric; the turn's engine time excludes it.
        let engine_before_llm = started.elapsed();
        state.in_flight = Some(InFlight {
            id,
            fragments,
            engine_before_llm,
        });
        tokio::spawn(
            async move {
                let now = deps.clock.now();
                let memory = load_memory(
                    &deps,
                    &tenant,
                    &contact,
                    settings.memory_messages,
                    &turn_ids,
                    last_at,
                    now,
                )
                .await;
                let request = engine::prompt::build(&name, &settings, &hits, &memory, &text);
                deps.prompts.record(&tenant, &contact, request.clone());
                let result = llm.complete(&tenant, &request).await;
                // The actor may be gone (crashed): its inbox entries are replayed after restart.
                let _ = me.cast(ConversationMsg::LlmDone { id, result });
            }
            .instrument(state.span.clone()),
        );
    }

    async fn on_llm_done(
        &self,
        myself: &ActorRef<ConversationMsg>,
        state: &mut ConversationState,
        id: u64,
        result: Result<LlmAnswer, LlmError>,
    ) {
        let Some(in_flight) = state.in_flight.take_if(|f| f.id == id) else {
            return;
        };
        let resolution = if state.conv.state.human_in_charge() {
            // A human took over while the model was thinking: its answer is never sent.
            info!("llm answer discarded: a human took over while it was in flight");
            Resolution::Silent("llm_discarded_human")
        } else {
            match result {
                Ok(answer) => Resolution::Reply(answer.text, "answered_llm"),
                Err(e) => {
                    warn!(error = %e, "llm failed; handing off");
                    let fallback = self
                        .deps
                        .directory
                        .get(&state.tenant)
                        .map(|rt| rt.tenant.settings.fallback_message.clone())
                        .unwrap_or_else(|| {
                            engine::tenant::TenantSettings::default().fallback_message
                        });
                    Resolution::Handoff(Reason::LlmFailure, fallback)
                }
            }
        };
        // Engine time resumes now, on top of what it spent before the call.
        let started = std::time::Instant::now()
            .checked_sub(in_flight.engine_before_llm)
            .unwrap_or_else(std::time::Instant::now);
        self.finish_turn(myself, state, in_flight.fragments, started, resolution)
            .await;
        // Messages that arrived meanwhile form the next turn.
        if !state.buffer.is_empty() && state.in_flight.is_none() {
            self.flush_if_due(myself, state).await;
        }
    }

    /// Commits a decided turn: the state change, the answer and its outbox entry, and the turn's
    /// inbox entries marked done, in one transaction. A failed commit puts the turn back.
    async fn finish_turn(
        &self,
        myself: &ActorRef<ConversationMsg>,
        state: &mut ConversationState,
        fragments: Vec<Fragment<Tag>>,
        started: std::time::Instant,
        resolution: Resolution,
    ) {
        let now = self.deps.clock.now();
        let first_at = fragments.first().map(|f| f.at).unwrap_or(now);
        let consumed: Vec<u64> = fragments.iter().map(|f| f.tag.seq).collect();
        // A turn is identified in logs by the inbox sequence number of its first message.
        let turn = consumed.first().copied();
        let settings = self
            .deps
            .directory
            .get(&state.tenant)
            .map(|rt| rt.tenant.settings.clone())
            .unwrap_or_default();
        let (hours, ttl) = (settings.human_timeout_hours, settings.history_ttl_days);
        // An answer is sent as one message per paragraph (tenant setting), in order.
        let answer = |text: &str| -> Vec<StoredMessage> {
            engine::sending::parts(text, &settings)
                .iter()
                .map(|part| self.outbound_message(state, Author::Assistant, part, now, ttl))
                .collect()
        };
        let mut conv = state.conv.clone();
        let mut outbound = Vec::new();
        let mut transition = None;
        let outcome = match resolution {
            Resolution::Reply(text, outcome) => {
                outbound.extend(answer(&text));
                outcome
            }
            Resolution::Handoff(reason, text) => {
                if let Outcome::Move(t) = conv.apply(reason, now, hours) {
                    transition = Some(t);
                }
                outbound.extend(answer(&text));
                match reason {
                    Reason::HandoffKeyword => "handoff_keyword",
                    Reason::LlmFailure => "handoff_llm_failure",
                    _ => "handoff_low_confidence",
                }
            }
            Resolution::Silent(outcome) => outcome,
        };
        if let Some(last) = outbound.last() {
            conv.last_message_at = Some(last.at);
        }
        conv.updated_at = now;
        let commit = ConversationCommit {
            conversation: conv.clone(),
            consumed_inbox: consumed,
            outbound: outbound.clone(),
        };
        match self.deps.store.commit(commit).await {
            Ok(items) => {
                state.conv = conv;
                let m = &self.deps.metrics;
                m.turns.with_label_values(&[outcome]).inc();
                m.turn_messages.observe(fragments.len() as f64);
                m.turn_buffer_seconds
                    .observe(now.millis_since(first_at) as f64 / 1000.0);
                m.turn_engine_seconds
                    .observe(started.elapsed().as_secs_f64());
                info!(outcome, turn, messages = fragments.len(), "turn decided");
                self.publish_change(state, &outbound, transition);
                self.enqueue(state, items);
            }
            Err(e) => {
                error!(error = %e, "turn commit failed; the turn stays buffered and is retried");
                self.deps
                    .metrics
                    .store_errors
                    .with_label_values(&["commit"])
                    .inc();
                state.buffer.restore(fragments);
                let generation = state.buffer.generation();
                myself.send_after(COMMIT_RETRY, move || ConversationMsg::FlushIfDue {
                    generation,
                });
            }
        }
    }

    fn outbound_message(
        &self,
        state: &ConversationState,
        author: Author,
        text: &str,
        now: Timestamp,
        ttl_days: f64,
    ) -> StoredMessage {
        StoredMessage {
            id: MessageId(uuid::Uuid::now_v7().to_string()),
            tenant: state.tenant.clone(),
            contact: state.contact.clone(),
            direction: Direction::Out,
            author,
            kind: MessageKind::Text,
            text: text.to_owned(),
            provider_id: None,
            at: now,
            status: Some(DeliveryStatus::Pending),
            expires_at: now.plus_days(ttl_days),
            amended: None,
        }
    }

    /// Applies a state change (and queues `outbound`), commits it, and tells dashboards.
    async fn commit_change(
        &self,
        state: &mut ConversationState,
        reason: Reason,
        consumed: Vec<u64>,
        outbound: Vec<StoredMessage>,
    ) -> Result<Conversation, EngineError> {
        let now = self.deps.clock.now();
        let hours = self
            .deps
            .directory
            .get(&state.tenant)
            .map_or(24.0, |rt| rt.tenant.settings.human_timeout_hours);
        let mut conv = state.conv.clone();
        let transition = match conv.apply(reason, now, hours) {
            Outcome::Move(t) => Some(t),
            Outcome::Stay => None,
            Outcome::Invalid => {
                return Err(EngineError::Conflict(format!(
                    "{} is not possible while the conversation is {}",
                    reason, conv.state
                )));
            }
        };
        if let Some(last) = outbound.last() {
            conv.last_message_at = Some(conv.last_message_at.map_or(last.at, |t| t.max(last.at)));
        }
        let commit = ConversationCommit {
            conversation: conv.clone(),
            consumed_inbox: consumed,
            outbound: outbound.clone(),
        };
        let items = self.deps.store.commit(commit).await.inspect_err(|_| {
            self.deps
                .metrics
                .store_errors
                .with_label_values(&["commit"])
                .inc();
        })?;
        state.conv = conv.clone();
        self.publish_change(state, &outbound, transition);
        self.enqueue(state, items);
        Ok(conv)
    }

    async fn change_state(
        &self,
        state: &mut ConversationState,
        reason: Reason,
        consumed: Vec<u64>,
    ) -> Result<Conversation, EngineError> {
        self.commit_change(state, reason, consumed, Vec::new())
            .await
    }

    async fn on_human_reply(
        &self,
        state: &mut ConversationState,
        text: String,
    ) -> Result<StoredMessage, EngineError> {
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(EngineError::invalid("text", "must not be empty"));
        }
        if text.chars().count() > 4096 {
            return Err(EngineError::invalid(
                "text",
                "must be at most 4096 characters",
            ));
        }
        let ttl = self
            .deps
            .directory
            .get(&state.tenant)
            .map_or(30.0, |rt| rt.tenant.settings.history_ttl_days);
        let message =
            self.outbound_message(state, Author::Human, &text, self.deps.clock.now(), ttl);
        self.commit_change(state, Reason::HumanReply, Vec::new(), vec![message.clone()])
            .await?;
        Ok(message)
    }

    async fn on_human_timeout(&self, state: &mut ConversationState) {
        let now = self.deps.clock.now();
        let Some(deadline) = state.conv.human_deadline else {
            return;
        };
        if deadline > now || !state.conv.state.human_in_charge() {
            return; // refreshed since the scan, or already released
        }
        let Some(rt) = self.deps.directory.get(&state.tenant) else {
            return;
        };
        let settings = &rt.tenant.settings;
        let text = if state.conv.human_answered {
            &settings.return_message
        } else {
            &settings.no_human_message
        };
        let message = self.outbound_message(
            state,
            Author::Assistant,
            text,
            now,
            settings.history_ttl_days,
        );
        match self
            .commit_change(state, Reason::HumanTimeout, Vec::new(), vec![message])
            .await
        {
            Ok(_) => {
                self.deps.metrics.deadlines_fired.inc();
                info!("human timeout: the assistant takes the conversation back");
            }
            Err(e) => warn!(error = %e, "human timeout not recorded; the next scan retries"),
        }
    }

    fn publish_change(
        &self,
        state: &ConversationState,
        outbound: &[StoredMessage],
        transition: Option<Transition>,
    ) {
        let events = &self.deps.events;
        let now = self.deps.clock.now();
        if let Some(t) = transition {
            events.publish(
                &state.tenant,
                &state.contact,
                now,
                EventBody::State {
                    from: t.from,
                    to: t.to,
                    reason: t.reason,
                },
            );
            // A handoff leaves the assistant; a return comes back to it. A human answering a
            // conversation that was waiting for one is neither.
            if t.from == engine::ConversationState::IaAtiva {
                self.deps
                    .metrics
                    .handoffs
                    .with_label_values(&[t.reason.as_str()])
                    .inc();
            } else if t.to == engine::ConversationState::IaAtiva {
                self.deps
                    .metrics
                    .returns
                    .with_label_values(&[t.reason.as_str()])
                    .inc();
            }
        }
        for m in outbound {
            events.publish(
                &state.tenant,
                &state.contact,
                m.at,
                EventBody::Message {
                    id: m.id.to_string(),
                    direction: m.direction,
                    author: m.author,
                    kind: m.kind,
                    text: m.text.clone(),
                    status: m.status,
                },
            );
        }
    }

    fn enqueue(&self, state: &ConversationState, items: Vec<engine::message::OutboxItem>) {
        for item in items {
            if state.sender.send(Box::new(item)).is_err() {
                // The sender task only ends when this actor drops its handle; the entry stays in
                // the durable outbox and is sent at the next start.
                error!("outbox sender is gone; the message is sent after restart");
            }
        }
    }

    fn arm_idle(&self, myself: &ActorRef<ConversationMsg>, state: &mut ConversationState) {
        if !state.idle_timer_armed {
            state.idle_timer_armed = true;
            myself.send_after(self.deps.policy.idle_after, || ConversationMsg::IdleTick);
        }
    }

    fn on_idle_tick(&self, myself: &ActorRef<ConversationMsg>, state: &mut ConversationState) {
        state.idle_timer_armed = false;
        let idle_for = state.last_activity.elapsed();
        if idle_for < self.deps.policy.idle_after
            || !state.buffer.is_empty()
            || state.in_flight.is_some()
        {
            state.idle_timer_armed = true;
            let wait = self
                .deps
                .policy
                .idle_after
                .saturating_sub(idle_for)
                .max(Duration::from_millis(10));
            myself.send_after(wait, || ConversationMsg::IdleTick);
            return;
        }
        // Ask the supervisor: only it knows whether a command is on its way to this mailbox.
        let _ = self.supervisor.cast(TenantMsg::Idle {
            contact: state.contact.clone(),
            actor: myself.get_id(),
            handled: state.handled.load(Ordering::SeqCst),
        });
    }
}

/// The conversation's last `n` messages before the turn being answered, oldest first.
async fn load_memory(
    deps: &Deps,
    tenant: &TenantId,
    contact: &ContactId,
    n: usize,
    turn: &HashSet<MessageId>,
    turn_last_at: Timestamp,
    now: Timestamp,
) -> Vec<MemoryEntry> {
    if n == 0 {
        return Vec::new();
    }
    match deps
        .store
        .history(tenant, contact, n + turn.len() + 8, None, now)
        .await
    {
        Ok(history) => {
            let before_turn: Vec<_> = history
                .iter()
                .filter(|m| !turn.contains(&m.id) && m.at <= turn_last_at)
                .collect();
            MemoryWindow::from_newest_first(n, before_turn)
                .entries()
                .cloned()
                .collect()
        }
        Err(e) => {
            deps.metrics
                .store_errors
                .with_label_values(&["history"])
                .inc();
            warn!(error = %e, "memory unavailable; answering without it");
            Vec::new()
        }
    }
}

fn remember(state: &mut ConversationState, seq: u64) {
    state.seen_order.push_back(seq);
    while state.seen_order.len() > REMEMBERED_SEQS {
        if let Some(old) = state.seen_order.pop_front() {
            state.seen.remove(&old);
        }
    }
}
