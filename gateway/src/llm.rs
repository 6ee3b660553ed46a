//! The language model, through `async-openai` against any OpenAI-compatible endpoint (OpenAI,
//! Ollama, vLLM, llama.cpp server).
//!
//! Retries are split between two layers. async-openai 0.43 always retries 429, 5xx and connection
//! errors itself (3 retries, honouring `Retry-After`, backoff from 100 ms doubling up to 8 s);
//! what comes out of it is final. async-openai sets no timeout, so each HTTP attempt is bounded by
//! `timeout` here, and timeouts and malformed responses (which its layer does not retry) are
//! retried here with exponential backoff and jitter, up to `attempts`.
//! A per-endpoint circuit breaker opens after `breaker_failures` consecutive failed calls and
//! rejects calls for `breaker_cooldown`, then lets one trial call through (half-open), so a dead
//! endpoint does not hold every conversation for the full retry budget.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequest, FinishReason,
};
use async_trait::async_trait;
use engine::TenantId;
use engine::ports::{Llm, LlmAnswer, LlmError};
use engine::prompt::{LlmRequest, Role};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use rand::Rng;
use serde::Deserialize;

/// Price of a model in US dollars per 1,000 tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

#[derive(Debug, Clone)]
pub struct LlmSettings {
    pub base_url: String,
    pub api_key: String,
    pub timeout: Duration,
    pub attempts: u32,
    pub backoff_base: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub prices: HashMap<String, Price>,
}

#[derive(Debug, Clone)]
pub struct LlmMetrics {
    pub request_seconds: HistogramVec,
    pub tokens: IntCounterVec,
    pub cost_microdollars: IntCounterVec,
    pub retries: IntCounterVec,
    pub breaker_open: IntGauge,
}

impl LlmMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "conversa_llm_request_seconds",
                    "LLM calls (all attempts) by model and outcome",
                )
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0]),
                &["model", "outcome"],
            )?,
            tokens: IntCounterVec::new(
                Opts::new(
                    "conversa_llm_tokens_total",
                    "LLM tokens by tenant and direction (in, out)",
                ),
                &["tenant", "direction"],
            )?,
            cost_microdollars: IntCounterVec::new(
                Opts::new(
                    "conversa_llm_cost_microdollars_total",
                    "Estimated LLM cost by tenant, in millionths of a US dollar (CONVERSA_LLM_PRICES)",
                ),
                &["tenant"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "conversa_llm_retries_total",
                    "LLM attempts retried by Conversa (timeouts, malformed answers) by model; async-openai's own 429/5xx retries are not seen here",
                ),
                &["model"],
            )?,
            breaker_open: IntGauge::new(
                "conversa_llm_breaker_open",
                "1 while the LLM circuit breaker is open",
            )?,
        };
        registry.register(Box::new(m.request_seconds.clone()))?;
        registry.register(Box::new(m.tokens.clone()))?;
        registry.register(Box::new(m.cost_microdollars.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.breaker_open.clone()))?;
        Ok(m)
    }
}

#[derive(Debug)]
pub struct OpenAiLlm {
    client: Client<OpenAIConfig>,
    settings: LlmSettings,
    metrics: LlmMetrics,
    breaker: crate::breaker::Breaker,
}

impl OpenAiLlm {
    pub fn new(settings: LlmSettings, metrics: LlmMetrics) -> Self {
        let breaker = crate::breaker::Breaker::new(
            settings.breaker_failures,
            settings.breaker_cooldown,
            metrics.breaker_open.clone(),
        );
        Self {
            client: openai_client(&settings.base_url, &settings.api_key, settings.timeout),
            settings,
            metrics,
            breaker,
        }
    }

    fn breaker_allows(&self) -> bool {
        self.breaker.allows()
    }

    fn record(&self, ok: bool) {
        if self.breaker.record(ok) {
            tracing::warn!(cooldown = ?self.settings.breaker_cooldown, "llm circuit breaker open");
        }
    }

    fn request(&self, request: &LlmRequest) -> CreateChatCompletionRequest {
        let messages = request
            .messages
            .iter()
            .map(|m| match m.role {
                Role::System => ChatCompletionRequestMessage::System(
                    ChatCompletionRequestSystemMessage::from(m.content.as_str()),
                ),
                Role::User => ChatCompletionRequestMessage::User(
                    ChatCompletionRequestUserMessage::from(m.content.as_str()),
                ),
                Role::Assistant => ChatCompletionRequestMessage::Assistant(
                    ChatCompletionRequestAssistantMessage::from(m.content.as_str()),
                ),
            })
            .collect();
        // `max_tokens` is deprecated by OpenAI in favour of `max_completion_tokens`, but it is the
        // field every OpenAI-compatible server (Ollama, vLLM, llama.cpp) understands.
        #[allow(deprecated)]
        CreateChatCompletionRequest {
            model: request.model.clone(),
            messages,
            temperature: Some(request.temperature),
            max_tokens: Some(request.max_tokens),
            ..Default::default()
        }
    }

    async fn attempt(&self, request: &CreateChatCompletionRequest) -> Result<LlmAnswer, Attempt> {
        // Each HTTP attempt has the client's timeout; this outer bound also covers the inner
        // layer's retries and their waits.
        let whole = self.settings.timeout.saturating_mul(4) + Duration::from_secs(16);
        let response =
            match tokio::time::timeout(whole, self.client.chat().create(request.clone())).await {
                Err(_) => return Err(Attempt::Retry("timed out".into())),
                Ok(Err(e)) => return Err(classify(&e)),
                Ok(Ok(r)) => r,
            };
        let usage = response.usage.as_ref();
        let (prompt_tokens, completion_tokens) =
            usage.map_or((0, 0), |u| (u.prompt_tokens, u.completion_tokens));
        let Some(choice) = response.choices.first() else {
            return Err(Attempt::Empty("no choices".into()));
        };
        if let Some(refusal) = choice
            .message
            .refusal
            .as_deref()
            .filter(|r| !r.trim().is_empty())
        {
            return Err(Attempt::Empty(format!("refused: {}", truncate(refusal))));
        }
        if choice.finish_reason == Some(FinishReason::ContentFilter) {
            return Err(Attempt::Empty("content filtered".into()));
        }
        let text = choice
            .message
            .content
            .as_deref()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if text.is_empty() {
            return Err(Attempt::Empty("empty completion".into()));
        }
        Ok(LlmAnswer {
            text,
            prompt_tokens,
            completion_tokens,
        })
    }
}

/// An async-openai client for an OpenAI-compatible endpoint, each HTTP attempt bounded by
/// `timeout` (async-openai sets none).
pub(crate) fn openai_client(
    base_url: &str,
    api_key: &str,
    timeout: Duration,
) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new()
        .with_api_base(base_url.trim_end_matches('/'))
        .with_api_key(api_key);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .user_agent(concat!("conversa/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("building an HTTP client with rustls should not fail");
    Client::with_config(config).with_http_client(http)
}

/// The wait before retry number `attempt` (1-based): `base` doubling, with jitter.
pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    let base = base.saturating_mul(1 << attempt.saturating_sub(1).min(6));
    let jitter = rand::rng().random_range(0.5..=1.0);
    base.mul_f64(jitter)
}

/// What one attempt tells the retry loop.
pub(crate) enum Attempt {
    Retry(String),
    Fail(String),
    Empty(String),
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

pub(crate) fn classify(e: &OpenAIError) -> Attempt {
    match e {
        // Connection errors, 429 and 5xx were already retried by async-openai's own layer.
        OpenAIError::Reqwest(re) if re.is_timeout() || re.is_body() || re.is_decode() => {
            Attempt::Retry(format!("transport: {}", truncate(&re.to_string())))
        }
        OpenAIError::Reqwest(re) => Attempt::Fail(truncate(&re.to_string())),
        OpenAIError::ApiError(api) => Attempt::Fail(format!(
            "http {}: {}",
            api.status_code.as_u16(),
            truncate(&api.api_error.message)
        )),
        // A body that is not the JSON we expect: a broken or overloaded server; worth another try.
        OpenAIError::JSONDeserialize(err, _) => Attempt::Retry(format!(
            "malformed response: {}",
            truncate(&err.to_string())
        )),
        other => Attempt::Fail(truncate(&other.to_string())),
    }
}

#[async_trait]
impl Llm for OpenAiLlm {
    async fn complete(
        &self,
        tenant: &TenantId,
        request: &LlmRequest,
    ) -> Result<LlmAnswer, LlmError> {
        let model = request.model.as_str();
        if !self.breaker_allows() {
            self.metrics
                .request_seconds
                .with_label_values(&[model, "circuit_open"])
                .observe(0.0);
            return Err(LlmError::CircuitOpen);
        }
        let started = Instant::now();
        let body = self.request(request);
        let attempts = self.settings.attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.attempt(&body).await {
                Ok(answer) => {
                    self.record(true);
                    self.metrics
                        .request_seconds
                        .with_label_values(&[model, "ok"])
                        .observe(started.elapsed().as_secs_f64());
                    self.account(tenant, model, &answer);
                    return Ok(answer);
                }
                Err(Attempt::Empty(why)) => {
                    // The endpoint works; the answer is unusable. Not a breaker failure.
                    self.record(true);
                    self.metrics
                        .request_seconds
                        .with_label_values(&[model, "empty"])
                        .observe(started.elapsed().as_secs_f64());
                    return Err(LlmError::Empty(why));
                }
                Err(Attempt::Fail(why)) => {
                    last = why;
                    break;
                }
                Err(Attempt::Retry(why)) => {
                    tracing::warn!(attempt, error = %why, "llm attempt failed");
                    last = why;
                    if attempt < attempts {
                        self.metrics.retries.with_label_values(&[model]).inc();
                        tokio::time::sleep(backoff(self.settings.backoff_base, attempt)).await;
                    }
                }
            }
        }
        self.record(false);
        self.metrics
            .request_seconds
            .with_label_values(&[model, "error"])
            .observe(started.elapsed().as_secs_f64());
        Err(LlmError::Failed(last))
    }
}

impl OpenAiLlm {
    fn account(&self, tenant: &TenantId, model: &str, answer: &LlmAnswer) {
        let t = tenant.as_str();
        self.metrics
            .tokens
            .with_label_values(&[t, "in"])
            .inc_by(u64::from(answer.prompt_tokens));
        self.metrics
            .tokens
            .with_label_values(&[t, "out"])
            .inc_by(u64::from(answer.completion_tokens));
        if let Some(price) = self.settings.prices.get(model) {
            let dollars = f64::from(answer.prompt_tokens) / 1000.0 * price.input
                + f64::from(answer.completion_tokens) / 1000.0 * price.output;
            self.metrics
                .cost_microdollars
                .with_label_values(&[t])
                .inc_by((dollars * 1e6).round() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_endpoint(breaker_failures: u32) -> OpenAiLlm {
        // A port nobody listens on: every call fails to connect.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        OpenAiLlm::new(
            LlmSettings {
                base_url: format!("http://127.0.0.1:{port}/v1"),
                api_key: "k".into(),
                timeout: Duration::from_millis(300),
                attempts: 1,
                backoff_base: Duration::from_millis(1),
                breaker_failures,
                breaker_cooldown: Duration::from_secs(60),
                prices: HashMap::new(),
            },
            LlmMetrics::new(&Registry::new()).unwrap(),
        )
    }

    fn request() -> LlmRequest {
        engine::prompt::build(
            "Loja",
            &engine::tenant::TenantSettings::default(),
            &[],
            &[],
            "oi",
        )
    }

    #[tokio::test]
    async fn the_breaker_opens_after_consecutive_failures_and_short_circuits() {
        let llm = dead_endpoint(2);
        let tenant = TenantId::parse("t").unwrap();
        for _ in 0..2 {
            assert!(matches!(
                llm.complete(&tenant, &request()).await,
                Err(LlmError::Failed(_))
            ));
        }
        assert_eq!(llm.metrics.breaker_open.get(), 1);
        let started = Instant::now();
        assert_eq!(
            llm.complete(&tenant, &request()).await,
            Err(LlmError::CircuitOpen)
        );
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "an open breaker must not wait on the endpoint"
        );
    }
}
