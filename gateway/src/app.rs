//! The application state shared by every handler, and the router.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use actors::{ActorMetrics, Clock, EngineHandle, TenantDirectory, TenantRuntime};
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use engine::TenantId;
use engine::ports::Store;
use prometheus::Registry;

use crate::api::{admin, ops, stream, tenant, webhooks};
use crate::console;
use crate::error::ApiError;
use crate::events::EventHub;
use crate::metrics::GatewayMetrics;
use crate::util::{secure_eq, sha256_hex};

#[derive(Debug, Clone)]
pub struct AppState(pub Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub store: Arc<dyn Store>,
    pub engine: EngineHandle,
    pub directory: TenantDirectory,
    pub hub: Arc<EventHub>,
    pub metrics: GatewayMetrics,
    pub actor_metrics: Arc<ActorMetrics>,
    pub registry: Registry,
    pub admin_token: String,
    pub max_body: usize,
    pub clock: Clock,
    /// False while shutting down, so load balancers stop sending.
    pub accepting: AtomicBool,
    /// API key hash → tenant.
    api_keys: RwLock<HashMap<String, TenantId>>,
    /// The Redis hot state, when `CONVERSA_REDIS_URL` is set (set once, right after building).
    pub hot: std::sync::OnceLock<crate::hot::Hot>,
    /// The embeddings client, when `CONVERSA_EMBEDDINGS_MODEL` is set (set once, right after
    /// building).
    pub embedder: std::sync::OnceLock<Arc<crate::embeddings::OpenAiEmbedder>>,
    /// Held while a knowledge text is embedded and stored, so two saves (or a save and the start
    /// backfill) on this node never interleave.
    pub knowledge_locks: Arc<crate::embeddings::KnowledgeLocks>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        engine: EngineHandle,
        directory: TenantDirectory,
        hub: Arc<EventHub>,
        metrics: GatewayMetrics,
        actor_metrics: Arc<ActorMetrics>,
        registry: Registry,
        admin_token: String,
        max_body: usize,
        clock: Clock,
    ) -> Self {
        let state = Self(Arc::new(Inner {
            store,
            engine,
            directory,
            hub,
            metrics,
            actor_metrics,
            registry,
            admin_token,
            max_body,
            clock,
            accepting: AtomicBool::new(true),
            api_keys: RwLock::new(HashMap::new()),
            hot: std::sync::OnceLock::new(),
            embedder: std::sync::OnceLock::new(),
            knowledge_locks: Arc::default(),
        }));
        state.reindex_api_keys();
        state
    }

    /// Rebuilds the API key index from the directory (after any tenant change).
    pub fn reindex_api_keys(&self) {
        let map = self
            .directory
            .all()
            .iter()
            .map(|rt| (rt.tenant.api_key_hash.clone(), rt.tenant.id.clone()))
            .collect();
        *self.api_keys.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Checks the admin bearer token.
    pub fn require_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match bearer(headers) {
            Some(token) if secure_eq(token, &self.admin_token) => Ok(()),
            Some(_) => Err(ApiError::unauthorized("invalid admin token")),
            None => Err(ApiError::unauthorized("missing bearer token")),
        }
    }

    /// Resolves the tenant of a tenant API key (header, or `access_token` for browsers).
    pub fn require_tenant(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Arc<TenantRuntime>, ApiError> {
        let key = bearer(headers)
            .or(query_token)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let hash = sha256_hex(key);
        let id = self
            .api_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
        tracing::Span::current().record("tenant", id.as_str());
        self.directory
            .get(&id)
            .ok_or_else(|| ApiError::unauthorized("invalid API key"))
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Every route of Conversa. Tests call it without a socket.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/webhooks/evolution/{tenant}", post(webhooks::evolution))
        .route("/webhooks/waha/{tenant}", post(webhooks::waha))
        .route(
            "/webhooks/meta/{tenant}",
            get(webhooks::meta_verify).post(webhooks::meta),
        )
        .route("/api/v1/tenants", post(admin::create).get(admin::list))
        .route(
            "/api/v1/tenants/{id}",
            get(admin::get).patch(admin::patch).delete(admin::delete),
        )
        .route(
            "/api/v1/settings",
            get(tenant::get_settings).put(tenant::put_settings),
        )
        .route(
            "/api/v1/knowledge",
            get(tenant::get_knowledge).put(tenant::put_knowledge),
        )
        .route("/api/v1/knowledge/search", get(tenant::search_knowledge))
        .route("/api/v1/conversations", get(tenant::list_conversations))
        .route(
            "/api/v1/conversations/{contact}",
            get(tenant::get_conversation),
        )
        .route(
            "/api/v1/conversations/{contact}/messages",
            get(tenant::list_messages).post(tenant::post_message),
        )
        .route(
            "/api/v1/conversations/{contact}/takeover",
            post(tenant::takeover),
        )
        .route(
            "/api/v1/conversations/{contact}/release",
            post(tenant::release),
        )
        .route(
            "/api/v1/contacts/{contact}",
            axum::routing::delete(tenant::erase_contact),
        )
        .route(
            "/api/v1/conversations/{contact}/last-prompt",
            get(tenant::last_prompt),
        )
        .route("/api/v1/stream", get(stream::stream))
        .route("/console", get(console::index))
        .route("/console/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), track_http))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Records every request's duration by method, matched route and status.
async fn track_http(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    // Every log line of the request carries its id, route and (once known) tenant.
    let request_id = uuid::Uuid::now_v7();
    let span = tracing::info_span!(
        "request",
        id = %request_id,
        method = %method,
        route = %route,
        tenant = tracing::field::Empty,
    );
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    state
        .metrics
        .http_seconds
        .with_label_values(&[&method, &route, response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}
