//! Conversation records: compare-and-set on `version`, and the indexes that follow a record
//! (the activity listing, the waiting list, the deadlines).
//!
//! Every change of a record is a lightweight transaction: `INSERT … IF NOT EXISTS` when there is
//! none, else `UPDATE … IF version = <the version read>`. A change that loses the race re-reads
//! (at the serial consistency, which completes any Paxos round in flight) and applies itself
//! again to what it finds, so two writers never undo each other. A transaction that timed out may
//! have applied: the re-read tells, by the version it wrote.
//!
//! Versions are microseconds (at least the previous version plus one), and the index rows of a
//! version are written `USING TIMESTAMP <version>`, so index writes of two versions that reach the
//! cluster out of order still end as the later version says. The readers re-check every index row
//! against the record anyway.

use std::time::Duration;

use engine::conversation::Conversation;
use engine::ports::StoreResult;
use engine::{ContactId, EngineError, TenantId};
use futures_util::FutureExt;
use futures_util::future::try_join_all;

use super::Db;
use super::keys::{BucketKind, day_of, hour_of, wall_clock_micros};
use super::rows::{self, ConversationRow, Record};

/// How many times a change is tried against a moving record before giving up (as `Unavailable`).
const MAX_ATTEMPTS: u32 = 100;

/// Reads a record; `serial` reads at the serial consistency.
pub(crate) async fn load(
    db: &Db,
    tenant: &TenantId,
    contact: &ContactId,
    serial: bool,
) -> StoreResult<Option<Record>> {
    let statement = if serial {
        &db.conv_get_serial
    } else {
        &db.st.conv_get
    };
    let row: Option<ConversationRow> = db
        .first(statement, (tenant.as_str(), contact.as_str()))
        .await?;
    row.map(|row| rows::record(tenant, row)).transpose()
}

/// The records of `contacts` of one tenant (one request; at most a page of them).
pub(crate) async fn load_many(
    db: &Db,
    tenant: &TenantId,
    contacts: Vec<String>,
) -> StoreResult<Vec<Record>> {
    if contacts.is_empty() {
        return Ok(Vec::new());
    }
    let found: Vec<ConversationRow> = db
        .rows(&db.st.conv_get_many, (tenant.as_str(), contacts))
        .await?;
    found
        .into_iter()
        .map(|row| rows::record(tenant, row))
        .collect()
}

/// Applies `change` to the record of `(tenant, contact)` by compare-and-set, then moves its index
/// rows. `change` gets the current record (`None`: there is none) and returns the new one, or
/// `None` when nothing needs writing. `known` is the record as the caller last read it, if it
/// did. Returns the record as stored after the change.
pub(crate) async fn update<F>(
    db: &Db,
    tenant: &TenantId,
    contact: &ContactId,
    known: Option<Option<Record>>,
    change: F,
) -> StoreResult<Option<Record>>
where
    F: Fn(Option<&Conversation>) -> Option<Conversation>,
{
    let mut current = match known {
        Some(record) => record,
        None => load(db, tenant, contact, false).await?,
    };
    for attempt in 0..MAX_ATTEMPTS {
        let Some(wanted) = change(current.as_ref().map(|r| &r.conversation)) else {
            return Ok(current);
        };
        let version = current
            .as_ref()
            .map_or(0, |r| r.version.saturating_add(1))
            .max(wall_clock_micros());
        let c = &wanted;
        let fields = (
            c.state.as_str(),
            c.reason.map(|r| r.as_str()),
            c.updated_at.as_millis(),
            c.last_message_at.map(|t| t.as_millis()),
            c.human_deadline.map(|t| t.as_millis()),
            c.human_answered,
            version,
        );
        let outcome = match &current {
            None => {
                db.lwt(
                    &db.st.conv_insert,
                    (
                        tenant.as_str(),
                        contact.as_str(),
                        fields.0,
                        fields.1,
                        fields.2,
                        fields.3,
                        fields.4,
                        fields.5,
                        fields.6,
                    ),
                )
                .await
            }
            Some(before) => {
                db.lwt(
                    &db.st.conv_update,
                    (
                        fields.0,
                        fields.1,
                        fields.2,
                        fields.3,
                        fields.4,
                        fields.5,
                        fields.6,
                        tenant.as_str(),
                        contact.as_str(),
                        before.version,
                    ),
                )
                .await
            }
        };
        let applied = match outcome {
            Ok(applied) => applied,
            Err(error) => {
                // A timed-out transaction may have applied: the version tells.
                let now = load(db, tenant, contact, true).await?;
                if now.as_ref().is_some_and(|r| r.version == version) {
                    true
                } else if attempt + 1 >= MAX_ATTEMPTS {
                    return Err(error);
                } else {
                    current = now;
                    backoff(attempt).await;
                    continue;
                }
            }
        };
        if applied {
            let after = Record {
                conversation: wanted,
                version,
            };
            reindex(db, current.as_ref(), Some(&after)).await?;
            return Ok(Some(after));
        }
        current = load(db, tenant, contact, true).await?;
        backoff(attempt).await;
    }
    Err(EngineError::Unavailable(format!(
        "scylla (conversations): conversation {tenant}/{contact} changed {MAX_ATTEMPTS} times while being written"
    )))
}

/// Deletes a record (a lightweight transaction, like every write of it) and its index rows.
pub(crate) async fn delete(db: &Db, tenant: &TenantId, contact: &ContactId) -> StoreResult<()> {
    let before = load(db, tenant, contact, true).await?;
    db.lwt(&db.st.conv_delete, (tenant.as_str(), contact.as_str()))
        .await?;
    reindex(db, before.as_ref(), None).await
}

/// Moves the index rows of a record from `before` to `after` (either may be absent).
pub(crate) async fn reindex(
    db: &Db,
    before: Option<&Record>,
    after: Option<&Record>,
) -> StoreResult<()> {
    let Some(any) = after.or(before) else {
        return Ok(());
    };
    let tenant = any.conversation.tenant.as_str();
    let contact = any.conversation.contact.as_str();
    // Deletes of a record that is gone get a timestamp after every version it had.
    let timestamp = after.map_or_else(
        || wall_clock_micros().max(before.map_or(0, |r| r.version.saturating_add(1))),
        |r| r.version,
    );
    let mut writes = Vec::new();

    let activity_before = before.map(Record::activity);
    let activity_after = after.map(Record::activity);
    if activity_before != activity_after {
        if let Some(old) = activity_before {
            writes.push(
                db.exec(
                    &db.st.act_delete,
                    (timestamp, tenant, day_of(old), old, contact),
                )
                .boxed(),
            );
        }
        if let Some(new) = activity_after {
            db.register_bucket(BucketKind::Activity, tenant, i64::from(day_of(new)))
                .await?;
            writes.push(
                db.exec(
                    &db.st.act_insert,
                    (tenant, day_of(new), new, contact, timestamp),
                )
                .boxed(),
            );
        }
    }

    let waiting = |r: Option<&Record>| {
        r.filter(|r| r.conversation.state.human_in_charge())
            .map(|r| (r.conversation.state.as_str(), r.activity()))
    };
    let (waiting_before, waiting_after) = (waiting(before), waiting(after));
    if waiting_before != waiting_after {
        if let Some((state, activity)) = waiting_before {
            writes.push(
                db.exec(
                    &db.st.wait_delete,
                    (timestamp, tenant, state, activity, contact),
                )
                .boxed(),
            );
        }
        if let Some((state, activity)) = waiting_after {
            writes.push(
                db.exec(
                    &db.st.wait_insert,
                    (tenant, state, activity, contact, timestamp),
                )
                .boxed(),
            );
        }
    }

    let deadline = |r: Option<&Record>| {
        r.and_then(|r| r.conversation.human_deadline)
            .map(|t| t.as_millis())
    };
    let (deadline_before, deadline_after) = (deadline(before), deadline(after));
    if deadline_before != deadline_after {
        if let Some(old) = deadline_before {
            writes.push(
                db.exec(
                    &db.st.deadline_delete,
                    (timestamp, hour_of(old), old, tenant, contact),
                )
                .boxed(),
            );
        }
        if let Some(new) = deadline_after {
            db.register_bucket(BucketKind::Deadline, "", hour_of(new))
                .await?;
            writes.push(
                db.exec(
                    &db.st.deadline_insert,
                    (hour_of(new), new, tenant, contact, timestamp),
                )
                .boxed(),
            );
        }
    }
    try_join_all(writes).await.map(drop)
}

/// Jittered exponential backoff between compare-and-set attempts: 1 ms doubling up to 64 ms.
async fn backoff(attempt: u32) {
    let cap = 1u64 << attempt.min(6);
    let millis = rand::random::<u64>() % cap + 1;
    tokio::time::sleep(Duration::from_millis(millis)).await;
}
