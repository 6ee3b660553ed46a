//! The ScyllaDB store's keys: time-ordered 64-bit seqs, shards, and the time buckets of the
//! bucketed tables.
//!
//! A seq is `[40 bits: milliseconds since 2024-01-01][9 bits: node][10 bits: counter][4 bits:
//! shard]`, a positive `bigint`. One process hands out strictly increasing seqs (the counter
//! orders those of one millisecond; a full counter borrows the next millisecond), so the entries
//! of one store instance are ordered as they were written, and those of several nodes by time. The
//! node bits (random per process) keep two nodes from producing the same seq in the same
//! millisecond unless they drew the same node id (1 in 512) *and* the same counter and shard. The
//! shard bits make a seq name its own inbox/outbox partition: `(hour of the seq, shard)`.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z in Unix milliseconds: seqs count from here (40 bits last until 2058).
const SEQ_EPOCH_MS: i64 = 1_704_067_200_000;
const NODE_BITS: u32 = 9;
const COUNTER_BITS: u32 = 10;
const SHARD_BITS: u32 = 4;
const MS_SHIFT: u32 = NODE_BITS + COUNTER_BITS + SHARD_BITS;
const MAX_COUNTER: i64 = (1 << COUNTER_BITS) - 1;

/// How many shards the bucketed tables (inbox, outbox, expiry, dedupe index) have.
pub(crate) const SHARDS: i32 = 1 << SHARD_BITS;

pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 86_400_000;

/// Hands out seqs; see the module documentation.
#[derive(Debug)]
pub(crate) struct SeqGen {
    node: i64,
    /// (milliseconds since the seq epoch, counter) of the last seq.
    last: Mutex<(i64, i64)>,
}

impl SeqGen {
    pub(crate) fn new() -> Self {
        Self::with_node(i64::from(rand::random::<u16>()) & ((1 << NODE_BITS) - 1))
    }

    pub(crate) fn with_node(node: i64) -> Self {
        Self {
            node: node & ((1 << NODE_BITS) - 1),
            last: Mutex::new((0, 0)),
        }
    }

    /// The next seq, in `shard`.
    pub(crate) fn next(&self, shard: i32) -> i64 {
        let now = wall_clock_ms() - SEQ_EPOCH_MS;
        let (ms, counter) = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if now > last.0 {
                *last = (now, 0);
            } else if last.1 >= MAX_COUNTER {
                *last = (last.0 + 1, 0);
            } else {
                last.1 += 1;
            }
            *last
        };
        (ms << MS_SHIFT)
            | (self.node << (COUNTER_BITS + SHARD_BITS))
            | (counter << SHARD_BITS)
            | i64::from(shard & (SHARDS - 1))
    }
}

/// The shard a seq lives in.
pub(crate) fn seq_shard(seq: i64) -> i32 {
    (seq & i64::from(SHARDS - 1)) as i32
}

/// The hour (Unix milliseconds / 3,600,000) a seq was made in: its inbox/outbox bucket.
pub(crate) fn seq_hour(seq: i64) -> i64 {
    ((seq >> MS_SHIFT) + SEQ_EPOCH_MS).div_euclid(HOUR_MS)
}

/// A seq from the API (`u64`) as stored, when it can be one of ours.
pub(crate) fn stored_seq(seq: u64) -> Option<i64> {
    i64::try_from(seq).ok().filter(|s| *s > 0)
}

/// The shard of a conversation: FNV-1a of `tenant/contact`, stable across processes and builds.
pub(crate) fn shard_of(tenant: &str, contact: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in tenant.bytes().chain([b'/']).chain(contact.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % SHARDS as u32) as i32
}

/// The shard of a dedupe key.
pub(crate) fn key_shard(tenant: &str, key: &str) -> i32 {
    shard_of(tenant, key)
}

pub(crate) fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS)
}

pub(crate) fn day_of(ms: i64) -> i32 {
    i32::try_from(ms.div_euclid(DAY_MS)).unwrap_or(if ms < 0 { i32::MIN } else { i32::MAX })
}

pub(crate) fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn wall_clock_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The kinds of [`time_buckets`](crate::scylla) rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BucketKind {
    /// Hours of inbox seqs.
    Inbox,
    /// Hours of outbox seqs.
    Outbox,
    /// Hours of human-timeout deadlines.
    Deadline,
    /// Days of message expiry.
    Expiry,
    /// Days dedupe keys were seen.
    Dedupe,
    /// Days of a tenant's conversation activity (scope: the tenant).
    Activity,
}

impl BucketKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Inbox => "inbox",
            Self::Outbox => "outbox",
            Self::Deadline => "deadline",
            Self::Expiry => "expiry",
            Self::Dedupe => "dedupe",
            Self::Activity => "activity",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_increase_and_carry_their_shard_and_hour() {
        let seqs = SeqGen::with_node(3);
        let mut last = 0;
        let before = hour_of(wall_clock_ms());
        for i in 0..5000 {
            let shard = i % SHARDS;
            let seq = seqs.next(shard);
            assert!(seq > last, "seqs strictly increase");
            assert_eq!(seq_shard(seq), shard);
            let hour = seq_hour(seq);
            assert!(hour >= before && hour <= before + 1);
            last = seq;
        }
    }

    #[test]
    fn two_nodes_never_collide_in_the_same_millisecond() {
        let (a, b) = (SeqGen::with_node(1), SeqGen::with_node(2));
        let from_a: std::collections::HashSet<i64> = (0..1000).map(|_| a.next(0)).collect();
        assert!((0..1000).all(|_| !from_a.contains(&b.next(0))));
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(
            shard_of("loja", "5511999999999"),
            shard_of("loja", "5511999999999")
        );
        let used: std::collections::HashSet<i32> = (0..200)
            .map(|i| shard_of("loja", &format!("55119{i:08}")))
            .collect();
        assert_eq!(used.len(), SHARDS as usize);
        assert!(stored_seq(u64::MAX).is_none());
        assert!(stored_seq(0).is_none());
    }

    #[test]
    fn buckets_floor_negative_times() {
        assert_eq!(day_of(-1), -1);
        assert_eq!(hour_of(HOUR_MS), 1);
        assert_eq!(day_of(1_700_000_000_000), 19675);
    }
}
