//! The admin API (`Authorization: Bearer <CONVERSA_ADMIN_TOKEN>`): tenants.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::tenant::{ProviderConfig, Tenant, TenantSettings, TenantStatus};
use engine::{EngineError, TenantId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::util::{random_secret, sha256_hex};

/// Parses a JSON body into `T`, answering 400 with serde's message on failure.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the body is empty; JSON expected"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    id: String,
    name: String,
    provider: Value,
    #[serde(default)]
    settings: Option<Value>,
}

fn parse_provider(value: Value) -> ApiResult<ProviderConfig> {
    let provider: ProviderConfig = serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable("provider", &e.to_string()))?;
    provider.validate()?;
    Ok(provider)
}

pub async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    app.require_admin(&headers)?;
    let req: CreateTenant = json_body(&body)?;
    let id = TenantId::parse(&req.id)?;
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(EngineError::invalid("name", "must be 1 to 200 characters").into());
    }
    let provider = parse_provider(req.provider)?;
    let settings = match req.settings {
        Some(patch) => TenantSettings::default().apply_patch(&patch)?,
        None => TenantSettings::default(),
    };
    let api_key = random_secret("cvk_");
    let tenant = Tenant {
        id: id.clone(),
        name,
        provider,
        settings,
        status: TenantStatus::Active,
        api_key_hash: sha256_hex(&api_key),
        created_at: app.clock.now(),
    };
    app.store.create_tenant(&tenant).await?;
    app.directory.upsert(tenant, None);
    app.reindex_api_keys();
    tracing::info!(tenant = %id, "tenant created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "api_key": api_key})),
    )
        .into_response())
}

pub async fn list(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    app.require_admin(&headers)?;
    let tenants = app.store.list_tenants().await?;
    Ok(Json(Value::Array(
        tenants.iter().map(Tenant::public_view).collect(),
    )))
}

async fn load(app: &AppState, id: &str) -> ApiResult<Tenant> {
    let id = TenantId::parse(id).map_err(|_| ApiError::not_found("tenant not found"))?;
    app.store
        .get_tenant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant not found"))
}

pub async fn get(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    app.require_admin(&headers)?;
    Ok(Json(load(&app, &id).await?.public_view()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchTenant {
    name: Option<String>,
    status: Option<TenantStatus>,
    provider: Option<Value>,
    settings: Option<Value>,
}

pub async fn patch(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    app.require_admin(&headers)?;
    let req: PatchTenant = json_body(&body)?;
    let mut tenant = load(&app, &id).await?;
    if let Some(name) = req.name {
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(EngineError::invalid("name", "must be 1 to 200 characters").into());
        }
        tenant.name = name;
    }
    if let Some(status) = req.status {
        tenant.status = status;
    }
    if let Some(provider) = req.provider {
        tenant.provider = parse_provider(provider)?;
    }
    if let Some(patch) = req.settings {
        tenant.settings = tenant.settings.apply_patch(&patch)?;
    }
    app.store.update_tenant(&tenant).await?;
    let view = tenant.public_view();
    tracing::info!(tenant = %tenant.id, status = ?tenant.status, "tenant updated");
    app.directory.upsert(tenant, None);
    Ok(Json(view))
}

pub async fn delete(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.require_admin(&headers)?;
    let tenant = load(&app, &id).await?;
    app.directory.remove(&tenant.id);
    app.reindex_api_keys();
    app.engine.stop_tenant(&tenant.id).await?;
    app.store.delete_tenant(&tenant.id).await?;
    app.hub.forget(&tenant.id);
    tracing::info!(tenant = %tenant.id, "tenant deleted");
    Ok(StatusCode::NO_CONTENT)
}
