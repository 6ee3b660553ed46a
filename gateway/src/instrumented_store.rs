//! A `Store` that times every call of the store it wraps: `conversa_store_operation_seconds` and
//! `conversa_store_errors_total`, by backend and operation (and error kind), so an SRE sees which
//! storage call is slow or failing whatever the backend.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use engine::conversation::{Conversation, ConversationState};
use engine::message::{
    DeliveryStatus, InboxEntry, IngestItem, IngestOutcome, OutboxItem, StoredMessage,
};
use engine::ports::{
    ConversationCommit, DeliveryUpdate, DueDeadline, Knowledge, Page, Store, StoreResult,
    SweepReport,
};
use engine::tenant::Tenant;
use engine::{ContactId, EngineError, TenantId, Timestamp};
use prometheus::{HistogramVec, IntCounterVec};

/// Wraps `inner`, recording each call in `seconds` and each failure in `errors`.
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn Store>,
    seconds: HistogramVec,
    errors: IntCounterVec,
}

impl InstrumentedStore {
    pub fn new(inner: Arc<dyn Store>, seconds: HistogramVec, errors: IntCounterVec) -> Self {
        Self {
            inner,
            seconds,
            errors,
        }
    }

    /// Wraps `inner` with the gateway's store metrics.
    pub fn wrap(inner: Arc<dyn Store>, metrics: &crate::metrics::GatewayMetrics) -> Arc<dyn Store> {
        Arc::new(Self::new(
            inner,
            metrics.store_seconds.clone(),
            metrics.store_errors.clone(),
        ))
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let started = Instant::now();
        let result = call.await;
        let backend = self.inner.backend();
        self.seconds
            .with_label_values(&[backend, op])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.errors
                .with_label_values(&[backend, op, error_kind(e)])
                .inc();
        }
        result
    }
}

/// The error's kind as a label value.
fn error_kind(e: &EngineError) -> &'static str {
    match e {
        EngineError::Invalid { .. } => "invalid",
        EngineError::NotFound { .. } => "not_found",
        EngineError::Conflict(_) => "conflict",
        EngineError::Unavailable(_) => "unavailable",
        EngineError::Internal(_) => "internal",
    }
}

#[async_trait]
impl Store for InstrumentedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn health(&self) -> StoreResult<()> {
        self.timed("health", self.inner.health()).await
    }

    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        self.timed("create_tenant", self.inner.create_tenant(tenant))
            .await
    }

    async fn get_tenant(&self, id: &TenantId) -> StoreResult<Option<Tenant>> {
        self.timed("get_tenant", self.inner.get_tenant(id)).await
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.timed("list_tenants", self.inner.list_tenants()).await
    }

    async fn update_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        self.timed("update_tenant", self.inner.update_tenant(tenant))
            .await
    }

    async fn delete_tenant(&self, id: &TenantId) -> StoreResult<bool> {
        self.timed("delete_tenant", self.inner.delete_tenant(id))
            .await
    }

    async fn put_knowledge(&self, tenant: &TenantId, knowledge: &Knowledge) -> StoreResult<()> {
        self.timed("put_knowledge", self.inner.put_knowledge(tenant, knowledge))
            .await
    }

    async fn get_knowledge(&self, tenant: &TenantId) -> StoreResult<Option<Knowledge>> {
        self.timed("get_knowledge", self.inner.get_knowledge(tenant))
            .await
    }

    async fn ingest(
        &self,
        tenant: &TenantId,
        items: Vec<IngestItem>,
        now: Timestamp,
    ) -> StoreResult<Vec<IngestOutcome>> {
        self.timed("ingest", self.inner.ingest(tenant, items, now))
            .await
    }

    async fn pending_inbox(&self) -> StoreResult<Vec<InboxEntry>> {
        self.timed("pending_inbox", self.inner.pending_inbox())
            .await
    }

    async fn load_conversation(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
    ) -> StoreResult<Option<Conversation>> {
        self.timed(
            "load_conversation",
            self.inner.load_conversation(tenant, contact),
        )
        .await
    }

    async fn commit(&self, commit: ConversationCommit) -> StoreResult<Vec<OutboxItem>> {
        self.timed("commit", self.inner.commit(commit)).await
    }

    async fn list_conversations(
        &self,
        tenant: &TenantId,
        state: Option<ConversationState>,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Conversation>> {
        self.timed(
            "list_conversations",
            self.inner.list_conversations(tenant, state, limit, cursor),
        )
        .await
    }

    async fn history(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
        limit: usize,
        before: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.timed(
            "history",
            self.inner.history(tenant, contact, limit, before, now),
        )
        .await
    }

    async fn due_deadlines(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<DueDeadline>> {
        self.timed("due_deadlines", self.inner.due_deadlines(now, limit))
            .await
    }

    async fn erase_contact(&self, tenant: &TenantId, contact: &ContactId) -> StoreResult<()> {
        self.timed("erase_contact", self.inner.erase_contact(tenant, contact))
            .await
    }

    async fn state_counts(&self) -> StoreResult<Vec<(TenantId, ConversationState, u64)>> {
        self.timed("state_counts", self.inner.state_counts()).await
    }

    async fn pending_outbox(&self) -> StoreResult<Vec<OutboxItem>> {
        self.timed("pending_outbox", self.inner.pending_outbox())
            .await
    }

    async fn outbox_sent(
        &self,
        seq: u64,
        provider_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<()> {
        self.timed("outbox_sent", self.inner.outbox_sent(seq, provider_id, now))
            .await
    }

    async fn outbox_failed(&self, seq: u64, error: &str, now: Timestamp) -> StoreResult<()> {
        self.timed("outbox_failed", self.inner.outbox_failed(seq, error, now))
            .await
    }

    async fn record_delivery(
        &self,
        tenant: &TenantId,
        provider_id: &str,
        status: DeliveryStatus,
    ) -> StoreResult<Option<DeliveryUpdate>> {
        self.timed(
            "record_delivery",
            self.inner.record_delivery(tenant, provider_id, status),
        )
        .await
    }

    async fn amend_message(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
        provider_id: &str,
        amendment: &engine::message::Amendment,
        now: Timestamp,
    ) -> StoreResult<Option<StoredMessage>> {
        self.timed(
            "amend_message",
            self.inner
                .amend_message(tenant, contact, provider_id, amendment, now),
        )
        .await
    }

    async fn is_own_message(&self, tenant: &TenantId, provider_id: &str) -> StoreResult<bool> {
        self.timed(
            "is_own_message",
            self.inner.is_own_message(tenant, provider_id),
        )
        .await
    }

    async fn sweep(&self, now: Timestamp, dedupe_before: Timestamp) -> StoreResult<SweepReport> {
        self.timed("sweep", self.inner.sweep(now, dedupe_before))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::testsuite::MemoryStore;
    use prometheus::Registry;

    #[tokio::test]
    async fn every_call_is_timed_and_failures_are_counted_by_kind() {
        let registry = Registry::new();
        let metrics = crate::metrics::GatewayMetrics::new(&registry).unwrap();
        let store = InstrumentedStore::wrap(Arc::new(MemoryStore::new()), &metrics);
        let id = TenantId::parse("acme").unwrap();
        assert!(store.get_tenant(&id).await.unwrap().is_none());
        assert!(
            store
                .update_tenant(&engine::testsuite::tenant("acme"))
                .await
                .is_err()
        );
        let backend = store.backend();
        let timed = metrics
            .store_seconds
            .with_label_values(&[backend, "get_tenant"]);
        assert_eq!(timed.get_sample_count(), 1);
        assert_eq!(
            metrics
                .store_errors
                .with_label_values(&[backend, "update_tenant", "not_found"])
                .get(),
            1
        );
    }
}
