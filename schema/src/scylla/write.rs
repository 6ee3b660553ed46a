//! The writes: ingest, commit, knowledge, the outbox's outcomes and delivery statuses.
//!
//! **Ingest** never loses or doubles a message, without a multi-partition transaction:
//! 1. each new dedupe key is claimed with `INSERT … IF NOT EXISTS` (the authoritative gate), and
//!    the row records the seq and time the message is stored under;
//! 2. the history row, the inbox entry, the expiry and dedupe indexes and the conversation record
//!    are written; every one of them is keyed by that seq and time, so writing it again is
//!    harmless;
//! 3. the dedupe row is marked done.
//!
//! A delivery whose key is claimed but not done finds the claim's seq and time and writes the same
//! rows again: after a failure (the provider retries a 503), the retry finishes the job and is
//! answered as recorded, so its inbox entry is dispatched; while the first delivery is still in
//! flight (claimed less than [`IN_FLIGHT`] ago), the second also finishes the job but is answered
//! as a duplicate, so exactly one delivery is recorded. A duplicate of a finished key writes
//! nothing.
//!
//! **Commit** changes the record by compare-and-set (see [`super::conversation`]), then writes its
//! effects (history rows, outbox entries, inbox entries done) in one logged batch, which ScyllaDB
//! applies entirely or not at all; the batch is idempotent and retried. If it fails for good, the
//! error reaches the conversation actor, whose inbox entries are still pending and are replayed in
//! the new state.
//!
//! Round trips (sequential steps, each made of parallel requests), whatever the number of
//! messages: an ingest call takes 4 (claims with record reads; rows with record compare-and-sets;
//! index moves; done marks), a commit takes 4 (record read; compare-and-set; index moves; the
//! batch with the expiry index), a send's outcome takes 3. Registering a new time bucket adds one,
//! once per bucket and process; a lost compare-and-set race adds two (re-read, retry).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use engine::conversation::Conversation;
use engine::message::{
    AMEND_LOOKBACK_DAYS, Amendment, DeliveryStatus, Direction, InboxEntry, IngestItem,
    IngestOutcome, OutboxItem, StoredMessage,
};
use engine::ports::{ConversationCommit, DeliveryUpdate, Knowledge, StoreResult};
use engine::{ContactId, EngineError, TenantId, Timestamp};
use futures_util::future::try_join_all;
use futures_util::{FutureExt, TryStreamExt};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;

use super::keys::{
    BucketKind, SHARDS, day_of, key_shard, seq_hour, seq_shard, shard_of, stored_seq,
    wall_clock_micros, wall_clock_ms,
};
use super::rows::{self, author_str, direction_str, history_ttl};
use super::{Db, conversation, to_json};

/// A claimed dedupe key younger than this is taken to be in flight in another request.
pub(crate) const IN_FLIGHT: Duration = Duration::from_secs(30);

/// What ingest does with one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// A new key: write under `seq`/`at`, answer recorded.
    Fresh { seq: i64, at: i64 },
    /// Claimed before but never finished: write again under the claim's `seq`/`at`, answer
    /// recorded (the earlier attempt failed).
    Retry { seq: i64, at: i64 },
    /// Claimed moments ago by a delivery still in flight: write again, answer duplicate.
    Redo { seq: i64, at: i64 },
    /// Finished before (or earlier in this call): nothing to write.
    Duplicate,
}

impl Plan {
    fn placement(self) -> Option<(i64, i64)> {
        match self {
            Plan::Fresh { seq, at } | Plan::Retry { seq, at } | Plan::Redo { seq, at } => {
                Some((seq, at))
            }
            Plan::Duplicate => None,
        }
    }
}

pub(crate) async fn ingest(
    db: &Db,
    tenant: &TenantId,
    items: Vec<IngestItem>,
    now: Timestamp,
) -> StoreResult<Vec<IngestOutcome>> {
    if let Some(item) = items.iter().find(|item| &item.message.tenant != tenant) {
        return Err(EngineError::invalid(
            "tenant",
            format!(
                "message {} belongs to tenant {}, not {tenant}",
                item.message.id, item.message.tenant
            ),
        ));
    }
    let t = tenant.as_str();
    let dedupe_ttl = i32::try_from(db.settings.dedupe_ttl.as_secs()).unwrap_or(i32::MAX);

    // Seqs in item order, so inbox entries of one call are ordered as the items are. A key that
    // comes twice in one call is a duplicate the second time.
    let mut first_of_key: HashMap<&str, usize> = HashMap::new();
    let mut proposed: Vec<Option<i64>> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if first_of_key.contains_key(item.dedupe_key.as_str()) {
            proposed.push(None);
        } else {
            first_of_key.insert(&item.dedupe_key, i);
            let shard = shard_of(t, item.message.contact.as_str());
            proposed.push(Some(db.seqs.next(shard)));
        }
    }

    // Step 1: claim every new key; read the records of the contacts involved.
    let claims = super::in_order(
        items
            .iter()
            .zip(&proposed)
            .map(|(item, seq)| {
                let seq = *seq;
                async move {
                    match seq {
                        None => Ok(Plan::Duplicate),
                        Some(seq) => claim(db, t, item, seq, now, dedupe_ttl).await,
                    }
                }
                .boxed()
            })
            .collect(),
        db.settings.concurrency,
    );
    let mut contacts: Vec<&ContactId> = items.iter().map(|i| &i.message.contact).collect();
    contacts.sort();
    contacts.dedup();
    let records = try_join_all(
        contacts
            .iter()
            .map(|contact| conversation::load(db, tenant, contact, false)),
    );
    let (plans, records) = futures_util::try_join!(claims, records)?;

    // Step 2: history, inbox and indexes of every item to write; each contact's record.
    let mut newest: BTreeMap<&ContactId, i64> = BTreeMap::new();
    let mut writes = Vec::new();
    for (item, plan) in items.iter().zip(&plans) {
        let Some((seq, at)) = plan.placement() else {
            continue;
        };
        let newest_at = newest.entry(&item.message.contact).or_insert(at);
        *newest_at = (*newest_at).max(at);
        writes.push(write_ingested(db, item, seq, at, now, dedupe_ttl).boxed());
    }
    for (contact, known) in contacts.iter().zip(records) {
        let Some(&at) = newest.get(contact) else {
            continue;
        };
        writes.push(
            async move {
                conversation::update(db, tenant, contact, Some(known), |current| {
                    note_activity(current, tenant, contact, Timestamp(at), now)
                })
                .await
                .map(drop)
            }
            .boxed(),
        );
    }
    let written = super::in_order(writes, db.settings.concurrency).await;
    if let Err(error) = written {
        release_claims(db, t, &items, &plans, dedupe_ttl).await;
        return Err(error);
    }

    // Step 3: the keys are done.
    let marks = items
        .iter()
        .zip(&plans)
        .filter(|(_, plan)| plan.placement().is_some())
        .map(|(item, _)| {
            db.exec(
                &db.st.dedupe_done,
                (dedupe_ttl, t, item.dedupe_key.as_str()),
            )
            .boxed()
        })
        .collect();
    super::in_order(marks, db.settings.concurrency).await?;

    Ok(items
        .into_iter()
        .zip(plans)
        .map(|(item, plan)| match plan {
            Plan::Fresh { seq, at } | Plan::Retry { seq, at } => {
                IngestOutcome::Recorded(item.inbox.map(|kind| InboxEntry {
                    seq: u64::try_from(seq).unwrap_or_default(),
                    kind,
                    message: StoredMessage {
                        at: Timestamp(at),
                        ..item.message
                    },
                }))
            }
            Plan::Redo { .. } | Plan::Duplicate => IngestOutcome::Duplicate,
        })
        .collect())
}

/// Claims one dedupe key; see the module documentation.
async fn claim(
    db: &Db,
    tenant: &str,
    item: &IngestItem,
    seq: i64,
    now: Timestamp,
    ttl: i32,
) -> StoreResult<Plan> {
    let at = item.message.at.as_millis();
    let result = db
        .exec(
            &db.st.dedupe_claim,
            (
                tenant,
                item.dedupe_key.as_str(),
                seq,
                at,
                now.as_millis(),
                wall_clock_ms(),
                ttl,
            ),
        )
        .await?;
    let row = claim_row(result)?;
    let Some(existing) = row else {
        return Ok(Plan::Fresh { seq, at });
    };
    Ok(match existing {
        Claim { done: true, .. } => Plan::Duplicate,
        Claim {
            seq,
            at,
            claimed_at,
            ..
        } => {
            let age = wall_clock_ms().saturating_sub(claimed_at);
            if u64::try_from(age).unwrap_or(0) < IN_FLIGHT.as_millis() as u64 {
                Plan::Redo { seq, at }
            } else {
                Plan::Retry { seq, at }
            }
        }
    })
}

/// A claim found in place.
#[derive(Debug)]
struct Claim {
    seq: i64,
    at: i64,
    claimed_at: i64,
    done: bool,
}

/// `None` when the claim applied, else the claim already there.
fn claim_row(result: scylla::response::query_result::QueryResult) -> StoreResult<Option<Claim>> {
    let rows = result
        .into_rows_result()
        .map_err(|e| EngineError::Unavailable(format!("scylla (dedupe): {e}")))?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|spec| spec.name().to_owned())
        .collect();
    let row = rows
        .maybe_first_row::<scylla::value::Row>()
        .map_err(|e| EngineError::Unavailable(format!("scylla (dedupe): {e}")))?
        .ok_or_else(|| EngineError::Unavailable("scylla (dedupe): no LWT result".into()))?;
    let mut claim = Claim {
        seq: 0,
        at: 0,
        claimed_at: 0,
        done: false,
    };
    let mut applied = false;
    for (name, cell) in names.iter().zip(row.columns) {
        let bigint = || cell.as_ref().and_then(CqlValue::as_bigint).unwrap_or(0);
        match name.as_str() {
            "[applied]" => applied = cell.as_ref().and_then(CqlValue::as_boolean) == Some(true),
            "seq" => claim.seq = bigint(),
            "at" => claim.at = bigint(),
            "claimed_at" => claim.claimed_at = bigint(),
            "done" => claim.done = cell.as_ref().and_then(CqlValue::as_boolean) == Some(true),
            _ => {}
        }
    }
    if applied {
        Ok(None)
    } else if claim.seq == 0 {
        Err(EngineError::Unavailable(
            "scylla (dedupe): the claim failed without naming the existing one".into(),
        ))
    } else {
        Ok(Some(claim))
    }
}

/// The rows of one ingested message, all keyed by its claim's `seq` and `at`.
async fn write_ingested(
    db: &Db,
    item: &IngestItem,
    seq: i64,
    at: i64,
    now: Timestamp,
    dedupe_ttl: i32,
) -> StoreResult<()> {
    let m = &item.message;
    let (t, c) = (m.tenant.as_str(), m.contact.as_str());
    let ttl = history_ttl(m.expires_at, now, grace(db));
    let message = StoredMessage {
        at: Timestamp(at),
        ..m.clone()
    };
    let mut writes = vec![
        insert_message(db, &message, seq, ttl).boxed(),
        index_expiry(db, &message, seq, ttl).boxed(),
        async move {
            let seen = now.as_millis();
            let day = day_of(seen);
            db.register_bucket(BucketKind::Dedupe, "", i64::from(day))
                .await?;
            db.exec(
                &db.st.dedupe_index_insert,
                (
                    day,
                    key_shard(t, &item.dedupe_key),
                    seen,
                    t,
                    item.dedupe_key.as_str(),
                    dedupe_ttl,
                ),
            )
            .await
            .map(drop)
        }
        .boxed(),
    ];
    if let Some(kind) = item.inbox {
        let body = to_json(&message)?;
        writes.push(
            async move {
                db.register_bucket(BucketKind::Inbox, "", seq_hour(seq))
                    .await?;
                db.exec(
                    &db.st.inbox_insert,
                    (
                        seq_hour(seq),
                        seq_shard(seq),
                        seq,
                        t,
                        c,
                        kind.as_str(),
                        body,
                    ),
                )
                .await
                .map(drop)
            }
            .boxed(),
        );
    }
    try_join_all(writes).await.map(drop)
}

/// The record after an ingest: created in `IA_ATIVA` when missing, `last_message_at` moved
/// forward; `None` when it already says as much.
fn note_activity(
    current: Option<&Conversation>,
    tenant: &TenantId,
    contact: &ContactId,
    at: Timestamp,
    now: Timestamp,
) -> Option<Conversation> {
    match current {
        None => Some(Conversation {
            last_message_at: Some(at),
            ..Conversation::new(tenant.clone(), contact.clone(), now)
        }),
        Some(c) if c.last_message_at.is_some_and(|last| last >= at) => None,
        Some(c) => Some(Conversation {
            last_message_at: Some(at),
            ..c.clone()
        }),
    }
}

/// After a failed ingest, marks its fresh claims as not in flight, so the provider's retry is
/// answered as recorded (and dispatched) rather than as a duplicate. Best effort.
async fn release_claims(db: &Db, tenant: &str, items: &[IngestItem], plans: &[Plan], ttl: i32) {
    for (item, plan) in items.iter().zip(plans) {
        if let Plan::Fresh { .. } | Plan::Retry { .. } = plan {
            let released = db
                .lwt(
                    &db.st.dedupe_release,
                    (ttl, tenant, item.dedupe_key.as_str()),
                )
                .await;
            if let Err(e) = released {
                tracing::warn!(tenant, error = %e, "could not release a dedupe claim; a retry within 30 s is answered as a duplicate and replayed at the next start");
            }
        }
    }
}

async fn insert_message(db: &Db, m: &StoredMessage, seq: i64, ttl: i32) -> StoreResult<()> {
    db.exec(&db.st.message_insert, message_values(m, seq, ttl))
        .await
        .map(drop)
}

#[allow(clippy::type_complexity)]
fn message_values(
    m: &StoredMessage,
    seq: i64,
    ttl: i32,
) -> (
    String,
    String,
    i64,
    i64,
    String,
    &'static str,
    &'static str,
    &'static str,
    String,
    Option<String>,
    Option<&'static str>,
    i64,
    i32,
) {
    (
        m.tenant.as_str().to_owned(),
        m.contact.as_str().to_owned(),
        m.at.as_millis(),
        seq,
        m.id.as_str().to_owned(),
        direction_str(m.direction),
        author_str(m.author),
        m.kind.as_str(),
        m.text.clone(),
        m.provider_id.clone(),
        m.status.map(DeliveryStatus::as_str),
        m.expires_at.as_millis(),
        ttl,
    )
}

async fn index_expiry(db: &Db, m: &StoredMessage, seq: i64, ttl: i32) -> StoreResult<()> {
    let (t, c) = (m.tenant.as_str(), m.contact.as_str());
    let day = day_of(m.expires_at.as_millis());
    db.register_bucket(BucketKind::Expiry, "", i64::from(day))
        .await?;
    db.exec(
        &db.st.expiry_insert,
        (
            day,
            shard_of(t, c),
            m.expires_at.as_millis(),
            t,
            c,
            m.at.as_millis(),
            seq,
            ttl,
        ),
    )
    .await
    .map(drop)
}

pub(crate) async fn commit(db: &Db, commit: ConversationCommit) -> StoreResult<Vec<OutboxItem>> {
    let ConversationCommit {
        conversation: wanted,
        consumed_inbox,
        outbound,
    } = commit;
    if let Some(message) = outbound
        .iter()
        .find(|m| m.tenant != wanted.tenant || m.contact != wanted.contact)
    {
        return Err(EngineError::invalid(
            "outbound",
            format!(
                "message {} belongs to another conversation than {}",
                message.id, wanted.contact
            ),
        ));
    }
    let (tenant, contact) = (&wanted.tenant, &wanted.contact);
    let (t, c) = (tenant.as_str(), contact.as_str());
    let shard = shard_of(t, c);
    let last_outbound_at = outbound.iter().map(|m| m.at).max();

    // The record first: the decision this commit stores.
    conversation::update(db, tenant, contact, None, |current| {
        let stored = current.and_then(|c| c.last_message_at);
        Some(Conversation {
            last_message_at: [stored, wanted.last_message_at, last_outbound_at]
                .into_iter()
                .flatten()
                .max(),
            ..wanted.clone()
        })
    })
    .await?;

    // Then its effects, in one logged batch.
    let seqs: Vec<i64> = outbound.iter().map(|_| db.seqs.next(shard)).collect();
    let mut batch = Batch::new(BatchType::Logged);
    let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = Vec::new();
    for (m, &seq) in outbound.iter().zip(&seqs) {
        batch.append_statement(db.st.message_insert.clone());
        values.push(Box::new(message_values(
            m,
            seq,
            history_ttl(m.expires_at, m.at, grace(db)),
        )));
        batch.append_statement(db.st.outbox_insert.clone());
        values.push(Box::new((
            seq_hour(seq),
            seq_shard(seq),
            seq,
            t.to_owned(),
            c.to_owned(),
            m.id.as_str().to_owned(),
            m.at.as_millis(),
            m.text.clone(),
        )));
    }
    for seq in consumed_inbox.iter().filter_map(|&s| stored_seq(s)) {
        batch.append_statement(db.st.inbox_done.clone());
        values.push(Box::new((seq_hour(seq), seq_shard(seq), seq)));
    }
    // The outbox hour is listed before any entry lands in it (a no-op but once an hour), so the
    // resend at start always finds it.
    try_join_all(
        seqs.iter()
            .map(|&seq| db.register_bucket(BucketKind::Outbox, "", seq_hour(seq))),
    )
    .await?;
    let mut side = Vec::new();
    for (m, &seq) in outbound.iter().zip(&seqs) {
        side.push(index_expiry(db, m, seq, history_ttl(m.expires_at, m.at, grace(db))).boxed());
    }
    batch.set_consistency(db.settings.consistency);
    batch.set_is_idempotent(true);
    let effects = async {
        if values.is_empty() {
            Ok(())
        } else {
            run_batch(db, &batch, &values).await
        }
    };
    futures_util::try_join!(try_join_all(side), effects)?;
    Ok(outbound
        .into_iter()
        .zip(seqs)
        .map(|(m, seq)| OutboxItem {
            seq: u64::try_from(seq).unwrap_or_default(),
            tenant: m.tenant,
            contact: m.contact,
            message_id: m.id,
            text: m.text,
            attempts: 0,
        })
        .collect())
}

/// Runs an idempotent batch, trying again a few times: a batch that timed out after reaching the
/// batchlog is applied anyway, and applying it twice writes the same rows.
async fn run_batch(
    db: &Db,
    batch: &Batch,
    values: &Vec<Box<dyn SerializeRow + Send + Sync>>,
) -> StoreResult<()> {
    const ATTEMPTS: u32 = 3;
    let mut attempt = 0;
    loop {
        match db.session.batch(batch, values).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt + 1 < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "commit batch failed; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            Err(e) => {
                return Err(EngineError::Unavailable(format!(
                    "scylla (commit batch): {e}"
                )));
            }
        }
    }
}

pub(crate) async fn put_knowledge(
    db: &Db,
    tenant: &TenantId,
    knowledge: &Knowledge,
) -> StoreResult<()> {
    let t = tenant.as_str();
    let previous: Option<(Option<String>, Option<i64>, Option<i64>)> =
        db.first(&db.st.knowledge_get, (t,)).await?;
    let previous = previous.and_then(|(_, version, _)| version);
    let version = wall_clock_micros().max(previous.map_or(0, |v| v + 1));
    // The new version's chunks, in batches of one partition each (a few hundred rows at most).
    for chunks in knowledge.chunks.chunks(100) {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            batch.append_statement(db.st.chunk_insert.clone());
            let embedding = chunk.embedding.as_ref();
            values.push((
                t,
                version,
                i32::try_from(chunk.id).unwrap_or(i32::MAX),
                chunk.text.as_str(),
                embedding.map(|e| e.vector.as_slice()),
                embedding.map(|e| e.model.as_str()),
            ));
        }
        batch.set_consistency(db.settings.consistency);
        batch.set_is_idempotent(true);
        db.session
            .batch(&batch, &values)
            .await
            .map_err(|e| EngineError::Unavailable(format!("scylla (knowledge_chunks): {e}")))?;
    }
    // The switch readers see, then the old version goes.
    db.exec(
        &db.st.knowledge_put,
        (
            t,
            knowledge.text.as_str(),
            version,
            knowledge.updated_at.as_millis(),
        ),
    )
    .await?;
    if let Some(old) = previous {
        db.exec(&db.st.chunks_drop, (t, old)).await?;
    }
    Ok(())
}

/// Marks an outbox entry done (`Ok`: sent, with the provider's id when given; `Err`: failed for
/// good) and moves its history row: `sent` unless further along, or `failed`.
pub(crate) async fn outbox_finished(
    db: &Db,
    seq: u64,
    outcome: Result<Option<&str>, &str>,
) -> StoreResult<()> {
    let Some(seq) = stored_seq(seq) else {
        return Ok(());
    };
    let (bucket, shard) = (seq_hour(seq), seq_shard(seq));
    type OutboxRow = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<bool>,
    );
    let entry: Option<OutboxRow> = db.first(&db.st.outbox_get, (bucket, shard, seq)).await?;
    let Some((Some(tenant), Some(contact), Some(message_id), Some(at), _)) = entry else {
        return Ok(());
    };
    let (_, found) = futures_util::try_join!(
        db.exec(&db.st.outbox_finish, (outcome.err(), bucket, shard, seq)),
        load_message(db, &tenant, &contact, at, seq),
    )?;
    let Some(found) = found else {
        return Ok(());
    };
    if found.id != message_id || found.direction != Direction::Out {
        return Ok(());
    }
    match outcome {
        Ok(provider_id) => {
            let status = match found.status {
                Some(s) if !s.advances_to(DeliveryStatus::Sent) => s,
                _ => DeliveryStatus::Sent,
            };
            match provider_id {
                Some(pid) => {
                    futures_util::try_join!(
                        db.exec(
                            &db.st.message_set_sent,
                            (found.ttl, pid, status.as_str(), &tenant, &contact, at, seq),
                        ),
                        db.exec(
                            &db.st.provider_id_insert,
                            (
                                &tenant,
                                pid,
                                &contact,
                                at,
                                seq,
                                found.author.as_str(),
                                found.ttl,
                            ),
                        ),
                    )?;
                }
                None => {
                    db.exec(
                        &db.st.message_set_status,
                        (found.ttl, status.as_str(), &tenant, &contact, at, seq),
                    )
                    .await?;
                }
            }
        }
        Err(_) => {
            db.exec(
                &db.st.message_set_status,
                (
                    found.ttl,
                    DeliveryStatus::Failed.as_str(),
                    &tenant,
                    &contact,
                    at,
                    seq,
                ),
            )
            .await?;
        }
    }
    Ok(())
}

pub(crate) async fn record_delivery(
    db: &Db,
    tenant: &TenantId,
    provider_id: &str,
    status: DeliveryStatus,
) -> StoreResult<Option<DeliveryUpdate>> {
    let t = tenant.as_str();
    let Some(found) = super::read::by_provider_id(db, t, provider_id).await? else {
        return Ok(None);
    };
    let (contact, at, seq, message) = found;
    let current = message.status.unwrap_or(DeliveryStatus::Pending);
    if message.direction != Direction::Out || !current.advances_to(status) {
        return Ok(None);
    }
    db.exec(
        &db.st.message_set_status,
        (message.ttl, status.as_str(), t, contact.as_str(), at, seq),
    )
    .await?;
    Ok(Some(DeliveryUpdate {
        contact: rows::contact_id(&contact)?,
        message_id: engine::MessageId(message.id),
        status,
    }))
}

/// Finds the contact's message with this provider id in the look-back slice of its partition
/// (newest first) and rewrites its text and amendment, keeping the row's expiry.
pub(crate) async fn amend_message(
    db: &Db,
    tenant: &TenantId,
    contact: &engine::ContactId,
    provider_id: &str,
    amendment: &Amendment,
    now: Timestamp,
) -> StoreResult<Option<StoredMessage>> {
    let (t, c) = (tenant.as_str(), contact.as_str());
    let since = now.plus_days(-AMEND_LOOKBACK_DAYS);
    let mut statement = db.st.message_page_since.clone();
    statement.set_page_size(200);
    let mut rows = db
        .session
        .execute_iter(statement, (t, c, since.as_millis()))
        .await
        .map_err(|e| EngineError::Unavailable(format!("scylla (messages): {e}")))?
        .rows_stream::<rows::MessageRow>()
        .map_err(|e| EngineError::Unavailable(format!("scylla (messages): {e}")))?;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| EngineError::Unavailable(format!("scylla (messages): {e}")))?
    {
        let (at, seq) = (row.0, row.1);
        let mut message = rows::message(tenant, contact, row)?;
        if message.provider_id.as_deref() != Some(provider_id) || message.expires_at <= now {
            continue;
        }
        if !message.amend(amendment, now) {
            return Ok(None);
        }
        let ttl = history_ttl(message.expires_at, now, grace(db));
        let amended = message
            .amended
            .map(|a| (a.change.as_str(), a.at.as_millis()));
        db.exec(
            &db.st.message_amend,
            (
                ttl,
                message.text.as_str(),
                amended.map(|a| a.0),
                amended.map(|a| a.1),
                t,
                c,
                at,
                seq,
            ),
        )
        .await?;
        return Ok(Some(message));
    }
    Ok(None)
}

/// What the writes need to know of a history row.
#[derive(Debug)]
pub(crate) struct MessageHead {
    pub(crate) id: String,
    pub(crate) direction: Direction,
    pub(crate) author: String,
    pub(crate) status: Option<DeliveryStatus>,
    /// The row's remaining TTL in seconds (0: none), for updates that must expire with it.
    pub(crate) ttl: i32,
}

pub(crate) async fn load_message(
    db: &Db,
    tenant: &str,
    contact: &str,
    at: i64,
    seq: i64,
) -> StoreResult<Option<MessageHead>> {
    type HeadRow = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i32>,
    );
    let row: Option<HeadRow> = db
        .first(&db.st.message_get, (tenant, contact, at, seq))
        .await?;
    let Some((id, direction, author, status, _expires_at, ttl)) = row else {
        return Ok(None);
    };
    Ok(Some(MessageHead {
        id: id.unwrap_or_default(),
        direction: rows::parse_direction(&direction.unwrap_or_default())?,
        author: author.unwrap_or_default(),
        status: status.as_deref().map(rows::parse_status).transpose()?,
        ttl: ttl.unwrap_or(0),
    }))
}

fn grace(db: &Db) -> i64 {
    i64::try_from(db.settings.ttl_grace.as_secs()).unwrap_or(60)
}

/// The shard count the schema documents.
const _: () = assert!(SHARDS == 16);
