//! The gateway's metrics and the one `Registry` served at `/metrics`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

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
        };
        registry.register(Box::new(m.webhooks.clone()))?;
        registry.register(Box::new(m.webhook_events.clone()))?;
        registry.register(Box::new(m.webhook_ack_seconds.clone()))?;
        registry.register(Box::new(m.http_seconds.clone()))?;
        registry.register(Box::new(m.conversations.clone()))?;
        registry.register(Box::new(m.provider_connection.clone()))?;
        registry.register(Box::new(m.events_published.clone()))?;
        Ok(m)
    }
}
