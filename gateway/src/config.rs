//! The process configuration: every flag has an environment variable, declared once here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Conversa: a realtime WhatsApp conversation engine.
#[derive(Debug, Parser)]
#[command(name = "conversa", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the engine (the default).
    Serve,
    /// Applies the CQL schema in `schema/` to the configured ScyllaDB (idempotent).
    Migrate,
}

/// Process configuration. Every field can come from a flag or from the environment.
#[derive(Clone, Parser)]
pub struct Config {
    /// Address for webhooks, the APIs, dashboards and /metrics.
    #[arg(
        long,
        env = "CONVERSA_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(
        long,
        env = "CONVERSA_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Bearer token of the admin API; when unset a random one is generated and printed once.
    #[arg(
        long,
        env = "CONVERSA_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,
    /// ScyllaDB contact points (`host:port`, comma separated); when set, history and state live there.
    #[arg(
        long,
        env = "CONVERSA_SCYLLA_NODES",
        value_delimiter = ',',
        global = true
    )]
    pub scylla_nodes: Vec<String>,
    /// ScyllaDB keyspace.
    #[arg(
        long,
        env = "CONVERSA_SCYLLA_KEYSPACE",
        default_value = "conversa",
        global = true
    )]
    pub scylla_keyspace: String,
    /// The keyspace's replication as a CQL map in JSON, used by `conversa migrate`.
    #[arg(
        long,
        env = "CONVERSA_SCYLLA_REPLICATION",
        default_value = r#"{"class":"NetworkTopologyStrategy","replication_factor":3}"#,
        global = true
    )]
    pub scylla_replication: String,
    /// Consistency level of every ScyllaDB request (`LOCAL_QUORUM`, `QUORUM`, `ONE`, …).
    #[arg(
        long,
        env = "CONVERSA_SCYLLA_CONSISTENCY",
        default_value = "LOCAL_QUORUM",
        global = true
    )]
    pub scylla_consistency: String,
    /// The local ScyllaDB datacenter: its replicas are preferred and requests never leave it.
    #[arg(long, env = "CONVERSA_SCYLLA_LOCAL_DC", global = true)]
    pub scylla_local_dc: Option<String>,
    /// Timeout of one ScyllaDB request (retries included) and of opening a connection.
    #[arg(long, env = "CONVERSA_SCYLLA_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub scylla_timeout: Duration,
    /// ScyllaDB user, when the cluster authenticates.
    #[arg(long, env = "CONVERSA_SCYLLA_USER", global = true)]
    pub scylla_user: Option<String>,
    /// ScyllaDB password. Never logged.
    #[arg(
        long,
        env = "CONVERSA_SCYLLA_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub scylla_password: Option<String>,
    /// `redis://…`; when set, Redis holds the shared hot state.
    #[arg(
        long,
        env = "CONVERSA_REDIS_URL",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: Option<String>,
    /// Most connections in the Redis pool.
    #[arg(
        long,
        env = "CONVERSA_REDIS_POOL_SIZE",
        default_value_t = 16,
        global = true
    )]
    pub redis_pool_size: u32,
    /// Timeout of one Redis command (and of getting a pooled connection).
    #[arg(long, env = "CONVERSA_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub redis_timeout: Duration,
    /// Messages per second each tenant may send through its webhooks (needs Redis); 0: no limit.
    #[arg(long, env = "CONVERSA_TENANT_RATE", default_value_t = 0, global = true)]
    pub tenant_rate: u64,
    /// API key of the OpenAI-compatible endpoint; without it the assistant answers extractively.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true, global = true)]
    pub openai_api_key: Option<String>,
    /// Base URL of the OpenAI-compatible endpoint.
    #[arg(long, env = "OPENAI_BASE_URL", global = true)]
    pub openai_base_url: Option<String>,
    /// Timeout of each LLM attempt.
    #[arg(long, env = "CONVERSA_LLM_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    pub llm_timeout: Duration,
    /// Attempts per LLM call (timeouts, 429 and 5xx are retried with backoff).
    #[arg(
        long,
        env = "CONVERSA_LLM_ATTEMPTS",
        default_value_t = 3,
        global = true
    )]
    pub llm_attempts: u32,
    /// Model prices for cost metrics, JSON: `{"gpt-4o-mini":{"input":0.00015,"output":0.0006}}` (USD per 1,000 tokens).
    #[arg(long, env = "CONVERSA_LLM_PRICES", default_value = "{}", global = true)]
    pub llm_prices: String,
    /// Embedding model; when set, knowledge chunks and customer turns are embedded and retrieval is
    /// hybrid (dense cosine + lexical).
    #[arg(long, env = "CONVERSA_EMBEDDINGS_MODEL", global = true)]
    pub embeddings_model: Option<String>,
    /// Base URL of the OpenAI-compatible embeddings endpoint (default: `OPENAI_BASE_URL`).
    #[arg(long, env = "CONVERSA_EMBEDDINGS_BASE_URL", global = true)]
    pub embeddings_base_url: Option<String>,
    /// API key of the embeddings endpoint (default: `OPENAI_API_KEY`).
    #[arg(
        long,
        env = "CONVERSA_EMBEDDINGS_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub embeddings_api_key: Option<String>,
    /// Vector length asked of models that can shorten theirs (`text-embedding-3-*`).
    #[arg(long, env = "CONVERSA_EMBEDDINGS_DIMENSIONS", global = true)]
    pub embeddings_dimensions: Option<u32>,
    /// Timeout of each embeddings attempt.
    #[arg(long, env = "CONVERSA_EMBEDDINGS_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub embeddings_timeout: Duration,
    /// Texts per embeddings request.
    #[arg(
        long,
        env = "CONVERSA_EMBEDDINGS_BATCH",
        default_value_t = 64,
        global = true
    )]
    pub embeddings_batch: usize,
    /// The cosine at and below which a chunk's dense score is 0 (calibrate per model).
    #[arg(long, env = "CONVERSA_EMBEDDINGS_COSINE_FLOOR", default_value_t = engine::knowledge::DenseCalibration::default().floor, global = true)]
    pub embeddings_cosine_floor: f32,
    /// The cosine at and above which a chunk's dense score is 1 (calibrate per model).
    #[arg(long, env = "CONVERSA_EMBEDDINGS_COSINE_CEILING", default_value_t = engine::knowledge::DenseCalibration::default().ceiling, global = true)]
    pub embeddings_cosine_ceiling: f32,
    /// The dense score's share of the hybrid confidence, in [0, 1].
    #[arg(long, env = "CONVERSA_HYBRID_DENSE_WEIGHT", default_value_t = engine::knowledge::DenseCalibration::default().weight, global = true)]
    pub hybrid_dense_weight: f32,
    /// A conversation actor with no activity for this many seconds is stopped.
    #[arg(long, env = "CONVERSA_IDLE_SECS", default_value_t = 600, global = true)]
    pub idle_secs: u64,
    /// Log filter, `RUST_LOG` syntax.
    #[arg(long, env = "CONVERSA_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format: `text` or `json`.
    #[arg(
        long,
        env = "CONVERSA_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Largest webhook or API body accepted, in bytes.
    #[arg(long, env = "CONVERSA_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024, global = true)]
    pub max_body_bytes: usize,
    /// Timeout of each request Conversa makes to a WhatsApp provider.
    #[arg(long, env = "CONVERSA_PROVIDER_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub provider_timeout: Duration,
    /// How often due human-timeout deadlines are looked up.
    #[arg(long, env = "CONVERSA_DEADLINE_SCAN", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub deadline_scan: Duration,
    /// How long a graceful shutdown may take.
    #[arg(long, env = "CONVERSA_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Duration,
    /// Dashboard events each tenant keeps for `?since=` resync (most recent first out).
    #[arg(
        long,
        env = "CONVERSA_STREAM_RETENTION_EVENTS",
        default_value_t = 10_000,
        global = true
    )]
    pub stream_retention_events: usize,
    /// Seconds a dashboard event is kept for `?since=` resync.
    #[arg(
        long,
        env = "CONVERSA_STREAM_RETENTION_SECS",
        default_value_t = 3600,
        global = true
    )]
    pub stream_retention_secs: u64,
    /// Events a dashboard may fall behind before it is told to resync and closed.
    #[arg(
        long,
        env = "CONVERSA_STREAM_CLIENT_QUEUE",
        default_value_t = 4096,
        global = true
    )]
    pub stream_client_queue: usize,
    /// Seconds between keep-alive pings to dashboards.
    #[arg(
        long,
        env = "CONVERSA_STREAM_PING_SECS",
        default_value_t = 20,
        global = true
    )]
    pub stream_ping_secs: u64,
    /// A dashboard that sends nothing, not even a pong, for this many seconds is closed.
    #[arg(
        long,
        env = "CONVERSA_STREAM_IDLE_SECS",
        default_value_t = 60,
        global = true
    )]
    pub stream_idle_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::fmt::Debug for Config {
    // Hand-written so that secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("scylla_nodes", &self.scylla_nodes)
            .field("scylla_keyspace", &self.scylla_keyspace)
            .field("scylla_consistency", &self.scylla_consistency)
            .field("scylla_local_dc", &self.scylla_local_dc)
            .field("scylla_timeout", &self.scylla_timeout)
            .field("scylla_user", &self.scylla_user)
            .field(
                "scylla_password",
                &self.scylla_password.as_ref().map(|_| "<set>"),
            )
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_pool_size", &self.redis_pool_size)
            .field("redis_timeout", &self.redis_timeout)
            .field("tenant_rate", &self.tenant_rate)
            .field(
                "openai_api_key",
                &self.openai_api_key.as_ref().map(|_| "<set>"),
            )
            .field("openai_base_url", &self.openai_base_url)
            .field("llm_timeout", &self.llm_timeout)
            .field("llm_attempts", &self.llm_attempts)
            .field("embeddings_model", &self.embeddings_model)
            .field("embeddings_base_url", &self.embeddings_base_url)
            .field(
                "embeddings_api_key",
                &self.embeddings_api_key.as_ref().map(|_| "<set>"),
            )
            .field("embeddings_dimensions", &self.embeddings_dimensions)
            .field("embeddings_timeout", &self.embeddings_timeout)
            .field("embeddings_batch", &self.embeddings_batch)
            .field("embeddings_calibration", &self.dense_calibration())
            .field("idle_secs", &self.idle_secs)
            .field("log", &self.log)
            .field("log_format", &self.log_format)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("provider_timeout", &self.provider_timeout)
            .field("deadline_scan", &self.deadline_scan)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("stream_retention_events", &self.stream_retention_events)
            .field("stream_retention_secs", &self.stream_retention_secs)
            .field("stream_client_queue", &self.stream_client_queue)
            .field("stream_ping_secs", &self.stream_ping_secs)
            .field("stream_idle_secs", &self.stream_idle_secs)
            .finish()
    }
}

impl Config {
    /// Checks what clap cannot; a bad value stops the process before it binds a port.
    pub fn validate(&self) -> Result<(), String> {
        if self.idle_secs == 0 {
            return Err("CONVERSA_IDLE_SECS must be at least 1".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("CONVERSA_MAX_BODY_BYTES must be at least 1024".into());
        }
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err("CONVERSA_ADMIN_TOKEN must be at least 16 characters".into());
        }
        if self.stream_retention_events == 0
            || self.stream_retention_secs == 0
            || self.stream_client_queue == 0
            || self.stream_ping_secs == 0
        {
            return Err("CONVERSA_STREAM_* settings must be at least 1".into());
        }
        if self.stream_idle_secs <= self.stream_ping_secs {
            return Err(
                "CONVERSA_STREAM_IDLE_SECS must be more than CONVERSA_STREAM_PING_SECS".into(),
            );
        }
        if self.llm_attempts == 0 || self.llm_attempts > 10 {
            return Err("CONVERSA_LLM_ATTEMPTS must be between 1 and 10".into());
        }
        self.prices()?;
        self.dense_calibration().validate().map_err(|e| {
            format!("CONVERSA_EMBEDDINGS_COSINE_FLOOR/CEILING, CONVERSA_HYBRID_DENSE_WEIGHT: {e}")
        })?;
        if self.embeddings_batch == 0 || self.embeddings_batch > 2048 {
            return Err("CONVERSA_EMBEDDINGS_BATCH must be between 1 and 2048".into());
        }
        if self
            .embeddings_model
            .as_ref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return Err("CONVERSA_EMBEDDINGS_MODEL must not be empty when set".into());
        }
        serde_json::from_str::<serde_json::Value>(&self.scylla_replication)
            .map_err(|e| format!("CONVERSA_SCYLLA_REPLICATION is not JSON: {e}"))?;
        if schema::scylla::parse_consistency(&self.scylla_consistency).is_none() {
            return Err(format!(
                "CONVERSA_SCYLLA_CONSISTENCY {:?} is not a consistency level (LOCAL_QUORUM, QUORUM, ONE, …)",
                self.scylla_consistency
            ));
        }
        if self.redis_pool_size == 0 {
            return Err("CONVERSA_REDIS_POOL_SIZE must be at least 1".into());
        }
        Ok(())
    }

    /// The ScyllaDB store's settings, when `CONVERSA_SCYLLA_NODES` is set.
    pub fn scylla_settings(&self) -> Option<schema::scylla::ScyllaSettings> {
        if self.scylla_nodes.is_empty() {
            return None;
        }
        let mut settings = schema::scylla::ScyllaSettings::new(
            self.scylla_nodes.clone(),
            self.scylla_keyspace.clone(),
        );
        if let Some(consistency) = schema::scylla::parse_consistency(&self.scylla_consistency) {
            settings.consistency = consistency;
        }
        settings.local_datacenter = self.scylla_local_dc.clone();
        settings.request_timeout = self.scylla_timeout;
        settings.connect_timeout = self.scylla_timeout;
        settings.username = self.scylla_user.clone();
        settings.password = self.scylla_password.clone();
        Some(settings)
    }

    /// The Redis settings, when `CONVERSA_REDIS_URL` is set.
    pub fn redis_settings(&self) -> Option<schema::redis::RedisSettings> {
        let url = self.redis_url.clone()?;
        let mut settings = schema::redis::RedisSettings::new(url);
        settings.pool_size = self.redis_pool_size;
        settings.timeout = self.redis_timeout;
        Some(settings)
    }

    /// Parsed `CONVERSA_LLM_PRICES`.
    pub fn prices(&self) -> Result<std::collections::HashMap<String, crate::llm::Price>, String> {
        serde_json::from_str(&self.llm_prices)
            .map_err(|e| format!("CONVERSA_LLM_PRICES is not valid: {e}"))
    }

    /// The LLM settings, when an API key is configured.
    pub fn llm(&self) -> Option<crate::llm::LlmSettings> {
        let api_key = self.openai_api_key.clone()?;
        Some(crate::llm::LlmSettings {
            base_url: self
                .openai_base_url
                .clone()
                .unwrap_or_else(|| "https://api.openai.com/v1".into()),
            api_key,
            timeout: self.llm_timeout,
            attempts: self.llm_attempts,
            backoff_base: Duration::from_millis(500),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            prices: self.prices().unwrap_or_default(),
        })
    }

    /// How the embedding model's cosines become confidence.
    pub fn dense_calibration(&self) -> engine::knowledge::DenseCalibration {
        engine::knowledge::DenseCalibration {
            floor: self.embeddings_cosine_floor,
            ceiling: self.embeddings_cosine_ceiling,
            weight: self.hybrid_dense_weight,
        }
    }

    /// The embeddings settings, when `CONVERSA_EMBEDDINGS_MODEL` is set.
    pub fn embeddings(&self) -> Option<crate::embeddings::EmbeddingsSettings> {
        let model = self.embeddings_model.clone()?;
        Some(crate::embeddings::EmbeddingsSettings {
            base_url: self
                .embeddings_base_url
                .clone()
                .or_else(|| self.openai_base_url.clone())
                .unwrap_or_else(|| "https://api.openai.com/v1".into()),
            api_key: self
                .embeddings_api_key
                .clone()
                .or_else(|| self.openai_api_key.clone())
                .unwrap_or_default(),
            model,
            dimensions: self.embeddings_dimensions,
            timeout: self.embeddings_timeout,
            attempts: self.llm_attempts,
            backoff_base: Duration::from_millis(250),
            batch: self.embeddings_batch,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            calibration: self.dense_calibration(),
        })
    }

    /// A configuration for tests: loopback on a free port, the given data directory.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let mut config = Cli::parse_from(["conversa"]).config;
        config.listen = "127.0.0.1:0"
            .parse()
            .expect("a loopback address should parse");
        config.data_dir = data_dir;
        config.admin_token = Some("test-admin-token-0123456789".into());
        config
    }
}
