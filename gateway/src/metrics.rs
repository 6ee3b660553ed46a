//! The gateway's metrics and the one `Registry` served at `/metrics`.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    /// Webhook bodies by provider and outcome (`accepted`, `unauthorized`, `malformed`, …).
    pub webhooks: IntCounterVec,
    /// Events inside webhook bodies by provider and what became of them (`recorded`, `duplicate`,
    /// `ignored_group`, `delivery`, …).
    pub webhook_events: IntCounterVec,
    /// Time to answer a webhook (durable record included) by provider.
    pub webhook_ack_seconds: HistogramVec,
    /// HTTP requests by method, matched route and status.
    pub http_seconds: HistogramVec,
    /// Conversations by state (per tenant while tenants are few).
    pub conversations: IntGaugeVec,
    /// Provider connection state reported by webhooks, per tenant (1 for the current state).
    pub provider_connection: IntGaugeVec,
    /// Dashboard events published by type.
    pub events_published: IntCounterVec,
    /// Dashboard WebSocket connections open now.
    pub dashboard_clients: IntGauge,
    /// Dashboard connections closed by the server, by reason (`slow_client`, `since_too_old`,
    /// `idle`).
    pub dashboard_dropped: IntCounterVec,
    /// Dashboard commands by type and outcome (`ok` or the error code).
    pub dashboard_commands: IntCounterVec,
    /// Store calls by backend and operation (every call, success or not).
    pub store_seconds: HistogramVec,
    /// Store calls that failed, by backend, operation and error kind (`unavailable`, `internal`, …).
    pub store_errors: IntCounterVec,
    /// Age of the oldest conversation waiting for a human (`AGUARDANDO_HUMANO`), per tenant while
    /// tenants are few (else `tenant="_all"`); 0 when none waits.
    pub handoff_oldest_seconds: IntGaugeVec,
}

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let fast = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let m = Self {
            webhooks: IntCounterVec::new(
                Opts::new(
                    "conversa_webhooks_total",
                    "Webhook requests by provider and outcome",
                ),
                &["provider", "outcome"],
            )?,
            webhook_events: IntCounterVec::new(
                Opts::new(
                    "conversa_webhook_events_total",
                    "Events in webhook bodies by provider and result",
                ),
                &["provider", "result"],
            )?,
            webhook_ack_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "conversa_webhook_ack_seconds",
                    "Time to answer a webhook, durable record included",
                )
                .buckets(fast.clone()),
                &["provider"],
            )?,
            http_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "conversa_http_request_duration_seconds",
                    "HTTP requests by method, route and status",
                )
                .buckets(fast),
                &["method", "route", "status"],
            )?,
            conversations: IntGaugeVec::new(
                Opts::new(
                    "conversa_conversations",
                    "Conversations by tenant and state",
                ),
                &["tenant", "state"],
            )?,
            provider_connection: IntGaugeVec::new(
                Opts::new(
                    "conversa_provider_connection",
                    "Provider connection state per tenant (1 = current)",
                ),
                &["tenant", "state"],
            )?,
            events_published: IntCounterVec::new(
                Opts::new(
                    "conversa_events_published_total",
                    "Dashboard events published by type",
                ),
                &["type"],
            )?,
            dashboard_clients: IntGauge::new(
                "conversa_dashboard_clients",
                "Dashboard WebSocket connections open now",
            )?,
            dashboard_dropped: IntCounterVec::new(
                Opts::new(
                    "conversa_dashboard_dropped_total",
                    "Dashboard connections closed by the server, by reason",
                ),
                &["reason"],
            )?,
            dashboard_commands: IntCounterVec::new(
                Opts::new(
                    "conversa_dashboard_commands_total",
                    "Dashboard commands by type and outcome",
                ),
                &["type", "outcome"],
            )?,
            store_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "conversa_store_operation_seconds",
                    "Store calls by backend and operation",
                )
                .buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5,
                ]),
                &["backend", "op"],
            )?,
            store_errors: IntCounterVec::new(
                Opts::new(
                    "conversa_store_errors_total",
                    "Failed store calls by backend, operation and error kind",
                ),
                &["backend", "op", "kind"],
            )?,
            handoff_oldest_seconds: IntGaugeVec::new(
                Opts::new(
                    "conversa_handoff_oldest_waiting_seconds",
                    "Age of the oldest conversation waiting for a human, per tenant",
                ),
                &["tenant"],
            )?,
        };
        registry.register(Box::new(m.webhooks.clone()))?;
        registry.register(Box::new(m.webhook_events.clone()))?;
        registry.register(Box::new(m.webhook_ack_seconds.clone()))?;
        registry.register(Box::new(m.http_seconds.clone()))?;
        registry.register(Box::new(m.conversations.clone()))?;
        registry.register(Box::new(m.provider_connection.clone()))?;
        registry.register(Box::new(m.events_published.clone()))?;
        registry.register(Box::new(m.dashboard_clients.clone()))?;
        registry.register(Box::new(m.dashboard_dropped.clone()))?;
        registry.register(Box::new(m.dashboard_commands.clone()))?;
        registry.register(Box::new(m.store_seconds.clone()))?;
        registry.register(Box::new(m.store_errors.clone()))?;
        registry.register(Box::new(m.handoff_oldest_seconds.clone()))?;
        for reason in ["slow_client", "since_too_old", "idle"] {
            m.dashboard_dropped.with_label_values(&[reason]);
        }
        Ok(m)
    }
}

/// Refreshes `conversa_handoff_oldest_waiting_seconds`: for each tenant with conversations in
/// `AGUARDANDO_HUMANO`, the age of the one waiting longest (its handoff time is its human deadline
/// minus the tenant's `human_timeout_hours`). Reads at most `MAX_PAGES` pages per tenant.
pub async fn refresh_handoff_age(state: &crate::app::AppState) {
    const MAX_TENANT_LABELS: usize = 50;
    const MAX_PAGES: usize = 20;
    use engine::conversation::ConversationState;
    let Ok(counts) = state.store.state_counts().await else {
        return;
    };
    let now = state.clock.now();
    let per_tenant = state.directory.len() <= MAX_TENANT_LABELS;
    let gauge = &state.metrics.handoff_oldest_seconds;
    let mut ages: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for (tenant, s, n) in counts {
        if s != ConversationState::AguardandoHumano || n == 0 {
            continue;
        }
        let hours = state
            .directory
            .get(&tenant)
            .map_or(24.0, |rt| rt.tenant.settings.human_timeout_hours);
        let timeout_ms = (hours * 3_600_000.0) as i64;
        let mut oldest_ms = 0i64;
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let Ok(page) = state
                .store
                .list_conversations(
                    &tenant,
                    Some(ConversationState::AguardandoHumano),
                    500,
                    cursor.as_deref(),
                )
                .await
            else {
                break;
            };
            for c in &page.items {
                let since_ms = c
                    .human_deadline
                    .map_or(c.updated_at.as_millis(), |d| d.as_millis() - timeout_ms);
                oldest_ms = oldest_ms.max(now.as_millis() - since_ms);
            }
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        let label = if per_tenant {
            tenant.to_string()
        } else {
            "_all".to_owned()
        };
        let age = ages.entry(label).or_default();
        *age = (*age).max(oldest_ms / 1000);
    }
    gauge.reset();
    for (label, age) in ages {
        gauge.with_label_values(&[label.as_str()]).set(age);
    }
}
