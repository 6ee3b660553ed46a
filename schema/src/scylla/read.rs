//! The reads: knowledge, history, listings, the deadline scan, the inbox and outbox replays, the
//! state counts and provider-id lookups.
//!
//! Every read names its partitions: a bucketed table is read only in the buckets `time_buckets`
//! lists, index rows are re-checked against the records they point to, and no query needs
//! `ALLOW FILTERING`. The only full scans are of `tenants` (one row per tenant) and of the
//! conversations' `(tenant, state)` for the gauge.

use std::collections::{BTreeMap, HashMap};

use engine::conversation::{Conversation, ConversationState};
use engine::knowledge::{Chunk, ChunkEmbedding};
use engine::message::{InboxEntry, InboxKind, OutboxItem, StoredMessage};
use engine::ports::{DueDeadline, Knowledge, Page, StoreResult};
use engine::{ContactId, EngineError, MessageId, TenantId, Timestamp};
use futures_util::TryStreamExt;

use super::Db;
use super::conversation;
use super::keys::{BucketKind, SHARDS, day_of, hour_of};
use super::rows::{self, MessageRow, Record};
use super::write::{MessageHead, load_message};

/// Parses a conversation cursor `activity_millis:contact` (the format every store uses).
pub(crate) fn parse_cursor(cursor: &str) -> StoreResult<(i64, String)> {
    let malformed = || EngineError::invalid("cursor", "malformed cursor");
    let (millis, contact) = cursor.split_once(':').ok_or_else(malformed)?;
    let millis = millis.parse().map_err(|_| malformed())?;
    Ok((millis, contact.to_owned()))
}

fn cursor_of(c: &Conversation) -> String {
    format!("{}:{}", rows::activity(c), c.contact)
}

pub(crate) async fn get_knowledge(db: &Db, tenant: &TenantId) -> StoreResult<Option<Knowledge>> {
    let t = tenant.as_str();
    let row: Option<(Option<String>, Option<i64>, Option<i64>)> =
        db.first(&db.st.knowledge_get, (t,)).await?;
    let Some((text, Some(version), updated_at)) = row else {
        return Ok(None);
    };
    type ChunkRow = (i32, Option<String>, Option<Vec<f32>>, Option<String>);
    let chunks: Vec<ChunkRow> = db.rows(&db.st.chunks_get, (t, version)).await?;
    Ok(Some(Knowledge {
        text: text.unwrap_or_default(),
        chunks: chunks
            .into_iter()
            .map(|(id, text, vector, model)| Chunk {
                id: u32::try_from(id).unwrap_or_default(),
                text: text.unwrap_or_default(),
                embedding: match (vector, model) {
                    (Some(vector), Some(model)) => Some(ChunkEmbedding { model, vector }),
                    _ => None,
                },
            })
            .collect(),
        updated_at: Timestamp(updated_at.unwrap_or(0)),
    }))
}

/// Newest first, strictly before `before`, skipping what expired by `now` (the TTL may not have
/// removed it yet).
pub(crate) async fn history(
    db: &Db,
    tenant: &TenantId,
    contact: &ContactId,
    limit: usize,
    before: Option<Timestamp>,
    now: Timestamp,
) -> StoreResult<Vec<StoredMessage>> {
    let (t, c) = (tenant.as_str(), contact.as_str());
    // Pages a little larger than asked: expired rows are skipped.
    let page_size = i32::try_from(limit.saturating_add(16).min(1000)).unwrap_or(1000);
    let pager = match before {
        None => {
            let mut statement = db.st.message_page.clone();
            statement.set_page_size(page_size);
            db.session.execute_iter(statement, (t, c)).await
        }
        Some(before) => {
            let mut statement = db.st.message_page_before.clone();
            statement.set_page_size(page_size);
            db.session
                .execute_iter(statement, (t, c, before.as_millis()))
                .await
        }
    }
    .map_err(|e| EngineError::Unavailable(format!("scylla (messages): {e}")))?;
    let mut rows = pager
        .rows_stream::<MessageRow>()
        .map_err(|e| EngineError::Unavailable(format!("scylla (messages): {e}")))?;
    let mut messages = Vec::with_capacity(limit);
    while messages.len() < limit {
        let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| EngineError::Unavailable(format!("scylla (messages): {e}")))?
        else {
            break;
        };
        let message = rows::message(tenant, contact, row)?;
        if message.expires_at > now {
            messages.push(message);
        }
    }
    Ok(messages)
}

/// Most recent activity first, after the cursor `(activity, contact)`, with an optional state
/// filter. Human states read their own small partition; otherwise the tenant's activity days are
/// walked newest first. Index rows that no longer match their record are skipped.
pub(crate) async fn list_conversations(
    db: &Db,
    tenant: &TenantId,
    state: Option<ConversationState>,
    limit: usize,
    after: Option<(i64, String)>,
) -> StoreResult<Page<Conversation>> {
    let t = tenant.as_str();
    let mut found: Vec<Conversation> = Vec::new();
    let wanted = limit.saturating_add(1);
    let keep = |record: &Record| state.is_none_or(|s| record.conversation.state == s);

    match state.filter(|s| s.human_in_charge()) {
        Some(human) => {
            let candidates: Vec<(i64, String)> = match &after {
                None => db.rows(&db.st.wait_page, (t, human.as_str())).await?,
                Some((activity, contact)) => {
                    db.rows(
                        &db.st.wait_page_after,
                        (t, human.as_str(), *activity, contact.as_str()),
                    )
                    .await?
                }
            };
            collect_checked(db, tenant, candidates, wanted, &keep, &mut found).await?;
        }
        None => {
            let mut days = db.buckets(BucketKind::Activity, t).await?;
            days.reverse();
            let first_day = after
                .as_ref()
                .map(|(activity, _)| i64::from(day_of(*activity)));
            for day in days {
                if found.len() >= wanted {
                    break;
                }
                if first_day.is_some_and(|first| day > first) {
                    continue;
                }
                let Ok(day) = i32::try_from(day) else {
                    continue;
                };
                let candidates: Vec<(i64, String)> = match &after {
                    Some((activity, contact)) if i64::from(day) == first_day.unwrap_or(-1) => {
                        db.rows(&db.st.act_page_after, (t, day, *activity, contact.as_str()))
                            .await?
                    }
                    _ => db.rows(&db.st.act_page, (t, day)).await?,
                };
                collect_checked(db, tenant, candidates, wanted, &keep, &mut found).await?;
            }
        }
    }
    let more = found.len() > limit;
    found.truncate(limit);
    let next_cursor = if more {
        found.last().map(cursor_of)
    } else {
        None
    };
    Ok(Page {
        items: found,
        next_cursor,
    })
}

/// Adds to `found`, in order, the records of `candidates` (index rows, newest first) that still
/// match them and pass `keep`, until `found` has `wanted`.
async fn collect_checked(
    db: &Db,
    tenant: &TenantId,
    candidates: Vec<(i64, String)>,
    wanted: usize,
    keep: &(dyn Fn(&Record) -> bool + Sync),
    found: &mut Vec<Conversation>,
) -> StoreResult<()> {
    for chunk in candidates.chunks(100) {
        if found.len() >= wanted {
            return Ok(());
        }
        let contacts: Vec<String> = chunk.iter().map(|(_, c)| c.clone()).collect();
        let records: HashMap<String, Record> = conversation::load_many(db, tenant, contacts)
            .await?
            .into_iter()
            .map(|r| (r.conversation.contact.as_str().to_owned(), r))
            .collect();
        for (activity, contact) in chunk {
            let Some(record) = records.get(contact) else {
                continue;
            };
            if record.activity() == *activity && keep(record) {
                found.push(record.conversation.clone());
                if found.len() >= wanted {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Deadlines at or before `now`, earliest first: only the hours `time_buckets` lists up to now.
/// A row whose record no longer has that deadline is removed.
pub(crate) async fn due_deadlines(
    db: &Db,
    now: Timestamp,
    limit: usize,
) -> StoreResult<Vec<DueDeadline>> {
    let now_ms = now.as_millis();
    let mut due = Vec::new();
    for bucket in db.buckets(BucketKind::Deadline, "").await? {
        if bucket > hour_of(now_ms) || due.len() >= limit {
            break;
        }
        let rows: Vec<(i64, String, String)> =
            db.rows(&db.st.deadline_due, (bucket, now_ms)).await?;
        for (deadline, tenant, contact) in rows {
            if due.len() >= limit {
                break;
            }
            let (tenant, contact) = (rows::tenant_id(&tenant)?, rows::contact_id(&contact)?);
            let record = conversation::load(db, &tenant, &contact, false).await?;
            let current = record
                .as_ref()
                .and_then(|r| r.conversation.human_deadline)
                .map(|t| t.as_millis());
            if current == Some(deadline) {
                due.push(DueDeadline {
                    tenant,
                    contact,
                    deadline: Timestamp(deadline),
                });
            } else {
                // Stale: the record moved on (the index write of that change was lost or late).
                let timestamp = record
                    .as_ref()
                    .map_or_else(super::keys::wall_clock_micros, |r| r.version);
                db.exec(
                    &db.st.deadline_delete,
                    (
                        timestamp,
                        bucket,
                        deadline,
                        tenant.as_str(),
                        contact.as_str(),
                    ),
                )
                .await?;
            }
        }
    }
    Ok(due)
}

/// Every inbox entry not done, oldest first.
pub(crate) async fn pending_inbox(db: &Db) -> StoreResult<Vec<InboxEntry>> {
    type InboxRow = (
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<bool>,
    );
    let rows: Vec<InboxRow> = scan_buckets(db, BucketKind::Inbox, |bucket, shard| {
        db.rows(&db.st.inbox_scan, (bucket, shard))
    })
    .await?;
    let mut entries = Vec::new();
    for (seq, tenant, _contact, kind, message, done) in rows {
        // `done` is null until the entry's turn commits (the insert leaves it unset).
        let (Some(_), Some(kind), Some(message), None | Some(false)) =
            (tenant, kind, message, done)
        else {
            continue;
        };
        let kind = InboxKind::parse(&kind)
            .ok_or_else(|| EngineError::Internal(format!("a stored inbox kind {kind:?}")))?;
        let message: StoredMessage = serde_json::from_str(&message).map_err(|e| {
            EngineError::Internal(format!("a stored inbox message cannot be read: {e}"))
        })?;
        entries.push(InboxEntry {
            seq: u64::try_from(seq).unwrap_or_default(),
            kind,
            message,
        });
    }
    entries.sort_by_key(|e| e.seq);
    Ok(entries)
}

/// Every outbox entry not done, oldest first.
pub(crate) async fn pending_outbox(db: &Db) -> StoreResult<Vec<OutboxItem>> {
    type OutboxRow = (
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<i32>,
        Option<bool>,
    );
    let rows: Vec<OutboxRow> = scan_buckets(db, BucketKind::Outbox, |bucket, shard| {
        db.rows(&db.st.outbox_scan, (bucket, shard))
    })
    .await?;
    let mut items = Vec::new();
    for (seq, tenant, contact, message_id, _at, text, attempts, done) in rows {
        let (Some(tenant), Some(contact), Some(message_id), Some(false)) =
            (tenant, contact, message_id, done)
        else {
            continue;
        };
        items.push(OutboxItem {
            seq: u64::try_from(seq).unwrap_or_default(),
            tenant: rows::tenant_id(&tenant)?,
            contact: rows::contact_id(&contact)?,
            message_id: MessageId(message_id),
            text: text.unwrap_or_default(),
            attempts: u32::try_from(attempts.unwrap_or(0)).unwrap_or(0),
        });
    }
    items.sort_by_key(|i| i.seq);
    Ok(items)
}

/// Reads every shard of every listed bucket of `kind` (inbox or outbox), a few at a time.
pub(crate) async fn scan_buckets<'a, R, F, Fut>(
    db: &'a Db,
    kind: BucketKind,
    read: F,
) -> StoreResult<Vec<R>>
where
    R: Send + 'a,
    F: Fn(i64, i32) -> Fut,
    Fut: std::future::Future<Output = StoreResult<Vec<R>>> + Send + 'a,
{
    let buckets = db.buckets(kind, "").await?;
    let partitions: Vec<(i64, i32)> = buckets
        .iter()
        .flat_map(|&b| (0..SHARDS).map(move |s| (b, s)))
        .collect();
    let parts: Vec<Vec<R>> = super::in_order(
        super::boxed_all(
            (partitions)
                .into_iter()
                .map(|(bucket, shard)| read(bucket, shard)),
        ),
        db.settings.concurrency.min(32),
    )
    .await?;
    Ok(parts.into_iter().flatten().collect())
}

/// Conversations per tenant and state: a paged scan of `(tenant, state)` of every record.
pub(crate) async fn state_counts(db: &Db) -> StoreResult<Vec<(TenantId, ConversationState, u64)>> {
    let rows: Vec<(String, Option<String>)> = db.rows(&db.st.conv_states, ()).await?;
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (tenant, state) in rows {
        *counts
            .entry((tenant, state.unwrap_or_default()))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((tenant, state), n)| {
            let state = ConversationState::parse(&state).ok_or_else(|| {
                EngineError::Internal(format!("a stored conversation state {state:?}"))
            })?;
            Ok((rows::tenant_id(&tenant)?, state, n))
        })
        .collect()
}

/// The history row of an outbound message by its provider id, if it still exists.
pub(crate) async fn by_provider_id(
    db: &Db,
    tenant: &str,
    provider_id: &str,
) -> StoreResult<Option<(String, i64, i64, MessageHead)>> {
    type IndexRow = (Option<String>, Option<i64>, Option<i64>, Option<String>);
    let row: Option<IndexRow> = db
        .first(&db.st.provider_id_get, (tenant, provider_id))
        .await?;
    let Some((Some(contact), Some(at), Some(seq), _author)) = row else {
        return Ok(None);
    };
    Ok(load_message(db, tenant, &contact, at, seq)
        .await?
        .map(|head| (contact, at, seq, head)))
}

/// Whether Conversa's assistant sent the message with this provider id.
pub(crate) async fn is_own_message(
    db: &Db,
    tenant: &TenantId,
    provider_id: &str,
) -> StoreResult<bool> {
    Ok(by_provider_id(db, tenant.as_str(), provider_id)
        .await?
        .is_some_and(|(_, _, _, head)| {
            head.direction == engine::message::Direction::Out && head.author != "human"
        }))
}
