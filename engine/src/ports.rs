//! The traits through which the engine's callers reach the outside world: storage, WhatsApp
//! providers and dashboard events. Implementations live in other crates (`schema` for stores,
//! `gateway` for providers and the event hub); [`crate::testsuite`] has in-memory ones for tests.
//!
//! **Invariant:** every method of [`Store`] that writes is atomic: it either stores all it was given
//! or nothing, so a crash never leaves half a turn behind.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::conversation::{Conversation, ConversationState};
use crate::error::EngineError;
use crate::events::EventBody;
use crate::ids::{ContactId, MessageId, TenantId};
use crate::knowledge::Chunk;
use crate::message::{
    DeliveryStatus, InboxEntry, IngestItem, IngestOutcome, OutboxItem, StoredMessage,
};
use crate::tenant::Tenant;
use crate::time::Timestamp;

pub type StoreResult<T> = Result<T, EngineError>;

/// A tenant's knowledge text and its chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Knowledge {
    pub text: String,
    pub chunks: Vec<Chunk>,
    pub updated_at: Timestamp,
}

/// Everything one change of a conversation writes, in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationCommit {
    /// The conversation record after the change.
    pub conversation: Conversation,
    /// Inbox entries whose effects this commit stores: marked done.
    pub consumed_inbox: Vec<u64>,
    /// Messages to append to the history and send through the provider (each gets an outbox entry).
    pub outbound: Vec<StoredMessage>,
}

/// A page of results and the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A human-timeout deadline that has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDeadline {
    pub tenant: TenantId,
    pub contact: ContactId,
    pub deadline: Timestamp,
}

/// A delivery status that moved an outbound message forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryUpdate {
    pub contact: ContactId,
    pub message_id: MessageId,
    pub status: DeliveryStatus,
}

/// What a sweep removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepReport {
    pub messages: u64,
    pub dedupe_keys: u64,
    pub inbox_entries: u64,
}

/// The storage port. One implementation per backend; every implementation passes the same
/// conformance suite.
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// The backend's name for metrics and `/ready` (`embedded`, `scylla`, `memory`).
    fn backend(&self) -> &'static str;

    /// Answers when the backend can serve reads and writes.
    async fn health(&self) -> StoreResult<()>;

    // ---- tenants ----
    /// Fails with `Conflict` when the id exists.
    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()>;
    async fn get_tenant(&self, id: &TenantId) -> StoreResult<Option<Tenant>>;
    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>>;
    /// Replaces the tenant record; `NotFound` when it does not exist.
    async fn update_tenant(&self, tenant: &Tenant) -> StoreResult<()>;
    /// Deletes the tenant and all its data. Returns whether it existed.
    async fn delete_tenant(&self, id: &TenantId) -> StoreResult<bool>;

    // ---- knowledge ----
    async fn put_knowledge(&self, tenant: &TenantId, knowledge: &Knowledge) -> StoreResult<()>;
    async fn get_knowledge(&self, tenant: &TenantId) -> StoreResult<Option<Knowledge>>;

    // ---- ingest and inbox ----
    /// Records inbound events durably, in one transaction: for each item, unless its dedupe key was
    /// seen, the message joins the history and, when asked, the inbox. Outcomes follow `items`.
    async fn ingest(
        &self,
        tenant: &TenantId,
        items: Vec<IngestItem>,
        now: Timestamp,
    ) -> StoreResult<Vec<IngestOutcome>>;
    /// Every inbox entry not yet done, oldest first (replayed at start).
    async fn pending_inbox(&self) -> StoreResult<Vec<InboxEntry>>;

    // ---- conversations ----
    async fn load_conversation(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
    ) -> StoreResult<Option<Conversation>>;
    /// Stores a conversation change atomically and returns the outbox entries it created, in order.
    /// The record's `last_message_at` never moves backwards: the stored value is the latest of the
    /// stored one, the given one and the outbound messages' times (ingest may have moved it since
    /// the caller loaded the record).
    async fn commit(&self, commit: ConversationCommit) -> StoreResult<Vec<OutboxItem>>;
    /// Most recent activity first; `cursor` comes from the previous page.
    async fn list_conversations(
        &self,
        tenant: &TenantId,
        state: Option<ConversationState>,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Conversation>>;
    /// History, newest first, messages strictly older than `before` when given. Expired messages
    /// are never returned, swept or not.
    async fn history(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
        limit: usize,
        before: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<Vec<StoredMessage>>;
    /// Conversations whose human-timeout deadline is at or before `now`.
    async fn due_deadlines(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<DueDeadline>>;
    /// Erases a contact's history, conversation record, inbox and outbox entries.
    async fn erase_contact(&self, tenant: &TenantId, contact: &ContactId) -> StoreResult<()>;
    /// Conversations per tenant and state (for the gauge).
    async fn state_counts(&self) -> StoreResult<Vec<(TenantId, ConversationState, u64)>>;

    // ---- outbox and delivery ----
    /// Every outbox entry not yet sent or abandoned, oldest first (resent at start).
    async fn pending_outbox(&self) -> StoreResult<Vec<OutboxItem>>;
    /// The provider accepted the message.
    async fn outbox_sent(
        &self,
        seq: u64,
        provider_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<()>;
    /// The send failed for good; the message is marked `failed`.
    async fn outbox_failed(&self, seq: u64, error: &str, now: Timestamp) -> StoreResult<()>;
    /// Applies a provider delivery status to the outbound message with that provider id. Returns the
    /// update when the status moved forward, `None` when unknown or not newer.
    async fn record_delivery(
        &self,
        tenant: &TenantId,
        provider_id: &str,
        status: DeliveryStatus,
    ) -> StoreResult<Option<DeliveryUpdate>>;
    /// Applies an edit or deletion by its author to the message of `contact` with this provider id
    /// recorded in the last [`crate::message::AMEND_LOOKBACK_DAYS`] and not expired. Returns the
    /// amended message, or `None` when there is none or it was already deleted.
    async fn amend_message(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
        provider_id: &str,
        amendment: &crate::message::Amendment,
        now: Timestamp,
    ) -> StoreResult<Option<StoredMessage>>;
    /// Whether Conversa itself sent the message with this provider id (an echo, not a human).
    async fn is_own_message(&self, tenant: &TenantId, provider_id: &str) -> StoreResult<bool>;

    // ---- maintenance ----
    /// Deletes expired history, dedupe keys older than `dedupe_before`, and done inbox entries.
    async fn sweep(&self, now: Timestamp, dedupe_before: Timestamp) -> StoreResult<SweepReport>;
}

/// A provider's answer to a send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendReceipt {
    /// The provider's id of the sent message, when it tells.
    pub provider_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Whether trying again later may succeed (timeouts, 5xx, rate limits).
    pub retryable: bool,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
    pub message: String,
    /// Set when the provider refused because only a person can go on (WhatsApp's 24-hour window
    /// closed): the conversation is handed to a human for this reason.
    pub handoff: Option<crate::conversation::Reason>,
}

/// Sends through one tenant's WhatsApp provider.
#[async_trait]
pub trait Provider: Send + Sync + Debug {
    fn kind(&self) -> &'static str;
    async fn send_text(&self, to: &ContactId, text: &str) -> Result<SendReceipt, SendError>;
    /// Shows (or clears) "typing…" to the contact. Best effort.
    async fn typing(&self, to: &ContactId, on: bool) -> Result<(), SendError>;
}

/// Builds the provider client of a tenant from its configuration.
pub trait ProviderFactory: Send + Sync + Debug {
    fn provider(&self, tenant: &Tenant) -> Arc<dyn Provider>;
}

/// An answer from the language model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LlmAnswer {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// Every attempt failed (timeouts, 429, 5xx, malformed answers).
    #[error("the language model failed: {0}")]
    Failed(String),
    /// The circuit breaker is open: the endpoint failed too often recently.
    #[error("the language model is unavailable (circuit open)")]
    CircuitOpen,
    /// An empty or refused completion.
    #[error("the language model gave no usable answer: {0}")]
    Empty(String),
}

/// A chat-completion endpoint. Implementations bound every call (timeouts, retries, breaker).
#[async_trait]
pub trait Llm: Send + Sync + Debug {
    /// `tenant` labels usage and cost.
    async fn complete(
        &self,
        tenant: &TenantId,
        request: &crate::prompt::LlmRequest,
    ) -> Result<LlmAnswer, LlmError>;
}

/// Why an embeddings call failed (after the implementation's own retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("embeddings failed: {0}")]
pub struct EmbedError(pub String);

/// An embeddings endpoint. Implementations bound every call (timeouts, retries, breaker).
#[async_trait]
pub trait Embedder: Send + Sync + Debug {
    /// The model the vectors come from; stored with each chunk's vector.
    fn model(&self) -> &str;
    /// How this model's cosines map onto the confidence scale.
    fn calibration(&self) -> crate::knowledge::DenseCalibration;
    /// One vector per text, in order. `tenant` labels metrics.
    async fn embed(&self, tenant: &TenantId, texts: &[String])
    -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Where dashboard events go. Must not block: implementations queue or drop, never wait.
pub trait EventSink: Send + Sync + Debug {
    fn publish(&self, tenant: &TenantId, contact: &ContactId, at: Timestamp, body: EventBody);
}
