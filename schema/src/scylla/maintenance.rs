//! Erasing a contact, deleting a tenant, and the sweep.
//!
//! The sweep reads only the buckets `time_buckets` lists up to its clock: expired messages (the
//! TTL usually got there first; this makes expiry exact for an explicit clock), dedupe keys older
//! than the dedupe window, and done inbox and outbox entries. It counts only rows it found in place,
//! and drops a bucket from the list once its partitions are empty and the bucket is old enough that
//! nothing is written there any more.

use engine::message::InboxKind;
use engine::ports::{StoreResult, SweepReport};
use engine::{ContactId, TenantId, Timestamp};
use futures_util::future::try_join_all;

use super::Db;
use super::conversation;
use super::keys::{BucketKind, DAY_MS, SHARDS, day_of, hour_of, shard_of, wall_clock_ms};
use super::read::scan_buckets;
use super::rows::{self, ConversationRow};

/// Erases a contact: the record and its index rows, the history, the inbox and outbox entries.
pub(crate) async fn erase_contact(
    db: &Db,
    tenant: &TenantId,
    contact: &ContactId,
) -> StoreResult<()> {
    let (t, c) = (tenant.as_str(), contact.as_str());
    conversation::delete(db, tenant, contact).await?;
    db.exec(&db.st.messages_drop, (t, c)).await?;
    let shard = shard_of(t, c);
    let mut deletes = Vec::new();
    for bucket in db.buckets(BucketKind::Inbox, "").await? {
        let rows: Vec<(i64, Option<String>, Option<String>)> = db
            .rows(&db.st.inbox_scan, (bucket, shard))
            .await?
            .into_iter()
            .map(|(seq, tenant, contact, _, _, _): InboxScanRow| (seq, tenant, contact))
            .collect();
        for (seq, row_tenant, row_contact) in rows {
            if row_tenant.as_deref() == Some(t) && row_contact.as_deref() == Some(c) {
                deletes.push((true, bucket, seq));
            }
        }
    }
    for bucket in db.buckets(BucketKind::Outbox, "").await? {
        let rows: Vec<OutboxScanRow> = db.rows(&db.st.outbox_scan, (bucket, shard)).await?;
        for (seq, row_tenant, row_contact, ..) in rows {
            if row_tenant.as_deref() == Some(t) && row_contact.as_deref() == Some(c) {
                deletes.push((false, bucket, seq));
            }
        }
    }
    super::in_order(
        super::boxed_all(deletes.into_iter().map(|(inbox, bucket, seq)| {
            let statement = if inbox {
                &db.st.inbox_delete
            } else {
                &db.st.outbox_delete
            };
            db.exec(statement, (bucket, shard, seq))
        })),
        db.settings.concurrency,
    )
    .await?;
    Ok(())
}

type InboxScanRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<bool>,
);

type OutboxScanRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i32>,
    Option<bool>,
);

/// Deletes a tenant and everything it owns. Returns whether the tenant row existed.
pub(crate) async fn delete_tenant(db: &Db, tenant: &TenantId) -> StoreResult<bool> {
    let t = tenant.as_str();
    let existed = db.lwt(&db.st.tenant_delete, (t,)).await?;

    // Knowledge.
    let knowledge: Option<(Option<String>, Option<i64>, Option<i64>)> =
        db.first(&db.st.knowledge_get, (t,)).await?;
    if let Some((_, Some(version), _)) = knowledge {
        db.exec(&db.st.chunks_drop, (t, version)).await?;
    }
    db.exec(&db.st.knowledge_delete, (t,)).await?;

    // Conversations, their history and their index rows.
    let records: Vec<ConversationRow> = db.rows(&db.st.conv_of_tenant, (t,)).await?;
    let records = records
        .into_iter()
        .map(|row| rows::record(tenant, row))
        .collect::<StoreResult<Vec<_>>>()?;
    super::in_order(
        super::boxed_all(records.iter().map(|record| async move {
            db.exec(
                &db.st.messages_drop,
                (t, record.conversation.contact.as_str()),
            )
            .await?;
            // The records were written by LWT (Paxos timestamps): an LWT delete removes each one
            // whatever the client's clock; the partition delete below is a backstop.
            conversation::delete(db, tenant, &record.conversation.contact).await
        })),
        db.settings.concurrency,
    )
    .await?;
    db.exec(&db.st.conv_drop_tenant, (t,)).await?;
    for state in ["AGUARDANDO_HUMANO", "HUMANO_RESPONDEU"] {
        db.exec(&db.st.wait_drop, (t, state)).await?;
    }
    for day in db.buckets(BucketKind::Activity, t).await? {
        if let Ok(day) = i32::try_from(day) {
            db.exec(&db.st.act_drop_day, (t, day)).await?;
        }
    }
    db.exec(&db.st.bucket_drop, (BucketKind::Activity.as_str(), t))
        .await?;

    // Inbox and outbox entries.
    let inbox: Vec<(i64, i64, i32, Option<String>)> =
        scan_buckets(db, BucketKind::Inbox, |bucket, shard| async move {
            let rows: Vec<InboxScanRow> = db.rows(&db.st.inbox_scan, (bucket, shard)).await?;
            Ok(rows
                .into_iter()
                .map(|(seq, tenant, ..)| (seq, bucket, shard, tenant))
                .collect())
        })
        .await?;
    let outbox: Vec<(i64, i64, i32, Option<String>)> =
        scan_buckets(db, BucketKind::Outbox, |bucket, shard| async move {
            let rows: Vec<OutboxScanRow> = db.rows(&db.st.outbox_scan, (bucket, shard)).await?;
            Ok(rows
                .into_iter()
                .map(|(seq, tenant, ..)| (seq, bucket, shard, tenant))
                .collect())
        })
        .await?;
    let entries = inbox
        .into_iter()
        .map(|e| (true, e))
        .chain(outbox.into_iter().map(|e| (false, e)))
        .filter(|(_, (_, _, _, owner))| owner.as_deref() == Some(t));
    super::in_order(
        super::boxed_all(
            (entries)
                .into_iter()
                .map(|(inbox, (seq, bucket, shard, _))| {
                    let statement = if inbox {
                        &db.st.inbox_delete
                    } else {
                        &db.st.outbox_delete
                    };
                    db.exec(statement, (bucket, shard, seq))
                }),
        ),
        db.settings.concurrency,
    )
    .await?;

    // Dedupe keys inside the dedupe window.
    for day in db.buckets(BucketKind::Dedupe, "").await? {
        let Ok(day) = i32::try_from(day) else {
            continue;
        };
        for shard in 0..SHARDS {
            let keys: Vec<(i64, String, String)> =
                db.rows(&db.st.dedupe_index_all, (day, shard)).await?;
            let mine = keys.into_iter().filter(|(_, owner, _)| owner == t);
            super::in_order(
                super::boxed_all(mine.into_iter().map(|(seen_at, _, key)| async move {
                    db.exec(&db.st.dedupe_delete, (t, key.as_str())).await?;
                    db.exec(
                        &db.st.dedupe_index_delete,
                        (day, shard, seen_at, t, key.as_str()),
                    )
                    .await
                })),
                db.settings.concurrency,
            )
            .await?;
        }
    }
    Ok(existed)
}

/// See the module documentation.
pub(crate) async fn sweep(
    db: &Db,
    now: Timestamp,
    dedupe_before: Timestamp,
) -> StoreResult<SweepReport> {
    let (messages, dedupe_keys, inbox_entries, _, ()) = futures_util::try_join!(
        sweep_expired(db, now),
        sweep_dedupe(db, dedupe_before),
        sweep_done(db, BucketKind::Inbox),
        sweep_done(db, BucketKind::Outbox),
        sweep_deadline_buckets(db, now),
    )?;
    let report = SweepReport {
        messages,
        dedupe_keys,
        inbox_entries,
    };
    tracing::debug!(?report, "scylla store swept");
    Ok(report)
}

async fn sweep_expired(db: &Db, now: Timestamp) -> StoreResult<u64> {
    let now_ms = now.as_millis();
    let mut removed = 0;
    for day in db.buckets(BucketKind::Expiry, "").await? {
        let Ok(day) = i32::try_from(day) else {
            continue;
        };
        if day > day_of(now_ms) {
            break;
        }
        for shard in 0..SHARDS {
            type ExpiryRow = (i64, String, String, i64, i64);
            let rows: Vec<ExpiryRow> = db.rows(&db.st.expiry_due, (day, shard, now_ms)).await?;
            let counted: Vec<u64> = super::in_order(
                super::boxed_all(rows.into_iter().map(
                    |(expires_at, tenant, contact, at, seq)| async move {
                        type Head = (
                            Option<String>,
                            Option<String>,
                            Option<String>,
                            Option<String>,
                            Option<i64>,
                            Option<i32>,
                        );
                        let found: Option<Head> = db
                            .first(
                                &db.st.message_get,
                                (tenant.as_str(), contact.as_str(), at, seq),
                            )
                            .await?;
                        let present = found.is_some_and(|row| row.4 == Some(expires_at));
                        if present {
                            db.exec(
                                &db.st.message_delete,
                                (tenant.as_str(), contact.as_str(), at, seq),
                            )
                            .await?;
                        }
                        db.exec(
                            &db.st.expiry_delete,
                            (
                                day,
                                shard,
                                expires_at,
                                tenant.as_str(),
                                contact.as_str(),
                                at,
                                seq,
                            ),
                        )
                        .await?;
                        Ok::<u64, engine::EngineError>(u64::from(present))
                    },
                )),
                db.settings.concurrency,
            )
            .await?;
            removed += counted.iter().sum::<u64>();
        }
        if i64::from(day) * DAY_MS < now_ms - 2 * DAY_MS {
            drop_bucket_if_empty(db, BucketKind::Expiry, i64::from(day)).await?;
        }
    }
    Ok(removed)
}

async fn sweep_dedupe(db: &Db, before: Timestamp) -> StoreResult<u64> {
    let before_ms = before.as_millis();
    let mut removed = 0;
    for day in db.buckets(BucketKind::Dedupe, "").await? {
        let Ok(day) = i32::try_from(day) else {
            continue;
        };
        if day > day_of(before_ms) {
            break;
        }
        for shard in 0..SHARDS {
            let rows: Vec<(i64, String, String)> = db
                .rows(&db.st.dedupe_index_due, (day, shard, before_ms))
                .await?;
            let counted: Vec<u64> = super::in_order(
                super::boxed_all(rows.into_iter().map(|(seen_at, tenant, key)| async move {
                    let found: Option<(Option<i64>,)> = db
                        .first(&db.st.dedupe_get, (tenant.as_str(), key.as_str()))
                        .await?;
                    let present = found.is_some_and(|(seen,)| seen == Some(seen_at));
                    if present {
                        db.exec(&db.st.dedupe_delete, (tenant.as_str(), key.as_str()))
                            .await?;
                    }
                    db.exec(
                        &db.st.dedupe_index_delete,
                        (day, shard, seen_at, tenant.as_str(), key.as_str()),
                    )
                    .await?;
                    Ok::<u64, engine::EngineError>(u64::from(present))
                })),
                db.settings.concurrency,
            )
            .await?;
            removed += counted.iter().sum::<u64>();
        }
        if i64::from(day) * DAY_MS < before_ms - 2 * DAY_MS {
            drop_bucket_if_empty(db, BucketKind::Dedupe, i64::from(day)).await?;
        }
    }
    Ok(removed)
}

/// Deletes done inbox (or outbox) entries; returns how many inbox entries it deleted. An hour
/// whose partitions end up empty, an hour or more in the past, leaves the bucket list.
async fn sweep_done(db: &Db, kind: BucketKind) -> StoreResult<u64> {
    let current_hour = hour_of(wall_clock_ms());
    let mut removed = 0;
    for bucket in db.buckets(kind, "").await? {
        let mut remaining = 0usize;
        for shard in 0..SHARDS {
            // (seq, owned by a tenant, done)
            let rows: Vec<(i64, bool, bool)> = match kind {
                BucketKind::Inbox => {
                    let rows: Vec<InboxScanRow> =
                        db.rows(&db.st.inbox_scan, (bucket, shard)).await?;
                    rows.into_iter()
                        .map(|(seq, tenant, _, kind, _, done)| {
                            let real = tenant.is_some()
                                && kind.as_deref().and_then(InboxKind::parse).is_some();
                            (seq, real, done == Some(true))
                        })
                        .collect()
                }
                _ => {
                    let rows: Vec<OutboxScanRow> =
                        db.rows(&db.st.outbox_scan, (bucket, shard)).await?;
                    rows.into_iter()
                        .map(|(seq, tenant, .., done)| (seq, tenant.is_some(), done == Some(true)))
                        .collect()
                }
            };
            let statement = match kind {
                BucketKind::Inbox => &db.st.inbox_delete,
                _ => &db.st.outbox_delete,
            };
            let (done, pending): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.2);
            remaining += pending.len();
            if kind == BucketKind::Inbox {
                removed += done.iter().filter(|r| r.1).count() as u64;
            }
            try_join_all(
                done.iter()
                    .map(|(seq, _, _)| db.exec(statement, (bucket, shard, *seq))),
            )
            .await?;
        }
        if remaining == 0 && bucket < current_hour {
            let drop = match kind {
                BucketKind::Inbox => &db.st.inbox_drop,
                _ => &db.st.outbox_drop,
            };
            for shard in 0..SHARDS {
                db.exec(drop, (bucket, shard)).await?;
            }
            db.exec(&db.st.bucket_delete, (kind.as_str(), "", bucket))
                .await?;
            db.forget_bucket(kind, "", bucket);
        }
    }
    Ok(removed)
}

/// Removes an old expiry or dedupe day from the bucket list when none of its shards has a row.
async fn drop_bucket_if_empty(db: &Db, kind: BucketKind, day: i64) -> StoreResult<()> {
    let Ok(day32) = i32::try_from(day) else {
        return Ok(());
    };
    let statement = match kind {
        BucketKind::Expiry => &db.st.expiry_any,
        _ => &db.st.dedupe_index_any,
    };
    for shard in 0..SHARDS {
        let any: Option<(i64,)> = db.first(statement, (day32, shard)).await?;
        if any.is_some() {
            return Ok(());
        }
    }
    db.exec(&db.st.bucket_delete, (kind.as_str(), "", day))
        .await?;
    db.forget_bucket(kind, "", day);
    Ok(())
}

/// Removes deadline hours that are a day old and empty from the bucket list.
async fn sweep_deadline_buckets(db: &Db, now: Timestamp) -> StoreResult<()> {
    for bucket in db.buckets(BucketKind::Deadline, "").await? {
        if bucket >= hour_of(now.as_millis()) - 24 {
            break;
        }
        let any: Option<(i64,)> = db.first(&db.st.deadline_any, (bucket,)).await?;
        if any.is_none() {
            db.exec(
                &db.st.bucket_delete,
                (BucketKind::Deadline.as_str(), "", bucket),
            )
            .await?;
            db.forget_bucket(BucketKind::Deadline, "", bucket);
        }
    }
    Ok(())
}
