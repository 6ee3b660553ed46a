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
    let ok = store == "ok" && app.is_accepting();
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "checks": { app.store.backend(): store, "accepting": accepting },
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
