//! Extractors that authenticate the tenant API: `TenantAuth` resolves the tenant of the bearer API
//! key (or `?access_token=` for browsers) before the handler runs.

use std::sync::Arc;

use actors::TenantRuntime;
use axum::extract::{FromRef, FromRequestParts, Query};
use axum::http::request::Parts;

use crate::app::AppState;
use crate::error::ApiError;

/// The authenticated tenant of a tenant-API request.
#[derive(Debug, Clone)]
pub struct TenantAuth(pub Arc<TenantRuntime>);

impl<S> FromRequestParts<S> for TenantAuth
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        #[derive(serde::Deserialize)]
        struct Token {
            access_token: Option<String>,
        }
        let token = Query::<Token>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|q| q.0.access_token);
        app.require_tenant(&parts.headers, token.as_deref())
            .map(TenantAuth)
    }
}
