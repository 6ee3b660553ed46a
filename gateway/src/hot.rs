//! The gateway's side of the Redis hot state ([`schema::redis`]): the per-tenant rate limit and
//! the dedupe guard of the webhooks, the `/ready` check, and the relay that sends dashboard events
//! through Redis so that a dashboard connected to any node sees every event of its tenant.
//!
//! **Invariant:** when Redis is configured and does not answer, a webhook is answered 503 (the
//! provider retries) before anything is recorded; nothing is lost and nothing is processed twice,
//! because the store's dedupe stays authoritative and Redis only short-cuts keys the store has
//! confirmed.

use std::sync::Arc;

use axum::http::StatusCode;
use engine::TenantId;
use engine::message::IngestItem;
use schema::redis::{DedupeState, HotState, RemoteEvent};
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, ApiResult};
use crate::events::{EventHub, EventRelay};

/// The hot state and the limits that use it.
#[derive(Debug, Clone)]
pub struct Hot {
    pub state: HotState,
    /// Messages per second each tenant may send through its webhooks; 0: no limit.
    pub tenant_rate: u64,
}

impl Hot {
    /// Refuses a webhook body of `messages` messages over the tenant's rate (429), or when Redis
    /// cannot count it (503).
    pub async fn check_rate(&self, tenant: &TenantId, messages: usize) -> ApiResult<()> {
        if self.tenant_rate == 0 || messages == 0 {
            return Ok(());
        }
        let decision = self
            .state
            .rate(tenant.as_str(), messages as u64, self.tenant_rate)
            .await
            .map_err(unavailable)?;
        if decision.allowed {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "over the tenant's rate of {} messages per second; retry in {} ms",
                    self.tenant_rate,
                    decision.retry_after.as_millis().max(1)
                ),
            ))
        }
    }

    /// Takes out the items Redis knows the store recorded (duplicates) and claims the others.
    /// Returns the items to record and how many were duplicates.
    pub async fn claim(
        &self,
        tenant: &TenantId,
        items: Vec<IngestItem>,
    ) -> ApiResult<(Vec<IngestItem>, usize)> {
        let keys: Vec<String> = items.iter().map(|i| i.dedupe_key.clone()).collect();
        let states = self
            .state
            .dedupe_claim(tenant.as_str(), &keys)
            .await
            .map_err(unavailable)?;
        let before = items.len();
        let kept: Vec<IngestItem> = items
            .into_iter()
            .zip(states)
            .filter(|(_, state)| *state != DedupeState::Done)
            .map(|(item, _)| item)
            .collect();
        let duplicates = before - kept.len();
        Ok((kept, duplicates))
    }

    /// After the store answered: recorded keys become `done` (later deliveries stop here),
    /// failed ones are released for the provider's retry. Best effort: the store stays
    /// authoritative either way.
    pub async fn settle(&self, tenant: &TenantId, keys: &[String], recorded: bool) {
        let result = if recorded {
            self.state.dedupe_done(tenant.as_str(), keys).await
        } else {
            self.state.dedupe_release(tenant.as_str(), keys).await
        };
        if let Err(e) = result {
            tracing::warn!(tenant = %tenant, error = %e, recorded, "dedupe keys not settled in redis; the store dedupes the next delivery");
        }
    }

    /// `"ok"` or `"error: …"`, for `/ready`.
    pub async fn check(&self) -> String {
        match self.state.ping().await {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("error: {e}"),
        }
    }

    /// Routes the hub's events through Redis and feeds the events of every node (this one
    /// included) back into the hub, until `stop` is cancelled.
    pub fn start_fan_out(&self, hub: &Arc<EventHub>, stop: CancellationToken) {
        let (relay_tx, mut relay_rx) =
            tokio::sync::mpsc::channel::<(TenantId, String)>(RELAY_QUEUE);
        hub.set_relay(Arc::new(RedisRelay { queue: relay_tx }));
        // One publisher, so the events of this node reach Redis in the order they were made.
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some((tenant, rest)) = relay_rx.recv().await {
                if let Err(e) = state.publish_event(tenant.as_str(), &rest).await {
                    tracing::warn!(tenant = %tenant, error = %e, "dashboard event not published: redis is unavailable");
                }
            }
        });
        let (state, hub) = (self.state.clone(), hub.clone());
        tokio::spawn(async move {
            let on_event = |event: RemoteEvent| {
                if let Ok(tenant) = TenantId::parse(&event.tenant) {
                    hub.ingest_remote(&tenant, event.seq, event.json);
                }
            };
            schema::redis::run_event_subscriber(
                state,
                on_event,
                || tracing::warn!("redis event subscription resumed; events published meanwhile are lost to this node's dashboards"),
                stop.cancelled_owned(),
            )
            .await;
        });
    }
}

/// Events waiting to be published; beyond this the hub drops (it must never block).
const RELAY_QUEUE: usize = 65_536;

/// Queues each event for the publisher task, which sends it through Redis (where it is numbered
/// and fanned out to every node, this one included).
#[derive(Debug)]
struct RedisRelay {
    queue: tokio::sync::mpsc::Sender<(TenantId, String)>,
}

impl EventRelay for RedisRelay {
    fn relay(&self, tenant: &TenantId, rest: String) {
        if self.queue.try_send((tenant.clone(), rest)).is_err() {
            tracing::warn!(tenant = %tenant, "dashboard event dropped: the redis publisher is behind");
        }
    }
}

fn unavailable(error: schema::redis::HotError) -> ApiError {
    tracing::warn!(error = %error, "redis unavailable");
    ApiError::unavailable("the shared state is unavailable; retry")
}
