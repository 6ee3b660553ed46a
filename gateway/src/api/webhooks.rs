//! Provider webhooks: authenticate, parse, record durably, answer, then dispatch.
//!
//! **Invariant:** a webhook is answered 200 only after every message in it is in the store (history,
//! dedupe key and inbox entry in one transaction). Dispatching to the actors happens after that,
//! and the inbox replays anything the actors did not finish, so a crash after the 200 loses nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actors::TenantRuntime;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use engine::TenantId;
use engine::events::EventBody;
use engine::message::{
    Author, DeliveryStatus, Direction, InboxKind, IngestItem, IngestOutcome, StoredMessage,
};
use engine::tenant::ProviderConfig;
use engine::{EngineError, MessageId};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::providers::{self, ProviderEvent};
use crate::util::secure_eq;

/// Reads the whole body, refusing more than `max` bytes.
async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> ApiResult<axum::body::Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ApiError::too_large(format!(
            "the body is larger than {max} bytes"
        )));
    }
    axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::too_large(format!(
            "the body is larger than {max} bytes or could not be read"
        ))
    })
}

fn tenant_of(app: &AppState, raw: &str, provider: &'static str) -> ApiResult<Arc<TenantRuntime>> {
    let id = TenantId::parse(raw).map_err(|_| ApiError::not_found("unknown tenant"))?;
    let rt = app
        .directory
        .get(&id)
        .ok_or_else(|| ApiError::not_found("unknown tenant"))?;
    if rt.tenant.provider.kind() != provider {
        return Err(ApiError::not_found(format!(
            "tenant is not configured for {provider}"
        )));
    }
    Ok(rt)
}

/// The webhook token of a request: `Authorization: Bearer`, `apikey`, `x-webhook-token`, or `?token=`.
fn presented_token<'a>(
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
) -> Option<&'a str> {
    crate::app::bearer(headers)
        .or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()))
        .or_else(|| headers.get("x-webhook-token").and_then(|v| v.to_str().ok()))
        .or_else(|| query.get("token").map(String::as_str))
}

/// `POST /webhooks/evolution/{tenant}`.
pub async fn evolution(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    const PROVIDER: &str = "evolution";
    let started = Instant::now();
    let result = async {
        let rt = tenant_of(&app, &raw, PROVIDER)?;
        let ProviderConfig::Evolution { webhook_token, .. } = &rt.tenant.provider else {
            return Err(ApiError::not_found(
                "tenant is not configured for evolution",
            ));
        };
        match presented_token(&headers, &query) {
            Some(token) if secure_eq(token, webhook_token) => {}
            Some(_) => return Err(ApiError::unauthorized("invalid webhook token")),
            None => return Err(ApiError::unauthorized("missing webhook token")),
        }
        let bytes = read_body(body, &headers, app.max_body).await?;
        let events = providers::evolution::parse(&bytes)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        ingest(&app, &rt, PROVIDER, events).await
    }
    .await;
    finish(&app, PROVIDER, started, result)
}

fn finish(
    app: &AppState,
    provider: &'static str,
    started: Instant,
    result: ApiResult<Value>,
) -> ApiResult<Json<Value>> {
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(e) => e.code,
    };
    app.metrics
        .webhooks
        .with_label_values(&[provider, outcome])
        .inc();
    app.metrics
        .webhook_ack_seconds
        .with_label_values(&[provider])
        .observe(started.elapsed().as_secs_f64());
    result.map(Json)
}

/// Records the events of one webhook body and dispatches what needs the actors.
pub async fn ingest(
    app: &AppState,
    rt: &TenantRuntime,
    provider: &'static str,
    events: Vec<ProviderEvent>,
) -> ApiResult<Value> {
    if !app.is_accepting() {
        return Err(ApiError::unavailable("shutting down; retry"));
    }
    let tenant = &rt.tenant.id;
    let now = app.clock.now();
    let ttl = rt.tenant.settings.history_ttl_days;
    let count = |result: &str| {
        app.metrics
            .webhook_events
            .with_label_values(&[provider, result])
            .inc()
    };
    let mut items = Vec::new();
    let mut deliveries = Vec::new();
    let mut ignored = 0usize;
    for event in events {
        match event {
            ProviderEvent::Message(m) => {
                if m.from_me && app.store.is_own_message(tenant, &m.provider_id).await? {
                    count("ignored_own_echo");
                    ignored += 1;
                    continue;
                }
                let (direction, author, status) = if m.from_me {
                    (Direction::Out, Author::Human, Some(DeliveryStatus::Sent))
                } else {
                    (Direction::In, Author::Contact, None)
                };
                let message = StoredMessage {
                    id: MessageId(uuid::Uuid::now_v7().to_string()),
                    tenant: tenant.clone(),
                    contact: m.contact,
                    direction,
                    author,
                    kind: m.kind,
                    text: m.text,
                    provider_id: Some(m.provider_id),
                    at: now,
                    status,
                    expires_at: now.plus_days(ttl),
                };
                let inbox = if m.from_me {
                    Some(InboxKind::PhoneReply)
                } else {
                    message
                        .is_answerable()
                        .then_some(InboxKind::CustomerMessage)
                };
                items.push(IngestItem {
                    dedupe_key: m.dedupe_key,
                    message,
                    inbox,
                });
            }
            ProviderEvent::Delivery {
                provider_id,
                status,
                error,
            } => deliveries.push((provider_id, status, error)),
            ProviderEvent::Connection { state, reason } => {
                count("connection");
                tracing::info!(tenant = %tenant, provider, state = %state, reason = ?reason, "provider connection changed");
                let gauge = &app.metrics.provider_connection;
                for s in ["open", "connecting", "close", "refused"] {
                    gauge
                        .with_label_values(&[tenant.as_str(), s])
                        .set(i64::from(s == state));
                }
            }
            ProviderEvent::Ignored(reason) => {
                count(&format!("ignored_{}", reason.as_str()));
                ignored += 1;
            }
        }
    }

    let mut recorded = 0usize;
    let mut duplicates = 0usize;
    if !items.is_empty() {
        let messages: Vec<StoredMessage> = items.iter().map(|i| i.message.clone()).collect();
        let outcomes = app
            .store
            .ingest(tenant, items, now)
            .await
            .map_err(|e| match e {
                EngineError::Unavailable(_) => {
                    ApiError::unavailable("the message could not be recorded; retry")
                }
                other => ApiError::from(other),
            })?;
        let mut entries = Vec::new();
        for (message, outcome) in messages.into_iter().zip(outcomes) {
            match outcome {
                IngestOutcome::Duplicate => {
                    duplicates += 1;
                    count("duplicate");
                }
                IngestOutcome::Recorded(entry) => {
                    recorded += 1;
                    count("recorded");
                    app.hub_publish_message(&message);
                    entries.extend(entry);
                }
            }
        }
        app.engine.deliver(entries);
    }
    for (provider_id, status, error) in deliveries {
        count("delivery");
        if let Some(update) = app
            .store
            .record_delivery(tenant, &provider_id, status)
            .await?
        {
            use engine::ports::EventSink;
            app.hub.publish(
                tenant,
                &update.contact,
                now,
                EventBody::Delivery {
                    id: update.message_id.to_string(),
                    status: update.status,
                    error,
                },
            );
        }
    }
    Ok(json!({"status": "ok", "recorded": recorded, "duplicates": duplicates, "ignored": ignored}))
}

impl AppState {
    fn hub_publish_message(&self, m: &StoredMessage) {
        use engine::ports::EventSink;
        self.hub.publish(
            &m.tenant,
            &m.contact,
            m.at,
            EventBody::Message {
                id: m.id.to_string(),
                direction: m.direction,
                author: m.author,
                kind: m.kind,
                text: m.text.clone(),
                status: m.status,
            },
        );
    }
}
