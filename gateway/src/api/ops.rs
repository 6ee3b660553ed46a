//! `/health`, `/ready`, `/metrics`: no authentication.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, TextEncoder};
use serde_json::json;

use crate::app::AppState;

pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(app): State<AppState>) -> Response {
    let store = match app.store.health().await {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("error: {e}"),
    };
    let accepting = if app.is_accepting() {
        "ok"
    } else {
        "shutting down"
    };
    let redis = match app.hot.get() {
        Some(hot) => Some(hot.check().await),
        None => None,
    };
    let ok = store == "ok" && app.is_accepting() && redis.as_deref().is_none_or(|r| r == "ok");
    let mut checks = json!({ app.store.backend(): store, "accepting": accepting });
    if let Some(redis) = redis {
        checks["redis"] = json!(redis);
    }
    // Tenants whose provider needs a person (an expired token, a refused key). Reported, but one
    // tenant's credentials do not take the whole instance out of rotation.
    let attention: serde_json::Map<String, serde_json::Value> = crate::providers::attention()
        .snapshot()
        .into_iter()
        .filter(|(t, _)| app.directory.get(t).is_some())
        .map(|(t, a)| {
            let view = json!({"provider": a.provider, "reason": a.reason, "since": crate::util::rfc3339(a.since)});
            (t.to_string(), view)
        })
        .collect();
    checks["providers"] = if attention.is_empty() {
        json!("ok")
    } else {
        json!({ "needs_attention": attention })
    };
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "checks": checks,
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    let mut buffer = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&app.registry.gather(), &mut buffer) {
        tracing::error!(error = %e, "metrics encoding failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        buffer,
    )
        .into_response()
}
