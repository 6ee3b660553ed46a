//! In-memory implementations of the ports, for tests of the engine and of the actors (enabled in
//! other crates with the `testsuite` feature). Integration tests use the real stores and real HTTP
//! peers; these are for fast, deterministic unit and paused-time tests.
//!
//! [`conformance`] is the one suite every [`Store`] implementation must pass.

pub mod conformance;
mod hashing;

pub use hashing::{HASHING_DIMENSIONS, HASHING_MODEL, HashingEmbedder, hashing_embedding};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::conversation::{Conversation, ConversationState};
use crate::error::EngineError;
use crate::events::EventBody;
use crate::ids::{ContactId, MessageId, TenantId};
use crate::message::{
    Author, DeliveryStatus, Direction, InboxEntry, IngestItem, IngestOutcome, MessageKind,
    OutboxItem, StoredMessage,
};
use crate::ports::*;
use crate::tenant::{ProviderConfig, Tenant, TenantSettings, TenantStatus};
use crate::time::Timestamp;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A tenant on Evolution with default settings, for tests.
pub fn tenant(id: &str) -> Tenant {
    Tenant {
        id: TenantId::parse(id).expect("test tenant ids should be valid slugs"),
        name: format!("Loja {id}"),
        provider: ProviderConfig::Evolution {
            base_url: "http://127.0.0.1:9".into(),
            instance: id.into(),
            api_key: "evo-key".into(),
            webhook_token: "hook-token".into(),
        },
        settings: TenantSettings::default(),
        status: TenantStatus::Active,
        api_key_hash: "0".repeat(64),
        created_at: Timestamp(0),
    }
}

/// An inbound customer text message, for tests.
pub fn inbound(tenant: &str, contact: &str, id: &str, text: &str, at: i64) -> StoredMessage {
    StoredMessage {
        id: MessageId(id.into()),
        tenant: TenantId::parse(tenant).expect("valid tenant"),
        contact: ContactId::parse(contact).expect("valid contact"),
        direction: Direction::In,
        author: Author::Contact,
        kind: MessageKind::Text,
        text: text.into(),
        provider_id: Some(format!("p-{id}")),
        at: Timestamp(at),
        status: None,
        expires_at: Timestamp(at).plus_days(30.0),
        amended: None,
    }
}

/// An outbound message from the assistant, for tests.
pub fn outbound(tenant: &str, contact: &str, id: &str, text: &str, at: i64) -> StoredMessage {
    StoredMessage {
        direction: Direction::Out,
        author: Author::Assistant,
        provider_id: None,
        status: Some(DeliveryStatus::Pending),
        ..inbound(tenant, contact, id, text, at)
    }
}

#[derive(Debug, Default)]
struct MemoryData {
    tenants: BTreeMap<TenantId, Tenant>,
    knowledge: HashMap<TenantId, Knowledge>,
    dedupe: HashMap<(TenantId, String), Timestamp>,
    messages: HashMap<(TenantId, ContactId), Vec<StoredMessage>>,
    inbox: BTreeMap<u64, (InboxEntry, bool)>,
    conversations: HashMap<(TenantId, ContactId), Conversation>,
    outbox: BTreeMap<u64, (OutboxItem, bool)>,
    next_seq: u64,
}

impl MemoryData {
    fn message_mut(
        &mut self,
        tenant: &TenantId,
        contact: &ContactId,
        id: &MessageId,
    ) -> Option<&mut StoredMessage> {
        self.messages
            .get_mut(&(tenant.clone(), contact.clone()))?
            .iter_mut()
            .find(|m| &m.id == id)
    }
}

/// A [`Store`] in memory. `fail_writes` makes every write fail as `Unavailable`.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    data: Arc<Mutex<MemoryData>>,
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    fn check_writable(&self) -> StoreResult<()> {
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            Err(EngineError::Unavailable(
                "memory store set to fail writes".into(),
            ))
        } else {
            Ok(())
        }
    }
}

fn cursor_of(c: &Conversation) -> String {
    format!(
        "{}:{}",
        c.last_message_at.unwrap_or(c.updated_at).as_millis(),
        c.contact
    )
}

fn activity(c: &Conversation) -> (i64, String) {
    (
        c.last_message_at.unwrap_or(c.updated_at).as_millis(),
        c.contact.to_string(),
    )
}

/// Parses a conversation cursor `millis:contact`.
pub fn parse_cursor(cursor: &str) -> StoreResult<(i64, String)> {
    let (ms, contact) = cursor
        .split_once(':')
        .ok_or_else(|| EngineError::invalid("cursor", "malformed cursor"))?;
    let ms = ms
        .parse()
        .map_err(|_| EngineError::invalid("cursor", "malformed cursor"))?;
    Ok((ms, contact.to_owned()))
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn health(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        self.check_writable()?;
        let mut d = lock(&self.data);
        if d.tenants.contains_key(&tenant.id) {
            return Err(EngineError::Conflict(format!(
                "tenant {} exists",
                tenant.id
            )));
        }
        d.tenants.insert(tenant.id.clone(), tenant.clone());
        Ok(())
    }

    async fn get_tenant(&self, id: &TenantId) -> StoreResult<Option<Tenant>> {
        Ok(lock(&self.data).tenants.get(id).cloned())
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        Ok(lock(&self.data).tenants.values().cloned().collect())
    }

    async fn update_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        self.check_writable()?;
        let mut d = lock(&self.data);
        match d.tenants.get_mut(&tenant.id) {
            Some(t) => {
                *t = tenant.clone();
                Ok(())
            }
            None => Err(EngineError::not_found(format!("tenant {}", tenant.id))),
        }
    }

    async fn delete_tenant(&self, id: &TenantId) -> StoreResult<bool> {
        self.check_writable()?;
        let mut d = lock(&self.data);
        let existed = d.tenants.remove(id).is_some();
        d.knowledge.remove(id);
        d.dedupe.retain(|(t, _), _| t != id);
        d.messages.retain(|(t, _), _| t != id);
        d.conversations.retain(|(t, _), _| t != id);
        d.inbox.retain(|_, (e, _)| &e.message.tenant != id);
        d.outbox.retain(|_, (o, _)| &o.tenant != id);
        Ok(existed)
    }

    async fn put_knowledge(&self, tenant: &TenantId, knowledge: &Knowledge) -> StoreResult<()> {
        self.check_writable()?;
        lock(&self.data)
            .knowledge
            .insert(tenant.clone(), knowledge.clone());
        Ok(())
    }

    async fn get_knowledge(&self, tenant: &TenantId) -> StoreResult<Option<Knowledge>> {
        Ok(lock(&self.data).knowledge.get(tenant).cloned())
    }

    async fn ingest(
        &self,
        tenant: &TenantId,
        items: Vec<IngestItem>,
        now: Timestamp,
    ) -> StoreResult<Vec<IngestOutcome>> {
        self.check_writable()?;
        let mut d = lock(&self.data);
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let key = (tenant.clone(), item.dedupe_key.clone());
            if d.dedupe.contains_key(&key) {
                outcomes.push(IngestOutcome::Duplicate);
                continue;
            }
            d.dedupe.insert(key, now);
            let m = item.message;
            d.messages
                .entry((m.tenant.clone(), m.contact.clone()))
                .or_default()
                .push(m.clone());
            let conv = d
                .conversations
                .entry((m.tenant.clone(), m.contact.clone()))
                .or_insert_with(|| Conversation::new(m.tenant.clone(), m.contact.clone(), now));
            conv.last_message_at = Some(conv.last_message_at.map_or(m.at, |t| t.max(m.at)));
            let entry = item.inbox.map(|kind| {
                d.next_seq += 1;
                InboxEntry {
                    seq: d.next_seq,
                    kind,
                    message: m,
                }
            });
            if let Some(e) = &entry {
                d.inbox.insert(e.seq, (e.clone(), false));
            }
            outcomes.push(IngestOutcome::Recorded(entry));
        }
        Ok(outcomes)
    }

    async fn pending_inbox(&self) -> StoreResult<Vec<InboxEntry>> {
        Ok(lock(&self.data)
            .inbox
            .values()
            .filter(|(_, done)| !done)
            .map(|(e, _)| e.clone())
            .collect())
    }

    async fn load_conversation(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
    ) -> StoreResult<Option<Conversation>> {
        Ok(lock(&self.data)
            .conversations
            .get(&(tenant.clone(), contact.clone()))
            .cloned())
    }

    async fn commit(&self, commit: ConversationCommit) -> StoreResult<Vec<OutboxItem>> {
        self.check_writable()?;
        let mut d = lock(&self.data);
        let c = commit.conversation;
        let key = (c.tenant.clone(), c.contact.clone());
        let mut conv = c.clone();
        let stored_last = d.conversations.get(&key).and_then(|s| s.last_message_at);
        conv.last_message_at = [
            stored_last,
            c.last_message_at,
            commit.outbound.iter().map(|m| m.at).max(),
        ]
        .into_iter()
        .flatten()
        .max();
        d.conversations.insert(key.clone(), conv);
        for seq in commit.consumed_inbox {
            if let Some((_, done)) = d.inbox.get_mut(&seq) {
                *done = true;
            }
        }
        let mut items = Vec::new();
        for m in commit.outbound {
            d.next_seq += 1;
            let item = OutboxItem {
                seq: d.next_seq,
                tenant: m.tenant.clone(),
                contact: m.contact.clone(),
                message_id: m.id.clone(),
                text: m.text.clone(),
                attempts: 0,
            };
            d.outbox.insert(item.seq, (item.clone(), false));
            d.messages.entry(key.clone()).or_default().push(m);
            items.push(item);
        }
        Ok(items)
    }

    async fn list_conversations(
        &self,
        tenant: &TenantId,
        state: Option<ConversationState>,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Conversation>> {
        let after = cursor.map(parse_cursor).transpose()?;
        let d = lock(&self.data);
        let mut all: Vec<&Conversation> = d
            .conversations
            .values()
            .filter(|c| &c.tenant == tenant && state.is_none_or(|s| c.state == s))
            .filter(|c| after.as_ref().is_none_or(|a| activity(c) < *a))
            .collect();
        all.sort_by_key(|c| std::cmp::Reverse(activity(c)));
        let more = all.len() > limit;
        let items: Vec<Conversation> = all.into_iter().take(limit).cloned().collect();
        let next_cursor = if more {
            items.last().map(cursor_of)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn history(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
        limit: usize,
        before: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<Vec<StoredMessage>> {
        let d = lock(&self.data);
        let mut msgs: Vec<StoredMessage> = d
            .messages
            .get(&(tenant.clone(), contact.clone()))
            .map(|v| {
                v.iter()
                    .filter(|m| m.expires_at > now && before.is_none_or(|b| m.at < b))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        // Newest first; among equal times, the later write first.
        msgs.reverse();
        msgs.sort_by_key(|m| std::cmp::Reverse(m.at));
        msgs.truncate(limit);
        Ok(msgs)
    }

    async fn due_deadlines(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<DueDeadline>> {
        let d = lock(&self.data);
        let mut due: Vec<DueDeadline> = d
            .conversations
            .values()
            .filter_map(|c| {
                let deadline = c.human_deadline?;
                (deadline <= now).then(|| DueDeadline {
                    tenant: c.tenant.clone(),
                    contact: c.contact.clone(),
                    deadline,
                })
            })
            .collect();
        due.sort_by_key(|x| x.deadline);
        due.truncate(limit);
        Ok(due)
    }

    async fn erase_contact(&self, tenant: &TenantId, contact: &ContactId) -> StoreResult<()> {
        self.check_writable()?;
        let mut d = lock(&self.data);
        let key = (tenant.clone(), contact.clone());
        d.messages.remove(&key);
        d.conversations.remove(&key);
        d.inbox
            .retain(|_, (e, _)| !(&e.message.tenant == tenant && &e.message.contact == contact));
        d.outbox
            .retain(|_, (o, _)| !(&o.tenant == tenant && &o.contact == contact));
        Ok(())
    }

    async fn state_counts(&self) -> StoreResult<Vec<(TenantId, ConversationState, u64)>> {
        let d = lock(&self.data);
        let mut counts: BTreeMap<(TenantId, &'static str), (ConversationState, u64)> =
            BTreeMap::new();
        for c in d.conversations.values() {
            counts
                .entry((c.tenant.clone(), c.state.as_str()))
                .or_insert((c.state, 0))
                .1 += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((t, _), (s, n))| (t, s, n))
            .collect())
    }

    async fn pending_outbox(&self) -> StoreResult<Vec<OutboxItem>> {
        Ok(lock(&self.data)
            .outbox
            .values()
            .filter(|(_, done)| !done)
            .map(|(o, _)| o.clone())
            .collect())
    }

    async fn outbox_sent(
        &self,
        seq: u64,
        provider_id: Option<&str>,
        _now: Timestamp,
    ) -> StoreResult<()> {
        self.check_writable()?;
        let mut d = lock(&self.data);
        let Some((item, done)) = d.outbox.get_mut(&seq) else {
            return Ok(());
        };
        *done = true;
        let item = item.clone();
        if let Some(m) = d.message_mut(&item.tenant, &item.contact, &item.message_id) {
            m.provider_id = provider_id.map(str::to_owned);
            if m.status.is_none_or(|s| s.advances_to(DeliveryStatus::Sent)) {
                m.status = Some(DeliveryStatus::Sent);
            }
        }
        Ok(())
    }

    async fn outbox_failed(&self, seq: u64, _error: &str, _now: Timestamp) -> StoreResult<()> {
        self.check_writable()?;
        let mut d = lock(&self.data);
        let Some((item, done)) = d.outbox.get_mut(&seq) else {
            return Ok(());
        };
        *done = true;
        let item = item.clone();
        if let Some(m) = d.message_mut(&item.tenant, &item.contact, &item.message_id) {
            m.status = Some(DeliveryStatus::Failed);
        }
        Ok(())
    }

    async fn record_delivery(
        &self,
        tenant: &TenantId,
        provider_id: &str,
        status: DeliveryStatus,
    ) -> StoreResult<Option<DeliveryUpdate>> {
        self.check_writable()?;
        let mut d = lock(&self.data);
        for ((t, _), msgs) in d.messages.iter_mut() {
            if t != tenant {
                continue;
            }
            if let Some(m) = msgs.iter_mut().find(|m| {
                m.direction == Direction::Out && m.provider_id.as_deref() == Some(provider_id)
            }) {
                let current = m.status.unwrap_or(DeliveryStatus::Pending);
                if !current.advances_to(status) {
                    return Ok(None);
                }
                m.status = Some(status);
                return Ok(Some(DeliveryUpdate {
                    contact: m.contact.clone(),
                    message_id: m.id.clone(),
                    status,
                }));
            }
        }
        Ok(None)
    }

    async fn amend_message(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
        provider_id: &str,
        amendment: &crate::message::Amendment,
        now: Timestamp,
    ) -> StoreResult<Option<StoredMessage>> {
        self.check_writable()?;
        let mut d = lock(&self.data);
        let since = now.plus_days(-crate::message::AMEND_LOOKBACK_DAYS);
        let Some(message) = d
            .messages
            .get_mut(&(tenant.clone(), contact.clone()))
            .and_then(|msgs| {
                msgs.iter_mut().rev().find(|m| {
                    m.provider_id.as_deref() == Some(provider_id)
                        && m.at >= since
                        && m.expires_at > now
                })
            })
        else {
            return Ok(None);
        };
        Ok(message.amend(amendment, now).then(|| message.clone()))
    }

    async fn is_own_message(&self, tenant: &TenantId, provider_id: &str) -> StoreResult<bool> {
        let d = lock(&self.data);
        Ok(d.messages.iter().any(|((t, _), msgs)| {
            t == tenant
                && msgs.iter().any(|m| {
                    m.direction == Direction::Out
                        && m.author != Author::Human
                        && m.provider_id.as_deref() == Some(provider_id)
                })
        }))
    }

    async fn sweep(&self, now: Timestamp, dedupe_before: Timestamp) -> StoreResult<SweepReport> {
        self.check_writable()?;
        let mut d = lock(&self.data);
        let mut report = SweepReport::default();
        for msgs in d.messages.values_mut() {
            let before = msgs.len();
            msgs.retain(|m| m.expires_at > now);
            report.messages += (before - msgs.len()) as u64;
        }
        let before = d.dedupe.len();
        d.dedupe.retain(|_, at| *at >= dedupe_before);
        report.dedupe_keys = (before - d.dedupe.len()) as u64;
        let before = d.inbox.len();
        d.inbox.retain(|_, (_, done)| !*done);
        report.inbox_entries = (before - d.inbox.len()) as u64;
        Ok(report)
    }
}

/// A provider that records what it is asked to send. `fail_next(n)` makes the next `n` sends fail
/// with a retryable error.
#[derive(Debug, Default, Clone)]
pub struct RecordingProvider {
    sent: Arc<Mutex<Vec<(ContactId, String)>>>,
    typing: Arc<Mutex<Vec<(ContactId, bool)>>>,
    failures: Arc<Mutex<u32>>,
    counter: Arc<Mutex<u64>>,
}

impl RecordingProvider {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn sent(&self) -> Vec<(ContactId, String)> {
        lock(&self.sent).clone()
    }

    pub fn sent_to(&self, contact: &str) -> Vec<String> {
        lock(&self.sent)
            .iter()
            .filter(|(c, _)| c.as_str() == contact)
            .map(|(_, t)| t.clone())
            .collect()
    }

    pub fn typing(&self) -> Vec<(ContactId, bool)> {
        lock(&self.typing).clone()
    }

    pub fn fail_next(&self, n: u32) {
        *lock(&self.failures) = n;
    }
}

#[async_trait]
impl Provider for RecordingProvider {
    fn kind(&self) -> &'static str {
        "recording"
    }

    async fn send_text(&self, to: &ContactId, text: &str) -> Result<SendReceipt, SendError> {
        {
            let mut failures = lock(&self.failures);
            if *failures > 0 {
                *failures -= 1;
                return Err(SendError {
                    retryable: true,
                    status: Some(503),
                    message: "scripted failure".into(),
                    handoff: None,
                });
            }
        }
        lock(&self.sent).push((to.clone(), text.to_owned()));
        let mut n = lock(&self.counter);
        *n += 1;
        Ok(SendReceipt {
            provider_id: Some(format!("rec-{n}")),
        })
    }

    async fn typing(&self, to: &ContactId, on: bool) -> Result<(), SendError> {
        lock(&self.typing).push((to.clone(), on));
        Ok(())
    }
}

/// A factory that hands every tenant the same [`RecordingProvider`].
#[derive(Debug, Default, Clone)]
pub struct RecordingFactory(pub RecordingProvider);

impl ProviderFactory for RecordingFactory {
    fn provider(&self, _tenant: &Tenant) -> Arc<dyn Provider> {
        Arc::new(self.0.clone())
    }
}

/// An [`EventSink`] that keeps every event.
#[derive(Debug, Default, Clone)]
pub struct CollectingEvents(Arc<Mutex<Vec<(TenantId, ContactId, EventBody)>>>);

impl CollectingEvents {
    pub fn events(&self) -> Vec<(TenantId, ContactId, EventBody)> {
        lock(&self.0).clone()
    }

    /// Event kinds (`message`, `state`, …) published for one contact, in order.
    pub fn kinds_for(&self, contact: &str) -> Vec<&'static str> {
        lock(&self.0)
            .iter()
            .filter(|(_, c, _)| c.as_str() == contact)
            .map(|(_, _, b)| b.kind())
            .collect()
    }
}

impl EventSink for CollectingEvents {
    fn publish(&self, tenant: &TenantId, contact: &ContactId, _at: Timestamp, body: EventBody) {
        lock(&self.0).push((tenant.clone(), contact.clone(), body));
    }
}
