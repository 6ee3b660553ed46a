//! `run()`: builds every part, serves until `shutdown` completes, then stops in order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actors::{ActorMetrics, Clock, Deps, TenantDirectory, TreePolicy};
use anyhow::Context;
use engine::knowledge::KnowledgeIndex;
use engine::ports::Store;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::app::{AppState, router};
use crate::config::Config;
use crate::events::{EventHub, StreamSettings};
use crate::metrics::GatewayMetrics;
use crate::outbound::HttpProviderFactory;
use crate::providers::{RetryPolicy, shared_http_client};

/// A running server, for tests: its address and the task serving it.
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub admin_token: String,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds the listener and serves in a task until `shutdown` completes.
pub async fn spawn(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (state, engine) = build(&config).await?;
    let admin_token = state.admin_token.clone();
    let task = tokio::spawn(serve(config, state, engine, listener, shutdown));
    Ok(Running {
        addr,
        admin_token,
        task,
    })
}

/// Runs the gateway until `shutdown` completes, then stops in this order:
/// 1. report not-ready and answer webhooks 503, so providers retry elsewhere or later;
/// 2. stop accepting connections and let in-flight requests finish;
/// 3. stop the actor tree (buffered turns stay pending in the durable inbox and are replayed at
///    the next start);
/// 4. exit. Steps 2–3 share one grace period; when it runs out we log and exit anyway.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let (state, engine) = build(&config).await?;
    serve(config, state, engine, listener, shutdown).await
}

async fn serve(
    config: Config,
    state: AppState,
    engine: actors::Engine,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let gauges = tokio::spawn(refresh_gauges(state.clone()));
    let app = router(state.clone());
    let stopping = state.clone();
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        stopping.stop_accepting();
        stopping.hub.close_streams();
        tracing::info!("shutting down: no longer accepting webhooks");
    });
    served.await.context("server error")?;
    gauges.abort();
    engine.shutdown(config.shutdown_grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the store, loads the tenants, starts the actor tree.
async fn build(config: &Config) -> anyhow::Result<(AppState, actors::Engine)> {
    let store: Arc<dyn Store> = match config.scylla_settings() {
        Some(settings) => open_scylla(settings).await?,
        None => Arc::new(
            schema::embedded::EmbeddedStore::open(&config.data_dir)
                .await
                .with_context(|| {
                    format!(
                        "cannot open the embedded store in {}",
                        config.data_dir.display()
                    )
                })?,
        ),
    };
    let registry = Registry::new();
    let gateway_metrics = GatewayMetrics::new(&registry)?;
    let store = crate::instrumented_store::InstrumentedStore::wrap(store, &gateway_metrics);
    let actor_metrics = Arc::new(ActorMetrics::new(&registry)?);
    crate::providers::AttentionBoard::register(&registry);
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;

    let http = shared_http_client(config.provider_timeout);
    let factory = Arc::new(HttpProviderFactory::new(http, RetryPolicy::default()));
    let directory = TenantDirectory::new(factory);
    for tenant in store.list_tenants().await? {
        let index = match store.get_knowledge(&tenant.id).await? {
            Some(k) => Arc::new(
                tokio::task::spawn_blocking(move || KnowledgeIndex::build(k.chunks)).await?,
            ),
            None => Arc::new(KnowledgeIndex::default()),
        };
        directory.upsert(tenant, Some(index));
    }
    tracing::info!(tenants = directory.len(), "tenants loaded");

    let llm: Option<Arc<dyn engine::ports::Llm>> = match config.llm() {
        Some(settings) => {
            tracing::info!(base_url = %settings.base_url, "answers come from the language model");
            Some(Arc::new(crate::llm::OpenAiLlm::new(
                settings,
                crate::llm::LlmMetrics::new(&registry)?,
            )))
        }
        None => {
            tracing::info!("no OPENAI_API_KEY: answers are extractive");
            None
        }
    };
    let embedder: Option<Arc<crate::embeddings::OpenAiEmbedder>> = match config.embeddings() {
        Some(settings) => {
            tracing::info!(base_url = %settings.base_url, model = %settings.model, "retrieval is hybrid: knowledge and turns are embedded");
            Some(Arc::new(crate::embeddings::OpenAiEmbedder::new(
                settings,
                crate::embeddings::EmbeddingsMetrics::new(&registry)?,
            )))
        }
        None => None,
    };
    let hub = Arc::new(EventHub::new(
        StreamSettings::from_config(config),
        gateway_metrics.events_published.clone(),
    ));
    // With Redis, dashboard events go through it (numbered there, seen by every node) from the
    // first one on, so the relay is in place before the actors replay anything.
    let hot = match config.redis_settings() {
        Some(settings) => {
            let state = schema::redis::HotState::new(settings).map_err(anyhow::Error::msg)?;
            let hot = crate::hot::Hot {
                state,
                tenant_rate: config.tenant_rate,
            };
            hot.start_fan_out(&hub, hub.closing());
            tracing::info!(
                tenant_rate = config.tenant_rate,
                "shared hot state in redis"
            );
            Some(hot)
        }
        None => None,
    };
    let clock = Clock::System;
    let policy = TreePolicy {
        idle_after: Duration::from_secs(config.idle_secs),
        deadline_scan: config.deadline_scan,
        ..TreePolicy::default()
    };
    let deps = Deps {
        store: store.clone(),
        events: hub.clone(),
        directory: directory.clone(),
        clock,
        policy,
        metrics: actor_metrics.clone(),
        llm,
        prompts: actors::prompts::PromptLog::default(),
        embedder: embedder
            .clone()
            .map(|e| e as Arc<dyn engine::ports::Embedder>),
    };
    let engine = actors::start(deps).await?;
    let admin_token = match &config.admin_token {
        Some(t) => t.clone(),
        None => {
            let token = crate::util::random_secret("cva_");
            // Printed once, on stdout, so the operator can use the admin API.
            println!("CONVERSA_ADMIN_TOKEN not set; generated admin token for this run: {token}");
            token
        }
    };
    let state = AppState::new(
        store,
        engine.handle.clone(),
        directory,
        hub,
        gateway_metrics,
        actor_metrics,
        registry,
        admin_token,
        config.max_body_bytes,
        clock,
    );
    if let Some(hot) = hot {
        let _ = state.hot.set(hot);
    }
    if let Some(embedder) = embedder {
        let _ = state.embedder.set(embedder.clone());
        tokio::spawn(crate::embeddings::backfill(
            embedder,
            state.store.clone(),
            state.directory.clone(),
            state.knowledge_locks.clone(),
        ));
    }
    Ok((state, engine))
}

/// The ScyllaDB store. Its session opens lazily; the tenants must be loaded before serving, so
/// this waits (with backoff, logging why) up to a minute for the cluster to answer, then fails
/// with the cluster's error. Later outages are reported by `/ready` and answered 503.
async fn open_scylla(settings: schema::scylla::ScyllaSettings) -> anyhow::Result<Arc<dyn Store>> {
    let store = schema::scylla::ScyllaStore::new(settings);
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match store.health().await {
            Ok(()) => return Ok(Arc::new(store)),
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                tracing::warn!(error = %e, "waiting for ScyllaDB");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => anyhow::bail!("ScyllaDB did not answer within a minute: {e}"),
        }
    }
}

/// `conversa migrate`: applies the CQL files of `schema/cql/` to `CONVERSA_SCYLLA_NODES`.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let settings = config.scylla_settings().ok_or_else(|| {
        anyhow::anyhow!("conversa migrate needs CONVERSA_SCYLLA_NODES (the cluster to migrate)")
    })?;
    let session = schema::scylla::connect(&settings, false)
        .await
        .map_err(anyhow::Error::msg)?;
    let report =
        schema::migrate::migrate(&session, &settings.keyspace, &config.scylla_replication).await?;
    for file in &report.skipped {
        println!("already applied: {file}");
    }
    for file in &report.applied {
        println!("applied: {file}");
    }
    println!(
        "keyspace {} is up to date ({} applied, {} already there)",
        settings.keyspace,
        report.applied.len(),
        report.skipped.len()
    );
    Ok(())
}

/// Keeps the conversations-by-state gauge current (per tenant while there are few tenants).
async fn refresh_gauges(state: AppState) {
    const MAX_TENANT_LABELS: usize = 50;
    loop {
        match state.store.state_counts().await {
            Ok(counts) => {
                let gauge = &state.metrics.conversations;
                gauge.reset();
                let per_tenant = state.directory.len() <= MAX_TENANT_LABELS;
                for (tenant, s, n) in counts {
                    let label = if per_tenant {
                        tenant.to_string()
                    } else {
                        "_all".to_owned()
                    };
                    gauge
                        .with_label_values(&[label.as_str(), s.as_str()])
                        .add(n as i64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "conversation counts unavailable"),
        }
        crate::metrics::refresh_handoff_age(&state).await;
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
}
