//! The event hub: every dashboard event of a tenant gets the tenant-wide, strictly increasing
//! `seq`, is kept in a bounded window for resync, and is broadcast to live subscribers.
//!
//! Sequence numbers of a tenant start from the wall clock in microseconds when the hub first
//! sees the tenant, so they keep increasing across restarts without being stored, and a `since`
//! from an earlier process is older than anything retained now (the client is told to resync).
//!
//! **Invariant**: for one tenant, assigning a `seq`, appending to the window and sending to the
//! live channel happen under the tenant's lock, and so does taking a subscription (copying the
//! window after `since` and subscribing to the channel). A subscriber therefore sees every event
//! after `since` exactly once: the older ones in `replay`, the newer ones on `live`.
//!
//! The live channel of a tenant is a `broadcast` ring shared by its subscribers: each
//! subscriber holds only a cursor into it, so a subscriber that falls `client_queue` events
//! behind costs no memory and slows nobody; it gets `RecvError::Lagged` and must resync. The
//! ring exists only while the tenant has subscribers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use engine::events::EventBody;
use engine::ports::EventSink;
use engine::{ContactId, TenantId, Timestamp};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::util::rfc3339;

/// One event as sent to dashboards: serialised once, shared by every subscriber.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    /// The frame's text; cloning it shares the bytes.
    pub json: Utf8Bytes,
}

/// Limits of the dashboard stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// Most events retained per tenant for `?since=` resync.
    pub retention_events: usize,
    /// Events older than this (by publish time) are dropped from the resync window.
    pub retention_age: Duration,
    /// How many events a dashboard may fall behind the live stream before it must resync.
    pub client_queue: usize,
    /// How often a dashboard is pinged.
    pub ping_interval: Duration,
    /// A dashboard that sends nothing (not even a pong) for this long is closed; a frame that
    /// cannot be written for this long closes the connection too.
    pub idle_timeout: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            retention_events: 10_000,
            retention_age: Duration::from_secs(3600),
            client_queue: 4096,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl StreamSettings {
    /// The settings of `config`, with zeroes raised to the smallest workable value.
    pub fn from_config(config: &Config) -> Self {
        Self {
            retention_events: config.stream_retention_events.max(1),
            retention_age: Duration::from_secs(config.stream_retention_secs.max(1)),
            client_queue: config.stream_client_queue.max(1),
            ping_interval: Duration::from_secs(config.stream_ping_secs.max(1)),
            idle_timeout: Duration::from_secs(config.stream_idle_secs.max(1)),
        }
    }
}

#[derive(Debug)]
struct Retained {
    published: Instant,
    event: Event,
}

#[derive(Debug)]
struct TenantEvents {
    next_seq: u64,
    /// Contiguous: `window[i].seq == window[0].seq + i`.
    window: VecDeque<Retained>,
    /// Only while someone listens.
    live: Option<broadcast::Sender<Event>>,
}

impl TenantEvents {
    fn prune(&mut self, now: Instant, settings: &StreamSettings) {
        while self.window.len() > settings.retention_events
            || self
                .window
                .front()
                .is_some_and(|r| now.duration_since(r.published) > settings.retention_age)
        {
            self.window.pop_front();
        }
    }
}

#[derive(Debug)]
pub struct EventHub {
    tenants: RwLock<HashMap<TenantId, Arc<Mutex<TenantEvents>>>>,
    /// No tenant starts below this: raised when a tenant is forgotten, so that a tenant created
    /// again under the same id never reuses a number.
    seq_floor: AtomicU64,
    settings: StreamSettings,
    published: prometheus::IntCounterVec,
    closing: CancellationToken,
    /// When set (Redis configured), events are numbered and fanned out by the relay and come back
    /// through [`EventHub::ingest_remote`]; see [`crate::hot`].
    relay: std::sync::OnceLock<Arc<dyn EventRelay>>,
}

/// Where a hub sends its events when they are numbered elsewhere (the Redis fan-out): `rest` is
/// the event's JSON without its opening brace and without `seq`. Must not block.
pub trait EventRelay: Send + Sync + std::fmt::Debug {
    fn relay(&self, tenant: &TenantId, rest: String);
}

/// What a subscriber gets: the retained events after `since`, then the live stream.
#[derive(Debug)]
pub struct Subscription {
    pub replay: Vec<Event>,
    pub live: broadcast::Receiver<Event>,
    /// Once `replay` is sent, the subscriber has every event up to this `seq`.
    pub position: u64,
}

/// `since` is not in the retained window (older than it, or from another process): the
/// client must reload through the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinceTooOld {
    /// The oldest retained `seq` (the next one to be assigned when nothing is retained).
    pub oldest: u64,
    /// The last `seq` assigned.
    pub last: u64,
}

fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        .max(1)
}

impl EventHub {
    pub fn new(settings: StreamSettings, published: prometheus::IntCounterVec) -> Self {
        Self {
            tenants: RwLock::new(HashMap::new()),
            seq_floor: AtomicU64::new(wall_clock_micros()),
            settings,
            published,
            closing: CancellationToken::new(),
            relay: std::sync::OnceLock::new(),
        }
    }

    /// Sends every event through `relay` from now on (set once, before any event).
    pub fn set_relay(&self, relay: Arc<dyn EventRelay>) {
        let _ = self.relay.set(relay);
    }

    /// Takes an event numbered by the relay (from any node, this one included). Seqs of a tenant
    /// arrive in order; one already seen is ignored; a jump (events lost while the subscription
    /// was down, or the first event this node sees) empties the resync window, so a `since` in
    /// the gap is told to resync rather than given a stream with a hole.
    pub fn ingest_remote(&self, tenant: &TenantId, seq: u64, json: String) {
        let entry = self.tenant(tenant);
        let mut t = entry.lock().unwrap_or_else(|p| p.into_inner());
        if seq < t.next_seq {
            return;
        }
        if seq > t.next_seq {
            t.window.clear();
        }
        t.next_seq = seq + 1;
        let event = Event {
            seq,
            json: Utf8Bytes::from(json),
        };
        let now = Instant::now();
        t.window.push_back(Retained {
            published: now,
            event: event.clone(),
        });
        t.prune(now, &self.settings);
        if let Some(live) = &t.live {
            if live.receiver_count() == 0 {
                t.live = None;
            } else {
                let _ = live.send(event);
            }
        }
    }

    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    fn tenant(&self, tenant: &TenantId) -> Arc<Mutex<TenantEvents>> {
        if let Some(t) = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return t.clone();
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        tenants
            .entry(tenant.clone())
            .or_insert_with(|| {
                let floor = self.seq_floor.load(Ordering::SeqCst);
                Arc::new(Mutex::new(TenantEvents {
                    // With a relay, seqs come from it: start low and take the first one seen.
                    next_seq: if self.relay.get().is_some() {
                        1
                    } else {
                        wall_clock_micros().max(floor)
                    },
                    window: VecDeque::new(),
                    live: None,
                }))
            })
            .clone()
    }

    /// Subscribes to a tenant's events after `since` (`None`: live events only). The replay and
    /// the live receiver are taken under the tenant's lock, so no event falls between them and
    /// none is seen twice.
    pub fn subscribe(
        &self,
        tenant: &TenantId,
        since: Option<u64>,
    ) -> Result<Subscription, SinceTooOld> {
        let entry = self.tenant(tenant);
        let mut t = entry.lock().unwrap_or_else(|p| p.into_inner());
        t.prune(Instant::now(), &self.settings);
        let last = t.next_seq - 1;
        let replay = match since {
            None => Vec::new(),
            Some(since) => {
                let oldest = t.window.front().map_or(t.next_seq, |r| r.event.seq);
                // Events after `since` that are gone, or a position this hub never reached.
                if since.saturating_add(1) < oldest || since > last {
                    return Err(SinceTooOld { oldest, last });
                }
                let skip = (since + 1 - oldest) as usize;
                t.window.range(skip..).map(|r| r.event.clone()).collect()
            }
        };
        let capacity = self.settings.client_queue;
        let live = t
            .live
            .get_or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe();
        Ok(Subscription {
            replay,
            live,
            position: last,
        })
    }

    /// Drops a deleted tenant's events; its subscribers see the live stream end.
    pub fn forget(&self, tenant: &TenantId) {
        let removed = self
            .tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
        if let Some(entry) = removed {
            let t = entry.lock().unwrap_or_else(|p| p.into_inner());
            self.seq_floor.fetch_max(t.next_seq, Ordering::SeqCst);
        }
    }

    /// Tells every dashboard connection to close (the server is shutting down).
    pub fn close_streams(&self) {
        self.closing.cancel();
    }

    /// Completes when [`close_streams`](Self::close_streams) has been called.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }
}

impl EventSink for EventHub {
    fn publish(&self, tenant: &TenantId, contact: &ContactId, at: Timestamp, body: EventBody) {
        let kind = body.kind();
        // Serialised outside the lock; only `seq` is spliced in under it.
        let (Ok(body), Ok(conversation)) =
            (serde_json::to_string(&body), serde_json::to_string(contact))
        else {
            return;
        };
        let Some(fields) = body.strip_prefix('{') else {
            return;
        };
        let rest = format!(
            r#""conversation":{conversation},"at":"{}",{fields}"#,
            rfc3339(at)
        );
        if let Some(relay) = self.relay.get() {
            relay.relay(tenant, rest);
            self.published.with_label_values(&[kind]).inc();
            return;
        }
        let entry = self.tenant(tenant);
        {
            let mut t = entry.lock().unwrap_or_else(|p| p.into_inner());
            let seq = t.next_seq;
            t.next_seq += 1;
            let event = Event {
                seq,
                json: Utf8Bytes::from(format!(r#"{{"seq":{seq},{rest}"#)),
            };
            let now = Instant::now();
            t.window.push_back(Retained {
                published: now,
                event: event.clone(),
            });
            t.prune(now, &self.settings);
            if let Some(live) = &t.live {
                if live.receiver_count() == 0 {
                    // Nobody watches this tenant any more: free the ring.
                    t.live = None;
                } else {
                    let _ = live.send(event);
                }
            }
        }
        self.published.with_label_values(&[kind]).inc();
    }
}

#[cfg(test)]
mod tests {
    use engine::message::{Author, Direction, MessageKind};
    use serde_json::Value;
    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;

    fn hub(settings: StreamSettings) -> EventHub {
        let counter = prometheus::IntCounterVec::new(
            prometheus::Opts::new("conversa_test_events_total", "test"),
            &["type"],
        )
        .unwrap();
        EventHub::new(settings, counter)
    }

    fn tenant(s: &str) -> TenantId {
        s.parse().unwrap()
    }

    fn text(hub: &EventHub, t: &TenantId, n: usize) {
        hub.publish(
            t,
            &ContactId::parse("5511999999999").unwrap(),
            Timestamp::from_millis(1_700_000_000_000),
            EventBody::Message {
                id: format!("m{n}"),
                direction: Direction::In,
                author: Author::Contact,
                kind: MessageKind::Text,
                text: format!("mensagem {n}"),
                status: None,
            },
        );
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn events_carry_seq_conversation_and_at_and_seqs_increase_by_one() {
        let hub = hub(StreamSettings::default());
        let t = tenant("loja");
        let sub = hub.subscribe(&t, None).unwrap();
        for n in 0..3 {
            text(&hub, &t, n);
        }
        let all = hub.subscribe(&t, Some(sub.position)).unwrap().replay;
        assert_eq!(
            seqs(&all),
            vec![sub.position + 1, sub.position + 2, sub.position + 3]
        );
        let v: Value = serde_json::from_str(&all[0].json).unwrap();
        assert_eq!(v["seq"], sub.position + 1);
        assert_eq!(v["type"], "message");
        assert_eq!(v["conversation"], "5511999999999");
        assert_eq!(v["at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["text"], "mensagem 0");
    }

    #[test]
    fn seqs_start_near_the_wall_clock_in_microseconds() {
        let hub = hub(StreamSettings::default());
        let before = wall_clock_micros();
        let sub = hub.subscribe(&tenant("loja"), None).unwrap();
        assert!(sub.position + 1 >= before && sub.position < before + 60_000_000);
    }

    #[test]
    fn since_inside_the_window_replays_then_continues_live_without_gap_or_duplicate() {
        let hub = hub(StreamSettings::default());
        let t = tenant("loja");
        let start = hub.subscribe(&t, None).unwrap().position;
        for n in 0..5 {
            text(&hub, &t, n);
        }
        let mut sub = hub.subscribe(&t, Some(start + 2)).unwrap();
        assert_eq!(seqs(&sub.replay), vec![start + 3, start + 4, start + 5]);
        assert_eq!(sub.position, start + 5);
        text(&hub, &t, 5);
        assert_eq!(sub.live.try_recv().unwrap().seq, start + 6);
        assert!(matches!(sub.live.try_recv(), Err(TryRecvError::Empty)));
        // Up to date: nothing to replay, not a gap.
        let sub = hub.subscribe(&t, Some(start + 6)).unwrap();
        assert!(sub.replay.is_empty());
    }

    #[test]
    fn since_older_than_the_window_or_unknown_is_a_gap() {
        let hub = hub(StreamSettings {
            retention_events: 3,
            ..StreamSettings::default()
        });
        let t = tenant("loja");
        let start = hub.subscribe(&t, None).unwrap().position;
        for n in 0..5 {
            text(&hub, &t, n);
        }
        // Retained: start+3 ..= start+5. `since = start+2` needs nothing that is gone.
        assert_eq!(
            seqs(&hub.subscribe(&t, Some(start + 2)).unwrap().replay),
            vec![start + 3, start + 4, start + 5]
        );
        assert_eq!(
            hub.subscribe(&t, Some(start + 1)).unwrap_err(),
            SinceTooOld {
                oldest: start + 3,
                last: start + 5
            }
        );
        // A position from a previous process (numbers are wall-clock based) or never reached.
        assert!(hub.subscribe(&t, Some(0)).is_err());
        assert!(hub.subscribe(&t, Some(start + 6)).is_err());
    }

    #[test]
    fn age_limits_the_window_by_publish_time_not_by_message_time() {
        let hub = hub(StreamSettings {
            retention_age: Duration::from_millis(50),
            ..StreamSettings::default()
        });
        let t = tenant("loja");
        let start = hub.subscribe(&t, None).unwrap().position;
        // Message times are old (a provider timestamp): still retained.
        text(&hub, &t, 0);
        text(&hub, &t, 1);
        assert_eq!(
            hub.subscribe(&t, Some(start)).unwrap().replay.len(),
            2,
            "an old message time must not expire an event"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert!(hub.subscribe(&t, Some(start)).is_err());
        // Caught up before the events expired: still fine.
        assert!(
            hub.subscribe(&t, Some(start + 2))
                .unwrap()
                .replay
                .is_empty()
        );
    }

    #[test]
    fn tenants_are_isolated() {
        let hub = hub(StreamSettings::default());
        let (a, b) = (tenant("loja-a"), tenant("loja-b"));
        let mut sub_a = hub.subscribe(&a, None).unwrap();
        text(&hub, &b, 0);
        assert!(matches!(sub_a.live.try_recv(), Err(TryRecvError::Empty)));
        text(&hub, &a, 1);
        assert!(sub_a.live.try_recv().unwrap().json.contains("mensagem 1"));
    }

    #[test]
    fn a_subscriber_that_falls_behind_the_ring_lags_and_others_do_not() {
        let hub = hub(StreamSettings {
            client_queue: 4,
            ..StreamSettings::default()
        });
        let t = tenant("loja");
        let mut slow = hub.subscribe(&t, None).unwrap();
        let mut fast = hub.subscribe(&t, None).unwrap();
        for n in 0..10 {
            text(&hub, &t, n);
            assert!(fast.live.try_recv().is_ok());
        }
        assert!(matches!(slow.live.try_recv(), Err(TryRecvError::Lagged(_))));
    }

    #[test]
    fn the_ring_is_freed_when_nobody_listens() {
        let hub = hub(StreamSettings::default());
        let t = tenant("loja");
        let sub = hub.subscribe(&t, None).unwrap();
        drop(sub);
        text(&hub, &t, 0);
        let entry = hub.tenant(&t);
        assert!(entry.lock().unwrap().live.is_none());
        assert_eq!(entry.lock().unwrap().window.len(), 1);
    }

    #[test]
    fn a_forgotten_tenant_ends_its_streams_and_never_reuses_a_seq() {
        let hub = hub(StreamSettings::default());
        let t = tenant("loja");
        let mut sub = hub.subscribe(&t, None).unwrap();
        for n in 0..3 {
            text(&hub, &t, n);
        }
        hub.forget(&t);
        for _ in 0..3 {
            assert!(sub.live.try_recv().is_ok());
        }
        assert!(matches!(sub.live.try_recv(), Err(TryRecvError::Closed)));
        let again = hub.subscribe(&t, None).unwrap();
        assert!(again.position >= sub.position + 3);
    }

    #[test]
    fn events_published_while_subscribing_are_seen_exactly_once() {
        let hub = Arc::new(hub(StreamSettings::default()));
        let t = tenant("loja");
        let start = hub.subscribe(&t, None).unwrap().position;
        let publisher = {
            let (hub, t) = (hub.clone(), t.clone());
            std::thread::spawn(move || {
                for n in 0..2000 {
                    text(&hub, &t, n);
                }
            })
        };
        let mut subs = Vec::new();
        for _ in 0..50 {
            subs.push(hub.subscribe(&t, Some(start)).unwrap());
        }
        publisher.join().unwrap();
        for mut sub in subs {
            let mut got = seqs(&sub.replay);
            while let Ok(e) = sub.live.try_recv() {
                got.push(e.seq);
            }
            let expected: Vec<u64> = (start + 1..=start + 2000).collect();
            assert_eq!(got, expected);
        }
    }
}
