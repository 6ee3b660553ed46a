//! The embedded store: SQLite (bundled) in WAL mode in one file, `conversa.db`, under the data
//! directory. It is the default store on one machine and implements every method of
//! [`engine::ports::Store`].
//!
//! Writes go to one writer thread that commits them in groups ([`writer`]); reads run on a pool
//! of read-only connections on the blocking pool ([`reader`]). Neither blocks the async runtime.

mod command;
mod error;
mod migration;
mod query;
mod reader;
mod row;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use engine::conversation::{Conversation, ConversationState};
use engine::message::{
    Amendment, DeliveryStatus, InboxEntry, IngestItem, IngestOutcome, OutboxItem, StoredMessage,
};
use engine::ports::{
    ConversationCommit, DeliveryUpdate, DueDeadline, Knowledge, Page, Store, StoreResult,
    SweepReport,
};
use engine::tenant::Tenant;
use engine::{ContactId, EngineError, TenantId, Timestamp};
use rusqlite::Connection;

use self::error::DbResult;
use self::reader::ReaderPool;
use self::writer::Writer;

/// The database file inside the data directory.
pub const DB_FILE: &str = "conversa.db";

/// How far a commit is pushed to disk before the caller hears that it is stored.
///
/// Both survive a crash or kill of the process: with WAL, a committed transaction is in the
/// operating system's cache before `COMMIT` returns. They differ on power loss and OS crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced at every commit, so a write that was acknowledged
    /// (a webhook answered `200`, which the provider will never resend) also survives power loss.
    /// Group commit makes this affordable: one fsync covers every write of a group. The default.
    #[default]
    Full,
    /// `synchronous=NORMAL`: the WAL is fsynced only at checkpoints. A power loss or OS crash may
    /// roll back the last transactions; the file is never corrupted. For disks with slow fsync.
    Normal,
}

/// The embedded store. Cheap to clone: clones share the writer thread and the read pool. When the
/// last clone is dropped, the writer finishes the writes already queued and stops, and the drop
/// waits for it (a few milliseconds), so the directory can be opened again at once.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    writer: Arc<Writer>,
    readers: Arc<ReaderPool>,
    path: Arc<PathBuf>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) `dir/conversa.db` with [`Durability::Full`], migrating its schema.
    pub async fn open(dir: &Path) -> Result<EmbeddedStore, EngineError> {
        Self::open_with(dir, Durability::default()).await
    }

    /// Opens (creating if needed) `dir/conversa.db`, migrating its schema.
    pub async fn open_with(
        dir: &Path,
        durability: Durability,
    ) -> Result<EmbeddedStore, EngineError> {
        let dir = dir.to_path_buf();
        let path = dir.join(DB_FILE);
        let writer_path = path.clone();
        // The directory, the file, the pragmas and the migrations are all set up on the writer
        // thread: nothing here blocks the runtime.
        let writer = Writer::start(move || {
            std::fs::create_dir_all(&dir).map_err(|e| {
                EngineError::Unavailable(format!(
                    "cannot create the data directory {}: {e}",
                    dir.display()
                ))
            })?;
            open_writer(&writer_path, durability)
        })
        .await?;
        tracing::info!(path = %path.display(), ?durability, "embedded store open");
        Ok(EmbeddedStore {
            writer: Arc::new(writer),
            readers: Arc::new(ReaderPool::new(path.clone())),
            path: Arc::new(path),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.writer.run(op).await
    }

    async fn read<T, F>(&self, op: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.readers.run(op).await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    /// Checks both paths: a read on the pool and a (no-op) write through the writer thread.
    async fn health(&self) -> StoreResult<()> {
        self.read(query::ping).await?;
        self.write(|_conn| Ok(())).await
    }

    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        let id = tenant.id.clone();
        let body = to_json(tenant)?;
        self.write(move |conn| command::create_tenant(conn, &id, &body))
            .await
    }

    async fn get_tenant(&self, id: &TenantId) -> StoreResult<Option<Tenant>> {
        let id = id.clone();
        self.read(move |conn| query::get_tenant(conn, &id)).await
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.read(query::list_tenants).await
    }

    async fn update_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        let id = tenant.id.clone();
        let body = to_json(tenant)?;
        self.write(move |conn| command::update_tenant(conn, &id, &body))
            .await
    }

    async fn delete_tenant(&self, id: &TenantId) -> StoreResult<bool> {
        let id = id.clone();
        self.write(move |conn| command::delete_tenant(conn, &id))
            .await
    }

    async fn put_knowledge(&self, tenant: &TenantId, knowledge: &Knowledge) -> StoreResult<()> {
        let tenant = tenant.clone();
        let text = knowledge.text.clone();
        let chunks = to_json(&knowledge.chunks)?;
        let updated_at = knowledge.updated_at;
        self.write(move |conn| command::put_knowledge(conn, &tenant, &text, &chunks, updated_at))
            .await
    }

    async fn get_knowledge(&self, tenant: &TenantId) -> StoreResult<Option<Knowledge>> {
        let tenant = tenant.clone();
        self.read(move |conn| query::get_knowledge(conn, &tenant))
            .await
    }

    async fn ingest(
        &self,
        tenant: &TenantId,
        items: Vec<IngestItem>,
        now: Timestamp,
    ) -> StoreResult<Vec<IngestOutcome>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = tenant.clone();
        self.write(move |conn| command::ingest(conn, &tenant, items, now))
            .await
    }

    async fn pending_inbox(&self) -> StoreResult<Vec<InboxEntry>> {
        self.read(query::pending_inbox).await
    }

    async fn load_conversation(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
    ) -> StoreResult<Option<Conversation>> {
        let (tenant, contact) = (tenant.clone(), contact.clone());
        self.read(move |conn| query::load_conversation(conn, &tenant, &contact))
            .await
    }

    async fn commit(&self, commit: ConversationCommit) -> StoreResult<Vec<OutboxItem>> {
        self.write(move |conn| command::commit(conn, commit)).await
    }

    async fn list_conversations(
        &self,
        tenant: &TenantId,
        state: Option<ConversationState>,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Conversation>> {
        let after = cursor.map(parse_cursor).transpose()?;
        let tenant = tenant.clone();
        self.read(move |conn| query::list_conversations(conn, &tenant, state, limit, after))
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
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (tenant, contact) = (tenant.clone(), contact.clone());
        self.read(move |conn| query::history(conn, &tenant, &contact, limit, before, now))
            .await
    }

    async fn due_deadlines(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<DueDeadline>> {
        self.read(move |conn| query::due_deadlines(conn, now, limit))
            .await
    }

    async fn erase_contact(&self, tenant: &TenantId, contact: &ContactId) -> StoreResult<()> {
        let (tenant, contact) = (tenant.clone(), contact.clone());
        self.write(move |conn| command::erase_contact(conn, &tenant, &contact))
            .await
    }

    async fn state_counts(&self) -> StoreResult<Vec<(TenantId, ConversationState, u64)>> {
        self.read(query::state_counts).await
    }

    async fn pending_outbox(&self) -> StoreResult<Vec<OutboxItem>> {
        self.read(query::pending_outbox).await
    }

    async fn outbox_sent(
        &self,
        seq: u64,
        provider_id: Option<&str>,
        _now: Timestamp,
    ) -> StoreResult<()> {
        let provider_id = provider_id.map(str::to_owned);
        self.write(move |conn| command::outbox_sent(conn, seq, provider_id.as_deref()))
            .await
    }

    async fn outbox_failed(&self, seq: u64, error: &str, _now: Timestamp) -> StoreResult<()> {
        let error = error.to_owned();
        self.write(move |conn| command::outbox_failed(conn, seq, &error))
            .await
    }

    async fn record_delivery(
        &self,
        tenant: &TenantId,
        provider_id: &str,
        status: DeliveryStatus,
    ) -> StoreResult<Option<DeliveryUpdate>> {
        let (tenant, provider_id) = (tenant.clone(), provider_id.to_owned());
        self.write(move |conn| command::record_delivery(conn, &tenant, &provider_id, status))
            .await
    }

    async fn amend_message(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
        provider_id: &str,
        amendment: &Amendment,
        now: Timestamp,
    ) -> StoreResult<Option<StoredMessage>> {
        let (tenant, contact, provider_id, amendment) = (
            tenant.clone(),
            contact.clone(),
            provider_id.to_owned(),
            amendment.clone(),
        );
        self.write(move |conn| {
            command::amend_message(conn, &tenant, &contact, &provider_id, &amendment, now)
        })
        .await
    }

    async fn is_own_message(&self, tenant: &TenantId, provider_id: &str) -> StoreResult<bool> {
        let (tenant, provider_id) = (tenant.clone(), provider_id.to_owned());
        self.read(move |conn| query::is_own_message(conn, &tenant, &provider_id))
            .await
    }

    /// Sweeps in steps of a few thousand rows per table, each step its own write, so a large
    /// sweep lets the webhooks' writes through between steps. A sweep that fails halfway has
    /// removed only rows it had to remove; the next one finishes the job.
    async fn sweep(&self, now: Timestamp, dedupe_before: Timestamp) -> StoreResult<SweepReport> {
        let mut report = SweepReport::default();
        let mut outbox_entries = 0u64;
        loop {
            let step = self
                .write(move |conn| command::sweep_step(conn, now, dedupe_before))
                .await?;
            report.messages += step.report.messages;
            report.dedupe_keys += step.report.dedupe_keys;
            report.inbox_entries += step.report.inbox_entries;
            outbox_entries += step.outbox_entries;
            if !step.more() {
                break;
            }
        }
        tracing::debug!(
            messages = report.messages,
            dedupe_keys = report.dedupe_keys,
            inbox_entries = report.inbox_entries,
            outbox_entries,
            "embedded store swept"
        );
        Ok(report)
    }
}

/// Opens the write connection: WAL, the chosen durability, a busy timeout, the schema.
fn open_writer(path: &Path, durability: Durability) -> DbResult<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let journal_mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(EngineError::Unavailable(format!(
            "{} cannot use write-ahead logging (journal_mode is {journal_mode})",
            path.display()
        ))
        .into());
    }
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    // Keep the WAL file from growing without bound after bursts (bytes kept after a checkpoint).
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    conn.pragma_update(None, "cache_size", -16 * 1024)?;
    conn.set_prepared_statement_cache_capacity(64);
    migration::migrate(&mut conn)?;
    Ok(conn)
}

/// Parses a conversation cursor `activity_millis:contact` (the format every store uses).
fn parse_cursor(cursor: &str) -> StoreResult<(i64, String)> {
    let malformed = || EngineError::invalid("cursor", "malformed cursor");
    let (millis, contact) = cursor.split_once(':').ok_or_else(malformed)?;
    let millis = millis.parse().map_err(|_| malformed())?;
    Ok((millis, contact.to_owned()))
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| EngineError::Internal(format!("cannot serialise for the store: {e}")))
}
