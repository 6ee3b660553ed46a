//! The ScyllaDB store: history with TTL, conversation state and the durable inbox and outbox in a
//! ScyllaDB (or Cassandra) cluster, behind the same [`Store`] port as the embedded store and held
//! to the same conformance suite. The tables are in `schema/cql/` (applied by `conversa migrate`,
//! see [`crate::migrate`]), each documented with its partition key and the query it exists for.
//!
//! Every request is a prepared statement ([`statements`]) sent through a token-aware policy at
//! `LOCAL_QUORUM` (a setting), with a client-side timeout and the driver's default retry policy
//! for idempotent statements. The session is created lazily, at the first request: the store can be
//! built while the cluster is down, and [`Store::health`] (`/ready`) says why it cannot connect.
//!
//! ScyllaDB has no multi-partition transactions, so each write of the port is made safe another
//! way (the details are in [`write`]):
//! - ingest: the dedupe row (a lightweight transaction) is the gate and remembers the seq and time
//!   the message was recorded under; history, inbox and conversation writes are idempotent and
//!   keyed by them; the row is marked done last. A retry after a failure rewrites the same rows, so
//!   nothing is lost and nothing is recorded twice;
//! - conversation records change only by compare-and-set on a version, so concurrent ingests and
//!   commits never undo each other (`last_message_at` never moves back); the listings and the
//!   deadline index follow the record and are re-checked against it when read;
//! - a commit's effects (history, outbox, inbox entries done) go in one logged batch after the
//!   record's compare-and-set.

mod conversation;
mod keys;
mod maintenance;
mod read;
mod rows;
mod statements;
mod write;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use futures_util::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::DefaultRetryPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::CqlValue;
use tokio::sync::OnceCell;

use self::keys::{BucketKind, SeqGen};
use self::statements::Statements;

/// How the store reaches the cluster. Every field has a default but `nodes`.
#[derive(Debug, Clone)]
pub struct ScyllaSettings {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// Consistency of every read and write.
    pub consistency: Consistency,
    /// Consistency of the Paxos phase of lightweight transactions.
    pub serial_consistency: SerialConsistency,
    /// The local datacenter: replicas there are preferred and no request fails over to another.
    pub local_datacenter: Option<String>,
    /// Client-side timeout of one request (all its retries included).
    pub request_timeout: Duration,
    /// Timeout of opening a connection; connecting the session is bounded by twice this.
    pub connect_timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    /// How long dedupe keys live on disk (the engine sweeps them after `dedupe_for`; this is a
    /// little longer).
    pub dedupe_ttl: Duration,
    /// How long a history row stays on disk after it expired (reads hide it at once); 60 s.
    pub ttl_grace: Duration,
    /// Rows per page of every paged read.
    pub page_size: i32,
    /// Requests one store call keeps in flight at most.
    pub concurrency: usize,
}

impl ScyllaSettings {
    pub fn new(nodes: Vec<String>, keyspace: impl Into<String>) -> Self {
        Self {
            nodes,
            keyspace: keyspace.into(),
            consistency: Consistency::LocalQuorum,
            serial_consistency: SerialConsistency::LocalSerial,
            local_datacenter: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            username: None,
            password: None,
            dedupe_ttl: Duration::from_secs(8 * 24 * 3600),
            ttl_grace: Duration::from_secs(60),
            page_size: 1000,
            concurrency: 64,
        }
    }
}

/// Parses a consistency level as CQL spells it (`LOCAL_QUORUM`, `QUORUM`, `ONE`, …). `ANY` and
/// `EACH_QUORUM` are refused: the one level serves reads too, and servers refuse reads at them.
pub fn parse_consistency(value: &str) -> Option<Consistency> {
    Some(match value.to_ascii_uppercase().as_str() {
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => return None,
    })
}

/// Connects a session with the store's policies: token-aware load balancing (preferring the
/// local datacenter when set), the default retry policy, client-side monotonic timestamps (so a
/// write after a delete from the same process always wins), and the request timeout.
/// `with_keyspace`: bind the session to the keyspace (the store) or not (migrations).
pub async fn connect(settings: &ScyllaSettings, with_keyspace: bool) -> Result<Session, String> {
    if settings.nodes.is_empty() {
        return Err("no ScyllaDB node configured".into());
    }
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &settings.local_datacenter {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(settings.consistency)
        .serial_consistency(Some(settings.serial_consistency))
        .request_timeout(Some(settings.request_timeout))
        .load_balancing_policy(policy.build())
        .retry_policy(Arc::new(DefaultRetryPolicy::new()))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&settings.nodes)
        .connection_timeout(settings.connect_timeout)
        .default_execution_profile_handle(profile.into_handle())
        .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()));
    if with_keyspace {
        builder = builder.use_keyspace(&settings.keyspace, false);
    }
    if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
        builder = builder.user(user, password);
    }
    let nodes = settings.nodes.join(",");
    match tokio::time::timeout(settings.connect_timeout * 2, builder.build()).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(e)) => Err(format!("cannot connect to ScyllaDB at {nodes}: {e}")),
        Err(_) => Err(format!(
            "cannot connect to ScyllaDB at {nodes}: no answer within {:?}",
            settings.connect_timeout * 2
        )),
    }
}

/// The ScyllaDB store. Cheap to clone; clones share the session.
#[derive(Debug, Clone)]
pub struct ScyllaStore {
    inner: Arc<Lazy>,
}

#[derive(Debug)]
struct Lazy {
    settings: ScyllaSettings,
    db: OnceCell<Arc<Db>>,
    /// The last failed connection attempt: callers within [`RECONNECT_BACKOFF`] get its error
    /// instead of a new attempt each.
    last_failure: Mutex<Option<(Instant, String)>>,
}

/// How long after a failed connection attempt the next one is made.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(2);

/// The connected part of the store.
#[derive(Debug)]
pub(crate) struct Db {
    pub(crate) session: Session,
    pub(crate) st: Statements,
    /// `conv_get` at the serial consistency: re-reads after a failed compare-and-set see the
    /// outcome of any Paxos round in progress.
    pub(crate) conv_get_serial: PreparedStatement,
    pub(crate) seqs: SeqGen,
    pub(crate) settings: ScyllaSettings,
    /// Time buckets this process has registered in `time_buckets` (written once each).
    registered: Mutex<HashSet<(BucketKind, String, i64)>>,
}

impl ScyllaStore {
    /// Makes the store without connecting: the session is opened by the first request.
    pub fn new(settings: ScyllaSettings) -> Self {
        Self {
            inner: Arc::new(Lazy {
                settings,
                db: OnceCell::new(),
                last_failure: Mutex::new(None),
            }),
        }
    }

    /// Makes the store and connects it now (tests, and callers that want to fail fast).
    pub async fn connect(settings: ScyllaSettings) -> StoreResult<Self> {
        let store = Self::new(settings);
        store.db().await?;
        Ok(store)
    }

    pub fn settings(&self) -> &ScyllaSettings {
        &self.inner.settings
    }

    async fn db(&self) -> StoreResult<&Db> {
        if let Some(db) = self.inner.db.get() {
            return Ok(db);
        }
        if let Some((at, error)) = self
            .inner
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && at.elapsed() < RECONNECT_BACKOFF
        {
            return Err(EngineError::Unavailable(error.clone()));
        }
        let result = self
            .inner
            .db
            .get_or_try_init(|| Db::open(&self.inner.settings))
            .await;
        match result {
            Ok(db) => Ok(db),
            Err(error) => {
                tracing::warn!(error = %error, "scylla store unavailable");
                *self
                    .inner
                    .last_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), error.clone()));
                Err(EngineError::Unavailable(error))
            }
        }
    }
}

impl Db {
    async fn open(settings: &ScyllaSettings) -> Result<Arc<Db>, String> {
        let session = connect(settings, true).await?;
        let st = Statements::prepare(
            &session,
            settings.consistency,
            settings.serial_consistency,
            settings.page_size,
        )
        .await
        .map_err(|e| {
            format!(
                "cannot prepare the store's statements in keyspace {} (has `conversa migrate` run?): {e}",
                settings.keyspace
            )
        })?;
        let mut conv_get_serial = st.conv_get.clone();
        conv_get_serial.set_consistency(match settings.serial_consistency {
            SerialConsistency::Serial => Consistency::Serial,
            SerialConsistency::LocalSerial => Consistency::LocalSerial,
        });
        tracing::info!(nodes = ?settings.nodes, keyspace = %settings.keyspace, "scylla store connected");
        Ok(Arc::new(Db {
            session,
            st,
            conv_get_serial,
            seqs: SeqGen::new(),
            settings: settings.clone(),
            registered: Mutex::new(HashSet::new()),
        }))
    }

    /// Runs a statement, unpaged.
    pub(crate) async fn exec(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<QueryResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| unavailable(statement, e))
    }

    /// Every row of a statement, through all pages. For reads bounded by their partition.
    pub(crate) async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + 'static,
    {
        let pager = self
            .session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(|e| unavailable(statement, e))?;
        pager
            .rows_stream::<R>()
            .map_err(|e| unavailable(statement, e))?
            .try_collect()
            .await
            .map_err(|e| unavailable(statement, e))
    }

    /// The first row of a statement, if any.
    pub(crate) async fn first<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<Option<R>>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let result = self.exec(statement, values).await?;
        let rows = result
            .into_rows_result()
            .map_err(|e| unavailable(statement, e))?;
        rows.maybe_first_row::<R>()
            .map_err(|e| unavailable(statement, e))
    }

    /// Runs a lightweight transaction: whether it applied, and the current value of `column`
    /// when it did not.
    pub(crate) async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<bool> {
        let result = self.exec(statement, values).await?;
        lwt_outcome(result, "[applied]")
            .map(|(applied, _)| applied)
            .map_err(|e| unavailable(statement, e))
    }

    /// Notes that `bucket` of `kind` (for `scope`) may hold rows: once per process for the current
    /// and future buckets, at every write for past ones (another node's sweep may have removed a
    /// past bucket this process still remembers, and a retried write can land there).
    pub(crate) async fn register_bucket(
        &self,
        kind: BucketKind,
        scope: &str,
        bucket: i64,
    ) -> StoreResult<()> {
        let now = keys::wall_clock_ms();
        let current = match kind {
            BucketKind::Inbox | BucketKind::Outbox | BucketKind::Deadline => keys::hour_of(now),
            BucketKind::Expiry | BucketKind::Dedupe | BucketKind::Activity => {
                i64::from(keys::day_of(now))
            }
        };
        let key = (kind, scope.to_owned(), bucket);
        let cacheable = bucket >= current;
        if cacheable
            && self
                .registered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&key)
        {
            return Ok(());
        }
        self.exec(&self.st.bucket_insert, (kind.as_str(), scope, bucket))
            .await?;
        if cacheable {
            self.registered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key);
        }
        Ok(())
    }

    /// Forgets a bucket the sweep removed, so this process registers it again if it writes there.
    pub(crate) fn forget_bucket(&self, kind: BucketKind, scope: &str, bucket: i64) {
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(kind, scope.to_owned(), bucket));
    }

    /// The buckets of `kind` for `scope`, ascending.
    pub(crate) async fn buckets(&self, kind: BucketKind, scope: &str) -> StoreResult<Vec<i64>> {
        let rows: Vec<(i64,)> = self
            .rows(&self.st.bucket_list, (kind.as_str(), scope))
            .await?;
        Ok(rows.into_iter().map(|(bucket,)| bucket).collect())
    }
}

/// Reads the outcome of a lightweight transaction: `[applied]`, and the current value of
/// `column` when the condition failed (when the cluster returns it).
pub fn lwt_outcome(result: QueryResult, column: &str) -> Result<(bool, Option<CqlValue>), String> {
    let rows = result.into_rows_result().map_err(|e| e.to_string())?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|spec| spec.name().to_owned())
        .collect();
    let Some(row) = rows
        .maybe_first_row::<scylla::value::Row>()
        .map_err(|e| e.to_string())?
    else {
        return Err("a lightweight transaction returned no row".into());
    };
    let mut applied = None;
    let mut value = None;
    for (name, cell) in names.iter().zip(row.columns) {
        if name == "[applied]" {
            applied = cell.as_ref().and_then(CqlValue::as_boolean);
        } else if name == column {
            value = cell;
        }
    }
    applied
        .map(|applied| (applied, value))
        .ok_or_else(|| "a lightweight transaction returned no [applied] column".into())
}

/// A failed request: the cluster is unreachable, overloaded or timed out, or a row could not be
/// read. The caller may retry (webhooks answer 503).
fn unavailable(statement: &PreparedStatement, error: impl std::fmt::Display) -> EngineError {
    let table = statement.get_table_name().unwrap_or("system");
    EngineError::Unavailable(format!("scylla ({table}): {error}"))
}

/// Runs futures with at most `limit` in flight; results in the order of `futures`. (Boxing the
/// futures first keeps their borrowing closures out of the caller's future, whose `Send`-ness the
/// compiler could not prove otherwise.)
pub(crate) async fn in_order<'a, T: Send + 'a>(
    futures: Vec<futures_util::future::BoxFuture<'a, StoreResult<T>>>,
    limit: usize,
) -> StoreResult<Vec<T>> {
    use futures_util::StreamExt;
    futures_util::stream::iter(futures)
        .buffered(limit.max(1))
        .try_collect()
        .await
}

/// Boxes futures for [`in_order`], consuming the iterator (and its closures) right away.
pub(crate) fn boxed_all<'a, T, F>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<futures_util::future::BoxFuture<'a, StoreResult<T>>>
where
    F: std::future::Future<Output = StoreResult<T>> + Send + 'a,
{
    use futures_util::FutureExt;
    futures.into_iter().map(FutureExt::boxed).collect()
}

/// Serialises for a JSON column.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| EngineError::Internal(format!("cannot serialise for the store: {e}")))
}

#[async_trait]
impl Store for ScyllaStore {
    fn backend(&self) -> &'static str {
        "scylla"
    }

    async fn health(&self) -> StoreResult<()> {
        let db = self.db().await?;
        db.exec(&db.st.health, ()).await.map(drop)
    }

    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        let db = self.db().await?;
        let body = to_json(tenant)?;
        if db
            .lwt(&db.st.tenant_insert, (tenant.id.as_str(), body))
            .await?
        {
            Ok(())
        } else {
            Err(EngineError::Conflict(format!(
                "tenant {} exists",
                tenant.id
            )))
        }
    }

    async fn get_tenant(&self, id: &TenantId) -> StoreResult<Option<Tenant>> {
        let db = self.db().await?;
        let row: Option<(Option<String>,)> = db.first(&db.st.tenant_get, (id.as_str(),)).await?;
        row.and_then(|(body,)| body)
            .map(|body| rows::tenant(&body))
            .transpose()
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        let db = self.db().await?;
        let bodies: Vec<(Option<String>,)> = db.rows(&db.st.tenant_list, ()).await?;
        let mut tenants = bodies
            .into_iter()
            .filter_map(|(body,)| body)
            .map(|body| rows::tenant(&body))
            .collect::<StoreResult<Vec<Tenant>>>()?;
        tenants.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(tenants)
    }

    async fn update_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        let db = self.db().await?;
        let body = to_json(tenant)?;
        if db
            .lwt(&db.st.tenant_update, (body, tenant.id.as_str()))
            .await?
        {
            Ok(())
        } else {
            Err(EngineError::not_found(format!("tenant {}", tenant.id)))
        }
    }

    async fn delete_tenant(&self, id: &TenantId) -> StoreResult<bool> {
        maintenance::delete_tenant(self.db().await?, id).await
    }

    async fn put_knowledge(&self, tenant: &TenantId, knowledge: &Knowledge) -> StoreResult<()> {
        write::put_knowledge(self.db().await?, tenant, knowledge).await
    }

    async fn get_knowledge(&self, tenant: &TenantId) -> StoreResult<Option<Knowledge>> {
        read::get_knowledge(self.db().await?, tenant).await
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
        write::ingest(self.db().await?, tenant, items, now).await
    }

    async fn pending_inbox(&self) -> StoreResult<Vec<InboxEntry>> {
        read::pending_inbox(self.db().await?).await
    }

    async fn load_conversation(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
    ) -> StoreResult<Option<Conversation>> {
        let db = self.db().await?;
        Ok(conversation::load(db, tenant, contact, false)
            .await?
            .map(|record| record.conversation))
    }

    async fn commit(&self, commit: ConversationCommit) -> StoreResult<Vec<OutboxItem>> {
        write::commit(self.db().await?, commit).await
    }

    async fn list_conversations(
        &self,
        tenant: &TenantId,
        state: Option<ConversationState>,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Conversation>> {
        let after = cursor.map(read::parse_cursor).transpose()?;
        read::list_conversations(self.db().await?, tenant, state, limit, after).await
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
        read::history(self.db().await?, tenant, contact, limit, before, now).await
    }

    async fn due_deadlines(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<DueDeadline>> {
        read::due_deadlines(self.db().await?, now, limit).await
    }

    async fn erase_contact(&self, tenant: &TenantId, contact: &ContactId) -> StoreResult<()> {
        maintenance::erase_contact(self.db().await?, tenant, contact).await
    }

    async fn state_counts(&self) -> StoreResult<Vec<(TenantId, ConversationState, u64)>> {
        read::state_counts(self.db().await?).await
    }

    async fn pending_outbox(&self) -> StoreResult<Vec<OutboxItem>> {
        read::pending_outbox(self.db().await?).await
    }

    async fn outbox_sent(
        &self,
        seq: u64,
        provider_id: Option<&str>,
        _now: Timestamp,
    ) -> StoreResult<()> {
        write::outbox_finished(self.db().await?, seq, Ok(provider_id)).await
    }

    async fn outbox_failed(&self, seq: u64, error: &str, _now: Timestamp) -> StoreResult<()> {
        write::outbox_finished(self.db().await?, seq, Err(error)).await
    }

    async fn record_delivery(
        &self,
        tenant: &TenantId,
        provider_id: &str,
        status: DeliveryStatus,
    ) -> StoreResult<Option<DeliveryUpdate>> {
        write::record_delivery(self.db().await?, tenant, provider_id, status).await
    }

    async fn amend_message(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
        provider_id: &str,
        amendment: &engine::message::Amendment,
        now: Timestamp,
    ) -> StoreResult<Option<StoredMessage>> {
        write::amend_message(
            self.db().await?,
            tenant,
            contact,
            provider_id,
            amendment,
            now,
        )
        .await
    }

    async fn is_own_message(&self, tenant: &TenantId, provider_id: &str) -> StoreResult<bool> {
        read::is_own_message(self.db().await?, tenant, provider_id).await
    }

    async fn sweep(&self, now: Timestamp, dedupe_before: Timestamp) -> StoreResult<SweepReport> {
        maintenance::sweep(self.db().await?, now, dedupe_before).await
    }
}
