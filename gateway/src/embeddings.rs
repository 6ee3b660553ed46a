//! Embeddings through `async-openai` against any OpenAI-compatible `/embeddings` endpoint, and the
//! embedding of a tenant's knowledge chunks.
//!
//! Retries and the breaker work as in [`crate::llm`]: async-openai retries 429, 5xx and connection
//! errors itself; each attempt here is bounded by `timeout`, and timeouts and malformed answers are
//! retried with backoff up to `attempts`. Inputs go in batches of `batch` texts per request.
//!
//! Chunks are embedded when the knowledge is saved ([`embed_chunks`]); a chunk whose text and
//! model are unchanged keeps its stored vector, so saving the same text again costs no call. At
//! start, tenants whose chunks lack vectors of the configured model (the model changed, or the
//! endpoint was down when the knowledge was saved) are embedded in the background
//! ([`backfill`]). Until a tenant's chunks all have vectors, its retrieval stays lexical.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use async_trait::async_trait;
use engine::TenantId;
use engine::knowledge::{Chunk, ChunkEmbedding, DenseCalibration, DenseQuery};
use engine::ports::{EmbedError, Embedder, Knowledge, Store};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use crate::llm::{Attempt, backoff, classify};

#[derive(Debug, Clone)]
pub struct EmbeddingsSettings {
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    /// Asked of models that can shorten their vectors (`text-embedding-3-*`); `None`: the model's own.
    pub dimensions: Option<u32>,
    pub timeout: Duration,
    pub attempts: u32,
    pub backoff_base: Duration,
    /// Texts per request.
    pub batch: usize,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub calibration: DenseCalibration,
}

#[derive(Debug, Clone)]
pub struct EmbeddingsMetrics {
    pub request_seconds: HistogramVec,
    pub inputs: IntCounterVec,
    pub breaker_open: IntGauge,
}

impl EmbeddingsMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "conversa_embeddings_request_seconds",
                    "Embeddings calls (all attempts and batches) by model, purpose (knowledge, query) and outcome",
                )
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["model", "purpose", "outcome"],
            )?,
            inputs: IntCounterVec::new(
                Opts::new(
                    "conversa_embeddings_inputs_total",
                    "Texts embedded by model and purpose (knowledge chunks, customer turns)",
                ),
                &["model", "purpose"],
            )?,
            breaker_open: IntGauge::new(
                "conversa_embeddings_breaker_open",
                "1 while the embeddings circuit breaker is open",
            )?,
        };
        registry.register(Box::new(m.request_seconds.clone()))?;
        registry.register(Box::new(m.inputs.clone()))?;
        registry.register(Box::new(m.breaker_open.clone()))?;
        Ok(m)
    }
}

/// What a batch of texts is embedded for: labels metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Knowledge,
    Query,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Self::Knowledge => "knowledge",
            Self::Query => "query",
        }
    }
}

#[derive(Debug)]
pub struct OpenAiEmbedder {
    client: Client<OpenAIConfig>,
    settings: EmbeddingsSettings,
    metrics: EmbeddingsMetrics,
    breaker: crate::breaker::Breaker,
}

impl OpenAiEmbedder {
    pub fn new(settings: EmbeddingsSettings, metrics: EmbeddingsMetrics) -> Self {
        let breaker = crate::breaker::Breaker::new(
            settings.breaker_failures,
            settings.breaker_cooldown,
            metrics.breaker_open.clone(),
        );
        Self {
            client: crate::llm::openai_client(
                &settings.base_url,
                &settings.api_key,
                settings.timeout,
            ),
            settings,
            metrics,
            breaker,
        }
    }

    /// Embeds `texts` in batches, each retried; fails as a whole when any batch fails.
    pub async fn embed_for(
        &self,
        purpose: Purpose,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.settings.batch.max(1)) {
            vectors.extend(self.embed_batch(purpose, batch).await?);
        }
        Ok(vectors)
    }

    async fn embed_batch(
        &self,
        purpose: Purpose,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model = self.settings.model.as_str();
        let observe = |outcome: &str, started: Instant| {
            self.metrics
                .request_seconds
                .with_label_values(&[model, purpose.label(), outcome])
                .observe(started.elapsed().as_secs_f64());
        };
        let started = Instant::now();
        if !self.breaker.allows() {
            observe("circuit_open", started);
            return Err(EmbedError(
                "the embeddings endpoint is unavailable (circuit open)".into(),
            ));
        }
        let attempts = self.settings.attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.attempt(texts).await {
                Ok(vectors) => {
                    self.breaker.record(true);
                    observe("ok", started);
                    self.metrics
                        .inputs
                        .with_label_values(&[model, purpose.label()])
                        .inc_by(texts.len() as u64);
                    return Ok(vectors);
                }
                Err(Attempt::Fail(why)) | Err(Attempt::Empty(why)) => {
                    last = why;
                    break;
                }
                Err(Attempt::Retry(why)) => {
                    tracing::warn!(attempt, error = %why, "embeddings attempt failed");
                    last = why;
                    if attempt < attempts {
                        tokio::time::sleep(backoff(self.settings.backoff_base, attempt)).await;
                    }
                }
            }
        }
        if self.breaker.record(false) {
            tracing::warn!(cooldown = ?self.settings.breaker_cooldown, "embeddings circuit breaker open");
        }
        observe("error", started);
        Err(EmbedError(last))
    }

    async fn attempt(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, Attempt> {
        let request = CreateEmbeddingRequest {
            model: self.settings.model.clone(),
            input: EmbeddingInput::StringArray(texts.to_vec()),
            dimensions: self.settings.dimensions,
            ..Default::default()
        };
        // Each HTTP attempt has the client's timeout; this outer bound also covers async-openai's
        // own retries and their waits.
        let whole = self.settings.timeout.saturating_mul(4) + Duration::from_secs(16);
        let response =
            match tokio::time::timeout(whole, self.client.embeddings().create(request)).await {
                Err(_) => return Err(Attempt::Retry("timed out".into())),
                Ok(Err(e)) => return Err(classify(&e)),
                Ok(Ok(r)) => r,
            };
        // One vector per input, matched by index (servers need not keep the order).
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for embedding in response.data {
            let slot = vectors.get_mut(embedding.index as usize).ok_or_else(|| {
                Attempt::Retry(format!(
                    "malformed response: index {} for {} inputs",
                    embedding.index,
                    texts.len()
                ))
            })?;
            *slot = Some(embedding.embedding);
        }
        let vectors: Option<Vec<Vec<f32>>> = vectors.into_iter().collect();
        let vectors = vectors.ok_or_else(|| {
            Attempt::Retry("malformed response: fewer vectors than inputs".into())
        })?;
        let dimension = vectors.first().map_or(0, Vec::len);
        if dimension == 0
            || vectors
                .iter()
                .any(|v| v.len() != dimension || v.iter().any(|x| !x.is_finite()))
        {
            return Err(Attempt::Retry(
                "malformed response: empty, ragged or non-finite vectors".into(),
            ));
        }
        Ok(vectors)
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn model(&self) -> &str {
        &self.settings.model
    }

    fn calibration(&self) -> DenseCalibration {
        self.settings.calibration
    }

    async fn embed(
        &self,
        _tenant: &TenantId,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        // Called by the actors for customer turns; knowledge goes through `embed_chunks`.
        self.embed_for(Purpose::Query, texts).await
    }
}

/// One lock per tenant, held while its knowledge is embedded and stored, so two saves (or a save
/// and the start backfill) of one tenant on this node never interleave, and a slow endpoint holds
/// up only the tenant whose knowledge is being embedded.
#[derive(Debug, Default)]
pub struct KnowledgeLocks(
    std::sync::Mutex<std::collections::HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
);

impl KnowledgeLocks {
    /// Waits for the tenant's lock.
    pub async fn lock(&self, tenant: &TenantId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.clone())
            .or_default()
            .clone();
        lock.lock_owned().await
    }
}

/// What embedding a knowledge text did.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct EmbedReport {
    pub model: String,
    /// Chunks sent to the endpoint.
    pub embedded: usize,
    /// Chunks that kept their stored vector (same text, same model).
    pub reused: usize,
    /// Why the chunks have no vectors, when the endpoint failed; retrieval stays lexical.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Gives every chunk a vector of the embedder's model: reused from `previous` where the chunk's
/// text and model are unchanged, computed otherwise. When the endpoint fails, the chunks come back
/// without vectors (the knowledge is saved all the same and retrieval stays lexical) and the
/// report says why.
pub async fn embed_chunks(
    embedder: &OpenAiEmbedder,
    chunks: Vec<Chunk>,
    previous: Option<&Knowledge>,
) -> (Vec<Chunk>, EmbedReport) {
    let model = embedder.model().to_owned();
    let known: std::collections::HashMap<&str, &ChunkEmbedding> = previous
        .into_iter()
        .flat_map(|k| &k.chunks)
        .filter_map(|c| {
            c.embedding
                .as_ref()
                .filter(|e| e.model == model)
                .map(|e| (c.text.as_str(), e))
        })
        .collect();
    let mut chunks = chunks;
    let mut missing = Vec::new();
    for (position, chunk) in chunks.iter_mut().enumerate() {
        match known.get(chunk.text.as_str()) {
            Some(embedding) => chunk.embedding = Some((*embedding).clone()),
            None => missing.push(position),
        }
    }
    let mut report = EmbedReport {
        model: model.clone(),
        embedded: missing.len(),
        reused: chunks.len() - missing.len(),
        error: None,
    };
    if missing.is_empty() {
        return (chunks, report);
    }
    let texts: Vec<String> = missing.iter().map(|&p| chunks[p].text.clone()).collect();
    match embedder.embed_for(Purpose::Knowledge, &texts).await {
        Ok(vectors) => {
            for (position, vector) in missing.into_iter().zip(vectors) {
                chunks[position].embedding = Some(ChunkEmbedding {
                    model: model.clone(),
                    vector,
                });
            }
        }
        Err(e) => {
            for chunk in &mut chunks {
                chunk.embedding = None;
            }
            report.embedded = 0;
            report.reused = 0;
            report.error = Some(e.to_string());
        }
    }
    (chunks, report)
}

/// The question's embedding for a hybrid search, or `None` (lexical) when the chunks have no
/// vectors of the embedder's model or the endpoint fails or takes longer than a turn would wait.
pub async fn query(
    embedder: &dyn Embedder,
    tenant: &TenantId,
    chunk_model: Option<&str>,
    text: &str,
) -> Option<DenseQuery> {
    if chunk_model != Some(embedder.model()) {
        return None;
    }
    let wait = actors::TreePolicy::default().embed_wait;
    actors::conversation::embed_question(embedder, tenant, text.to_owned(), wait).await
}

/// Embeds, one tenant after another, the knowledge whose chunks lack vectors of the embedder's
/// model, and installs each new index. Runs in the background at start.
pub async fn backfill(
    embedder: Arc<OpenAiEmbedder>,
    store: Arc<dyn Store>,
    directory: actors::TenantDirectory,
    locks: Arc<KnowledgeLocks>,
) {
    let tenants = match store.list_tenants().await {
        Ok(tenants) => tenants,
        Err(e) => {
            tracing::warn!(error = %e, "knowledge backfill: tenants not listed");
            return;
        }
    };
    for tenant in tenants {
        // One knowledge write at a time on this node: a save through the API is never
        // overwritten with older text.
        let _guard = locks.lock(&tenant.id).await;
        let Ok(Some(knowledge)) = store.get_knowledge(&tenant.id).await else {
            continue;
        };
        let current = knowledge.chunks.iter().all(|c| {
            c.embedding
                .as_ref()
                .is_some_and(|e| e.model == embedder.model())
        });
        if current || knowledge.chunks.is_empty() {
            continue;
        }
        let (chunks, report) =
            embed_chunks(&embedder, knowledge.chunks.clone(), Some(&knowledge)).await;
        if let Some(error) = report.error {
            tracing::warn!(tenant = %tenant.id, %error, "knowledge not embedded; retrieval stays lexical");
            continue;
        }
        let updated = Knowledge {
            chunks,
            ..knowledge
        };
        if let Err(e) = store.put_knowledge(&tenant.id, &updated).await {
            tracing::warn!(tenant = %tenant.id, error = %e, "embedded knowledge not stored");
            continue;
        }
        let index = tokio::task::spawn_blocking(move || {
            engine::knowledge::KnowledgeIndex::build(updated.chunks)
        })
        .await;
        if let Ok(index) = index {
            directory.set_index(&tenant.id, Arc::new(index));
            tracing::info!(tenant = %tenant.id, embedded = report.embedded, "knowledge embedded");
        }
    }
}
