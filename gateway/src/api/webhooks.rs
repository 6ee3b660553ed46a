//! Provider webhooks: authenticate, parse, record durably, answer, then dispatch.
//!
//! **Invariant:** a webhook is answered 200 only after every message in it is in the store (history,
//! dedupe key and inbox entry in one transaction). Dispatching to the actors happens after that,
//! and the inbox replays anything the actors did not finish, so a crash after the 200 loses nothing.
//!
//! **Invariant:** nothing is written before the whole body is authenticated and parsed, so a body
//! that is refused (401, 400, 413) leaves no trace but a metric.
//!
//! Every route answers errors as JSON `{"error":{"code","message"}}`: 404 unknown tenant, 401 bad or
//! missing token or signature (a replayed WAHA body older than its window included), 413 body over
//! `CONVERSA_MAX_BODY_BYTES` or over [`MAX_EVENTS_PER_BODY`] events, 400 not JSON (a
//! `Content-Type` that is present and not JSON included: code `unsupported_media_type`), 503 while
//! shutting down or when the store cannot record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actors::TenantRuntime;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::TenantId;
use engine::events::EventBody;
use engine::message::{
    Amendment, Author, DeliveryStatus, Direction, InboxKind, IngestItem, IngestOutcome,
    StoredMessage,
};
use engine::tenant::ProviderConfig;
use engine::{EngineError, MessageId};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::providers::meta::{self, HandshakeError};
use crate::providers::waha::{self, signature as waha_signature};
use crate::providers::{self, AttentionBoard, ProviderEvent, ProviderProblem, attention};
use crate::util::secure_eq;

/// Most events one body may carry; a larger batch is answered 413. Meta batches far fewer, and a
/// body this large would hold one transaction open for too long.
pub const MAX_EVENTS_PER_BODY: usize = 10_000;

/// The `{tenant}` path segment; a segment that cannot be decoded is an unknown tenant.
type RawTenant = Result<Path<String>, PathRejection>;
/// The query string; one that cannot be read is a JSON 400, not axum's plain-text rejection.
type RawQuery = Result<Query<HashMap<String, String>>, QueryRejection>;

/// `POST /webhooks/evolution/{tenant}`: authenticated by the tenant's webhook token.
pub async fn evolution(
    State(app): State<AppState>,
    raw: RawTenant,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    const PROVIDER: &str = providers::evolution::KIND;
    let started = Instant::now();
    let result = async {
        let rt = tenant_of(&app, raw, PROVIDER)?;
        let ProviderConfig::Evolution { webhook_token, .. } = &rt.tenant.provider else {
            return Err(ApiError::not_found(
                "tenant is not configured for evolution",
            ));
        };
        check_token(&headers, &query_of(query)?, webhook_token)?;
        check_content_type(&headers)?;
        let bytes = read_body(body, &headers, app.max_body).await?;
        let events = providers::evolution::parse(&bytes).map_err(|e| malformed(&e))?;
        ingest(&app, &rt, PROVIDER, events).await
    }
    .await;
    finish(&app, PROVIDER, started, result)
}

/// `POST /webhooks/waha/{tenant}`: authenticated by `X-Webhook-Hmac` when the tenant has an HMAC
/// secret (then a body signed more than [`waha_signature::REPLAY_WINDOW`] ago is refused), else by
/// the webhook token.
pub async fn waha(
    State(app): State<AppState>,
    raw: RawTenant,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    const PROVIDER: &str = waha::KIND;
    let started = Instant::now();
    let result = async {
        let rt = tenant_of(&app, raw, PROVIDER)?;
        let ProviderConfig::Waha {
            session,
            hmac_secret,
            webhook_token,
            ..
        } = &rt.tenant.provider
        else {
            return Err(ApiError::not_found("tenant is not configured for waha"));
        };
        let hmac_secret = hmac_secret.as_deref().filter(|secret| !secret.is_empty());
        let now = app.clock.now();
        let bytes = match hmac_secret {
            Some(secret) => {
                let bytes = read_body(body, &headers, app.max_body).await?;
                waha_signature::verify(
                    secret.as_bytes(),
                    &bytes,
                    header_str(&headers, waha_signature::SIGNATURE_HEADER),
                    header_str(&headers, waha_signature::ALGORITHM_HEADER),
                )
                .map_err(|e| ApiError::unauthorized(e.to_string()))?;
                let header_sent_at = waha_signature::header_timestamp(header_str(
                    &headers,
                    waha_signature::TIMESTAMP_HEADER,
                ));
                waha_signature::check_fresh(header_sent_at, now)
                    .map_err(|e| ApiError::unauthorized(e.to_string()))?;
                check_content_type(&headers)?;
                bytes
            }
            None => {
                check_token(
                    &headers,
                    &query_of(query)?,
                    webhook_token.as_deref().unwrap_or_default(),
                )?;
                check_content_type(&headers)?;
                read_body(body, &headers, app.max_body).await?
            }
        };
        let envelope = waha::parse_envelope(&bytes, session).map_err(|e| malformed(&e))?;
        if hmac_secret.is_some() {
            // The envelope's timestamp is inside the signed bytes, unlike the header.
            waha_signature::check_fresh(envelope.sent_at, now)
                .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        }
        ingest(&app, &rt, PROVIDER, envelope.events).await
    }
    .await;
    finish(&app, PROVIDER, started, result)
}

/// `GET /webhooks/meta/{tenant}`: the verification handshake. Answers `hub.challenge` as plain text
/// when `hub.mode=subscribe` and `hub.verify_token` matches; 403 otherwise.
pub async fn meta_verify(State(app): State<AppState>, raw: RawTenant, query: RawQuery) -> Response {
    let result = verify_subscription(&app, raw, query);
    let outcome = match &result {
        Ok(_) => "verified",
        Err(e) => e.code,
    };
    app.metrics
        .webhooks
        .with_label_values(&[meta::KIND, outcome])
        .inc();
    match result {
        Ok(challenge) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            challenge,
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

/// `POST /webhooks/meta/{tenant}`: `X-Hub-Signature-256` is always checked over the raw bytes
/// before anything is parsed. Meta's signature has no timestamp; deduplication is the replay
/// defence (see [`meta::signature`]).
pub async fn meta(
    State(app): State<AppState>,
    raw: RawTenant,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    const PROVIDER: &str = meta::KIND;
    let started = Instant::now();
    let result = async {
        let rt = tenant_of(&app, raw, PROVIDER)?;
        let ProviderConfig::Meta {
            app_secret,
            phone_number_id,
            ..
        } = &rt.tenant.provider
        else {
            return Err(ApiError::not_found("tenant is not configured for meta"));
        };
        let bytes = read_body(body, &headers, app.max_body).await?;
        meta::signature::verify(
            app_secret.as_bytes(),
            &bytes,
            header_str(&headers, meta::signature::SIGNATURE_HEADER),
        )
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        check_content_type(&headers)?;
        let events = meta::parse(&bytes, phone_number_id).map_err(|e| malformed(&e))?;
        for event in &events {
            if let ProviderEvent::Message(message) = event
                && !message.from_me
            {
                // The typing indicator must name the contact's latest message.
                meta::remember_inbound(phone_number_id, &message.contact, &message.provider_id);
            }
        }
        ingest(&app, &rt, PROVIDER, events).await
    }
    .await;
    finish(&app, PROVIDER, started, result)
}

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

fn tenant_of(
    app: &AppState,
    raw: RawTenant,
    provider: &'static str,
) -> ApiResult<Arc<TenantRuntime>> {
    let Ok(Path(raw)) = raw else {
        return Err(ApiError::not_found("unknown tenant"));
    };
    let id = TenantId::parse(&raw).map_err(|_| ApiError::not_found("unknown tenant"))?;
    tracing::Span::current().record("tenant", id.as_str());
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

fn query_of(raw: RawQuery) -> ApiResult<HashMap<String, String>> {
    raw.map(|Query(query)| query)
        .map_err(|_| ApiError::bad_request("the query string cannot be read"))
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

/// Checks the webhook token against the tenant's, in constant time. An empty expected token
/// authenticates nothing.
fn check_token(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    expected: &str,
) -> ApiResult<()> {
    if expected.is_empty() {
        return Err(ApiError::unauthorized(
            "webhook authentication is not configured for this tenant",
        ));
    }
    match presented_token(headers, query) {
        Some(token) if secure_eq(token, expected) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("invalid webhook token")),
        None => Err(ApiError::unauthorized("missing webhook token")),
    }
}

/// Webhook bodies are JSON: a `Content-Type` that is present must say so (`application/json`,
/// `application/*+json` or `text/json`, parameters allowed). A missing one is accepted, since some
/// senders omit it.
fn check_content_type(headers: &HeaderMap) -> ApiResult<()> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/json" | "text/json") => Ok(()),
        Some(essence) if essence.starts_with("application/") && essence.ends_with("+json") => {
            Ok(())
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_media_type",
            "the body must be JSON (Content-Type: application/json)",
        )),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn malformed(error: &providers::ParseError) -> ApiError {
    ApiError::bad_request(error.to_string())
}

/// The Meta handshake of one tenant: the challenge to answer, or why not.
fn verify_subscription(app: &AppState, raw: RawTenant, query: RawQuery) -> ApiResult<String> {
    let rt = tenant_of(app, raw, meta::KIND)?;
    let ProviderConfig::Meta { verify_token, .. } = &rt.tenant.provider else {
        return Err(ApiError::not_found("tenant is not configured for meta"));
    };
    let query = query_of(query)?;
    let get = |name: &str| query.get(name).map(String::as_str);
    meta::handshake(
        get("hub.mode"),
        get("hub.verify_token"),
        get("hub.challenge"),
        verify_token,
    )
    .map_err(|error| match error {
        HandshakeError::Refused => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", error.to_string())
        }
        HandshakeError::BadChallenge => ApiError::bad_request(error.to_string()),
    })
}

fn finish(
    app: &AppState,
    provider: &'static str,
    started: Instant,
    result: ApiResult<Value>,
) -> ApiResult<Json<Value>> {
    register_attention_gauge(app);
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

/// Registers `conversa_provider_attention` in this server's registry (a no-op once it is there).
/// The gateway's metrics are built outside this module; registering the gauge there at startup
/// would make this unnecessary.
fn register_attention_gauge(app: &AppState) {
    AttentionBoard::register(&app.registry);
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
    if events.len() > MAX_EVENTS_PER_BODY {
        return Err(ApiError::too_large(format!(
            "the body carries more than {MAX_EVENTS_PER_BODY} events"
        )));
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
    let mut amended = 0usize;
    // Applied after the batch's messages are recorded: an edit may follow its message in one body.
    let mut amendments = Vec::new();
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
                    amended: None,
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
                info!(tenant = %tenant, provider, state = %state, reason = ?reason, "provider connection changed");
                let gauge = &app.metrics.provider_connection;
                for s in ["open", "connecting", "close", "refused"] {
                    gauge
                        .with_label_values(&[tenant.as_str(), s])
                        .set(i64::from(s == state));
                }
            }
            ProviderEvent::Edit {
                contact,
                original_id,
                from_me,
                text,
            } => amendments.push((contact, original_id, from_me, Amendment::Edit(text))),
            ProviderEvent::Revoke {
                contact,
                original_id,
                from_me,
            } => amendments.push((contact, original_id, from_me, Amendment::Revoke)),
            ProviderEvent::Problem(problem) => {
                count(problem.as_str());
                match &problem {
                    ProviderProblem::CredentialsRejected { detail } => {
                        attention().raise(tenant, provider, detail, now);
                    }
                    ProviderProblem::OutsideWindow {
                        contact,
                        provider_id,
                    } => {
                        // The delivery event (recorded below) tells dashboards why the answer
                        // failed; the conversation goes to a human with reason `outside_window`.
                        app.engine
                            .flag_for_human(tenant, contact, engine::Reason::OutsideWindow);
                        warn!(tenant = %tenant, provider, conversation_id = %contact, provider_id = %provider_id, "answer refused: the 24-hour customer service window is closed; a human or a template is needed");
                    }
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
    // With Redis: the tenant's rate (429), then the dedupe guard; Redis down is a 503.
    let mut hot_keys = Vec::new();
    if let Some(hot) = app.hot.get()
        && !items.is_empty()
    {
        hot.check_rate(tenant, items.len()).await?;
        let (kept, known) = hot.claim(tenant, items).await?;
        items = kept;
        for _ in 0..known {
            duplicates += 1;
            count("duplicate");
        }
        hot_keys = items.iter().map(|i| i.dedupe_key.clone()).collect();
    }
    if !items.is_empty() {
        let messages: Vec<StoredMessage> = items.iter().map(|i| i.message.clone()).collect();
        let outcomes = app.store.ingest(tenant, items, now).await;
        if let Some(hot) = app.hot.get() {
            hot.settle(tenant, &hot_keys, outcomes.is_ok()).await;
        }
        let outcomes = outcomes.map_err(|e| match e {
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
    for (contact, original_id, from_me, amendment) in amendments {
        let change = match amendment {
            Amendment::Edit(_) => "edited",
            Amendment::Revoke => "revoked",
        };
        let Some(message) = app
            .store
            .amend_message(tenant, &contact, &original_id, &amendment, now)
            .await?
        else {
            // An edit of a message never recorded here (a group, before the tenant existed, older
            // than the look-back) or of one already deleted.
            count(&format!("{change}_unknown"));
            info!(tenant = %tenant, provider, conversation_id = %contact, original_id = %original_id, from_me, change, "amendment of an unknown or deleted message ignored");
            continue;
        };
        count(change);
        amended += 1;
        info!(tenant = %tenant, provider, conversation_id = %contact, original_id = %original_id, from_me, change, "message amended");
        if message.direction == Direction::In && message.author == Author::Contact {
            // It may still wait in the conversation's buffer: the turn answers the new text.
            app.engine
                .amend(tenant, &contact, message.id.clone(), message.text.clone());
        }
        if let Some(a) = message.amended {
            use engine::ports::EventSink;
            app.hub.publish(
                tenant,
                &contact,
                now,
                EventBody::Amended {
                    id: message.id.to_string(),
                    change: a.change,
                    text: message.text,
                },
            );
        }
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
    Ok(json!({
        "status": "ok",
        "recorded": recorded,
        "duplicates": duplicates,
        "ignored": ignored,
        "amended": amended,
    }))
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
