//! The event hub: every dashboard event of a tenant gets the tenant-wide, strictly increasing
//! `seq`, is kept in a bounded window for resync, and is broadcast to live subscribers.
//!
//! Sequence numbers start from the wall clock in microseconds at process start, so they keep
//! increasing across restarts without being stored.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use engine::events::EventBody;
use engine::ports::EventSink;
use engine::{ContactId, TenantId, Timestamp};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::util::rfc3339;

/// One event as sent to dashboards: pre-serialised once, shared by every subscriber.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub at: Timestamp,
    pub json: Arc<str>,
}

#[derive(Debug)]
struct TenantEvents {
    next_seq: u64,
    window: VecDeque<Event>,
    live: broadcast::Sender<Event>,
}

/// Retention of the resync window.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_events: usize,
    pub max_age_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_events: 10_000,
            max_age_ms: 3_600_000,
        }
    }
}

#[derive(Debug)]
pub struct EventHub {
    tenants: Mutex<HashMap<TenantId, TenantEvents>>,
    first_seq: u64,
    retention: Retention,
    published: prometheus::IntCounterVec,
}

/// What a subscriber gets: the retained events after `since`, then the live stream.
#[derive(Debug)]
pub struct Subscription {
    pub replay: Vec<Event>,
    pub live: broadcast::Receiver<Event>,
    /// `since` is older than the window: the client must reload through the REST API.
    pub gap: bool,
}

impl EventHub {
    pub fn new(retention: Retention, published: prometheus::IntCounterVec) -> Self {
        let first_seq = actors::clock::system_now().as_millis().max(1) as u64 * 1000;
        Self {
            tenants: Mutex::new(HashMap::new()),
            first_seq,
            retention,
            published,
        }
    }

    fn with_tenant<R>(&self, tenant: &TenantId, f: impl FnOnce(&mut TenantEvents) -> R) -> R {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let entry = tenants
            .entry(tenant.clone())
            .or_insert_with(|| TenantEvents {
                next_seq: self.first_seq,
                window: VecDeque::new(),
                live: broadcast::channel(4096).0,
            });
        f(entry)
    }

    /// Subscribes to a tenant's events after `since` (all retained events when `None` is not
    /// wanted: `None` means live only). Replay and subscription are taken under one lock, so no
    /// event falls between them and none is seen twice.
    pub fn subscribe(&self, tenant: &TenantId, since: Option<u64>) -> Subscription {
        self.with_tenant(tenant, |t| {
            let live = t.live.subscribe();
            let Some(since) = since else {
                return Subscription {
                    replay: Vec::new(),
                    live,
                    gap: false,
                };
            };
            let oldest = t.window.front().map_or(t.next_seq, |e| e.seq);
            // Events after `since` that are no longer retained mean a gap.
            let gap = since.saturating_add(1) < oldest && since < t.next_seq.saturating_sub(1);
            let replay = t.window.iter().filter(|e| e.seq > since).cloned().collect();
            Subscription { replay, live, gap }
        })
    }

    pub fn forget(&self, tenant: &TenantId) {
        self.tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
    }
}

impl EventSink for EventHub {
    fn publish(&self, tenant: &TenantId, contact: &ContactId, at: Timestamp, body: EventBody) {
        let kind = body.kind();
        let Ok(Value::Object(mut map)) = serde_json::to_value(&body) else {
            return;
        };
        let retention = self.retention;
        self.with_tenant(tenant, |t| {
            let seq = t.next_seq;
            t.next_seq += 1;
            map.insert("seq".into(), Value::from(seq));
            map.insert("conversation".into(), Value::String(contact.to_string()));
            map.insert("at".into(), Value::String(rfc3339(at)));
            let json: Arc<str> = Value::Object(map).to_string().into();
            let event = Event { seq, at, json };
            t.window.push_back(event.clone());
            while t.window.len() > retention.max_events
                || t.window
                    .front()
                    .is_some_and(|e| at.as_millis() - e.at.as_millis() > retention.max_age_ms)
            {
                t.window.pop_front();
            }
            // No receivers is fine: nobody is watching this tenant right now.
            let _ = t.live.send(event);
        });
        self.published.with_label_values(&[kind]).inc();
    }
}
