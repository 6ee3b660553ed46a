//! Provider webhooks and clients, normalised: the rest of Conversa never sees a provider's shapes.
//!
//! Each provider module ([`evolution`], [`waha`], [`meta`]) parses a raw webhook body into
//! [`ProviderEvent`]s and implements [`engine::ports::Provider`] for sending. What they share lives
//! here: the normalised model, chat-id and timestamp reading, the retry loop and HTTP helpers of the
//! clients, and the [`AttentionBoard`] of tenants whose provider needs a person.

pub mod evolution;
pub mod meta;
pub mod waha;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{LazyLock, RwLock};
use std::time::Duration;

use engine::message::{DeliveryStatus, MessageKind};
use engine::ports::SendError;
use engine::{ContactId, TenantId, Timestamp};
use prometheus::{IntGaugeVec, Opts, Registry};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;
use tracing::{debug, warn};

/// One thing a webhook body told us.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    /// A message in a one-to-one chat, from the customer or typed by the business.
    Message(InboundMessage),
    /// A delivery status of a message the business sent.
    Delivery {
        provider_id: String,
        status: DeliveryStatus,
        error: Option<String>,
    },
    /// The provider's connection to WhatsApp changed (`open`, `connecting`, `close`, `refused`).
    Connection {
        state: String,
        reason: Option<String>,
    },
    /// A message was edited. `original_id` is the provider id the message was first recorded with;
    /// `text` is its new text (or caption).
    Edit {
        contact: ContactId,
        original_id: String,
        from_me: bool,
        text: String,
    },
    /// A message was deleted for everyone. `original_id` is the provider id it was recorded with.
    Revoke {
        contact: ContactId,
        original_id: String,
        from_me: bool,
    },
    /// The provider reported a problem that a person has to solve; retrying will not.
    Problem(ProviderProblem),
    /// Deliberately ignored, with the reason counted in metrics.
    Ignored(IgnoreReason),
}

/// Problems a provider reports that no retry solves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderProblem {
    /// The provider refuses Conversa's credentials (Meta error 190: the access token expired or was
    /// revoked). Every send fails until someone renews them.
    CredentialsRejected { detail: String },
    /// The contact's 24-hour customer service window is closed (Meta error 131047): free-form text
    /// is refused until the contact writes again, so the conversation needs a human.
    OutsideWindow {
        contact: ContactId,
        provider_id: String,
    },
}

impl ProviderProblem {
    /// The metric label and log name of the problem.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::CredentialsRejected { .. } => "credentials_rejected",
            Self::OutsideWindow { .. } => "outside_window",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// Provider-scoped dedupe key, unique per tenant (for example `<remoteJid>/<key.id>`).
    pub dedupe_key: String,
    /// The provider's message id.
    pub provider_id: String,
    pub contact: ContactId,
    /// Written by the business (its phone, WhatsApp Web, the business app), not by the customer.
    pub from_me: bool,
    pub push_name: Option<String>,
    pub kind: MessageKind,
    /// The text, or the media caption; empty when there is none.
    pub text: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    Group,
    StatusBroadcast,
    Newsletter,
    /// A chat id that is not a phone number (`@lid` without the phone alternative).
    UnknownChat,
    /// The provider's echo of a message sent through its API (by Conversa).
    OwnEcho,
    /// An event type Conversa does not act on (QR codes, presence, contacts…).
    UnsupportedEvent,
    /// The event belongs to another WhatsApp number or session than the tenant's (a provider
    /// account shared by several tenants, or a webhook pointed at the wrong tenant).
    OtherAccount,
}

impl IgnoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::StatusBroadcast => "status_broadcast",
            Self::Newsletter => "newsletter",
            Self::UnknownChat => "unknown_chat",
            Self::OwnEcho => "own_echo",
            Self::UnsupportedEvent => "unsupported_event",
            Self::OtherAccount => "other_account",
        }
    }
}

/// Why a webhook body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// How a provider client retries a send that failed for a reason that may pass (timeouts, connection
/// errors, HTTP 429 and 5xx). Other failures are never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in total, the first included; 0 behaves as 1.
    pub attempts: u32,
    /// The wait before the first retry; it doubles before each further retry.
    pub base_delay: Duration,
    /// The longest wait between two tries.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Tries in total, never less than one.
    pub fn max_attempts(&self) -> u32 {
        self.attempts.max(1)
    }

    /// The wait after failed try number `attempt` (1-based): `base_delay * 2^(attempt-1)` capped at
    /// `max_delay`, then jittered down to between half and all of it so that clients that failed
    /// together do not retry together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let ceiling = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        if ceiling_ms < 2 {
            return ceiling;
        }
        Duration::from_millis(rand::rng().random_range(ceiling_ms / 2..=ceiling_ms))
    }
}

/// The HTTP client every provider shares: rustls, a 5 s connect timeout, `timeout` for a whole
/// request (response body included) and `User-Agent: conversa/<version>`. Build it once and clone it:
/// clones share the connection pool.
///
/// # Panics
/// When the TLS backend cannot be initialised, a deployment fault that shows at startup.
pub fn shared_http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_rustls()
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .user_agent(concat!("conversa/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the rustls HTTP client must build")
}

/// Tenants whose provider needs a person: an access token that expired (Meta 190), an API key the
/// provider refuses (WAHA 401). Clients raise a flag when a send fails that way and clear it when a
/// send succeeds again; `/ready` and the `conversa_provider_attention` gauge report the flags.
///
/// It is process-wide ([`attention`]) because the clients, built by the provider factory, and the
/// webhook handlers meet nowhere else; it holds one small entry per flagged tenant.
#[derive(Debug, Default)]
pub struct AttentionBoard {
    flags: RwLock<HashMap<TenantId, Attention>>,
}

/// Why a tenant's provider needs a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attention {
    pub provider: &'static str,
    pub reason: String,
    pub since: Timestamp,
}

/// The one [`AttentionBoard`] of the process.
pub fn attention() -> &'static AttentionBoard {
    static BOARD: LazyLock<AttentionBoard> = LazyLock::new(AttentionBoard::default);
    &BOARD
}

/// `conversa_provider_attention{tenant, provider}`: 1 while the tenant's provider needs a person.
static ATTENTION_GAUGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "conversa_provider_attention",
            "1 while a tenant's provider needs a person (expired token, refused API key)",
        ),
        &["tenant", "provider"],
    )
    .expect("the attention gauge's options should be valid")
});

impl AttentionBoard {
    /// Flags `tenant` (again); the first flag's time is kept.
    pub fn raise(&self, tenant: &TenantId, provider: &'static str, reason: &str, now: Timestamp) {
        let mut flags = self.flags.write().unwrap_or_else(|p| p.into_inner());
        let since = flags.get(tenant).map_or(now, |flag| flag.since);
        if !flags.contains_key(tenant) {
            warn!(tenant = %tenant, provider, reason, "tenant needs attention");
        }
        flags.insert(
            tenant.clone(),
            Attention {
                provider,
                reason: reason.to_owned(),
                since,
            },
        );
        ATTENTION_GAUGE
            .with_label_values(&[tenant.as_str(), provider])
            .set(1);
    }

    /// Removes the flag of `tenant`, if any.
    pub fn clear(&self, tenant: &TenantId) {
        let removed = self
            .flags
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
        if let Some(flag) = removed {
            debug!(tenant = %tenant, provider = flag.provider, "tenant no longer needs attention");
            ATTENTION_GAUGE
                .with_label_values(&[tenant.as_str(), flag.provider])
                .set(0);
        }
    }

    pub fn get(&self, tenant: &TenantId) -> Option<Attention> {
        self.flags
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
    }

    /// Every flagged tenant, by id.
    pub fn snapshot(&self) -> Vec<(TenantId, Attention)> {
        let mut flags: Vec<_> = self
            .flags
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(tenant, flag)| (tenant.clone(), flag.clone()))
            .collect();
        flags.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        flags
    }

    /// Registers the gauge in `registry`; registering it again is a no-op.
    pub fn register(registry: &Registry) {
        match registry.register(Box::new(ATTENTION_GAUGE.clone())) {
            Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
            Err(error) => warn!(error = %error, "attention gauge not registered"),
        }
    }
}

// ---- shared by the parsers ----

/// Latest plausible message time (9999-12-31T23:59:59Z); anything later is treated as missing.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// The person a chat id designates, or why the chat is not a one-to-one chat: `@s.whatsapp.net`,
/// `@c.us`, bare digits (Meta's `wa_id`) and hidden ids (`@lid`, a person whose number is not
/// shown) are people; groups, Status, channels and other broadcasts are not.
pub(crate) fn chat_contact(jid: &str) -> Result<ContactId, IgnoreReason> {
    if jid.ends_with("@g.us") {
        Err(IgnoreReason::Group)
    } else if jid == "status@broadcast" {
        Err(IgnoreReason::StatusBroadcast)
    } else if jid.ends_with("@newsletter") {
        Err(IgnoreReason::Newsletter)
    } else {
        ContactId::from_jid(jid).map_err(|_| IgnoreReason::UnknownChat)
    }
}

/// Unix seconds from a number (fractions dropped) or a numeric string; 0 when missing, unreadable,
/// not positive or absurdly far in the future.
pub(crate) fn unix_seconds(value: Option<&Value>) -> i64 {
    let seconds = match value {
        Some(Value::Number(number)) => number.as_i64().or_else(|| {
            number
                .as_f64()
                .filter(|float| float.is_finite() && float.abs() < 1e15)
                .map(|float| float as i64)
        }),
        Some(Value::String(text)) => {
            let text = text.trim();
            text.parse::<i64>().ok().or_else(|| {
                text.parse::<f64>()
                    .ok()
                    .filter(|float| float.is_finite() && float.abs() < 1e15)
                    .map(|float| float as i64)
            })
        }
        _ => None,
    };
    seconds
        .filter(|seconds| (1..=MAX_UNIX_SECONDS).contains(seconds))
        .unwrap_or(0)
}

/// The field `field` of `value` when it is a string.
pub(crate) fn str_field<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

/// `text` on one line (control characters become spaces), cut at `max_chars` with `…`.
pub(crate) fn one_line(text: &str, max_chars: usize) -> String {
    let mut short: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max_chars)
        .collect();
    if text.trim().chars().count() > max_chars {
        short.push('…');
    }
    short
}

// ---- shared by the clients ----

/// The wall clock, for clients, which are built without the application's clock.
pub(crate) fn wall_clock() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        });
    Timestamp::from_millis(millis)
}

/// Response bodies are read up to this size; providers' answers are a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A failed try of a provider request, and what the server said about waiting.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: SendError,
    pub(crate) retry_after: Option<Duration>,
    /// Retryable, but later than this client waits: [`with_retries`] hands it back to the caller
    /// at once (whose backoff is longer) instead of retrying.
    pub(crate) defer: bool,
}

/// An HTTP answer of a provider: status, `Retry-After`, and the body cut at 64 KiB (empty when
/// it could not be read).
#[derive(Debug)]
pub(crate) struct HttpReply {
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Vec<u8>,
}

/// Sends `request` and reads the answer. `Err` only when no HTTP answer came back.
pub(crate) async fn execute(
    request: reqwest::RequestBuilder,
    provider: &'static str,
    operation: &'static str,
) -> Result<HttpReply, Failure> {
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Err(transport_failure(provider, operation, &error)),
    };
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = match read_limited(response).await {
        Ok(body) => body,
        Err(error) => {
            if status.is_success() {
                // The provider took the request; retrying could send the message twice.
                warn!(provider, operation, error = %error.without_url(), "provider accepted the request but its answer could not be read");
            }
            Vec::new()
        }
    };
    Ok(HttpReply {
        status,
        retry_after,
        body,
    })
}

/// Runs `attempt` until it succeeds, fails for good, or `policy` runs out of tries; between tries
/// it waits the server's `Retry-After` (capped at `max_delay`) or the policy's jittered backoff.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    provider: &'static str,
    operation: &'static str,
    mut attempt: F,
) -> Result<T, SendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let max_attempts = policy.max_attempts();
    let mut attempt_number = 1;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(failure)
                if failure.error.retryable && !failure.defer && attempt_number < max_attempts =>
            {
                let delay = failure.retry_after.map_or_else(
                    || policy.backoff(attempt_number),
                    |wait| wait.min(policy.max_delay),
                );
                warn!(
                    provider,
                    operation,
                    attempt = attempt_number,
                    max_attempts,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    error = %failure.error,
                    "provider request failed, retrying"
                );
                tokio::time::sleep(delay).await;
                attempt_number += 1;
            }
            Err(failure) => return Err(failure.error),
        }
    }
}

/// A request that got no HTTP response. Timeouts and connection failures may pass; a request that
/// could not be built or redirected in circles will not.
fn transport_failure(provider: &str, operation: &str, error: &reqwest::Error) -> Failure {
    let (retryable, what) = if error.is_timeout() {
        (true, "timed out")
    } else if error.is_connect() {
        (true, "could not connect")
    } else if error.is_builder() || error.is_redirect() {
        (false, "request could not be made")
    } else {
        (true, "request failed")
    };
    debug!(provider, operation, error = %error, "provider request failed");
    Failure {
        error: SendError {
            retryable,
            status: None,
            message: format!("{provider} {operation}: {what}"),
            handoff: None,
        },
        retry_after: None,
        defer: false,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is ignored).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// The response body, cut at [`MAX_RESPONSE_BYTES`].
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn chat_ids() {
        let maria = ContactId::parse("5511999999999").unwrap();
        assert_eq!(chat_contact("5511999999999@c.us"), Ok(maria.clone()));
        assert_eq!(
            chat_contact("5511999999999@s.whatsapp.net"),
            Ok(maria.clone())
        );
        assert_eq!(chat_contact("5511999999999"), Ok(maria));
        assert_eq!(
            chat_contact("120363025246125486@g.us"),
            Err(IgnoreReason::Group)
        );
        assert_eq!(
            chat_contact("status@broadcast"),
            Err(IgnoreReason::StatusBroadcast)
        );
        assert_eq!(
            chat_contact("1203@newsletter"),
            Err(IgnoreReason::Newsletter)
        );
        assert_eq!(
            chat_contact("123456789012345@lid").map(|c| c.to_string()),
            Ok("123456789012345@lid".to_owned())
        );
        assert_eq!(
            chat_contact("1234@broadcast"),
            Err(IgnoreReason::UnknownChat)
        );
        assert_eq!(chat_contact(""), Err(IgnoreReason::UnknownChat));
        assert_eq!(chat_contact("💥"), Err(IgnoreReason::UnknownChat));
    }

    #[test]
    fn timestamps() {
        let seconds = |value: Value| unix_seconds(Some(&value));
        assert_eq!(seconds(json!(1_749_562_325)), 1_749_562_325);
        assert_eq!(seconds(json!(1_749_562_325.9)), 1_749_562_325);
        assert_eq!(seconds(json!("1749562325")), 1_749_562_325);
        assert_eq!(seconds(json!(" 1749562325.5 ")), 1_749_562_325);
        assert_eq!(seconds(json!("NaN")), 0);
        assert_eq!(seconds(json!("inf")), 0);
        assert_eq!(seconds(json!(-1)), 0);
        assert_eq!(seconds(json!(1e300)), 0);
        assert_eq!(seconds(json!(u64::MAX)), 0);
        assert_eq!(seconds(json!(null)), 0);
        assert_eq!(unix_seconds(None), 0);
    }

    #[test]
    fn one_line_summaries() {
        assert_eq!(one_line("  a\nb\tc  ", 10), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("ééé", 3), "ééé");
        assert_eq!(one_line("", 3), "");
    }

    #[test]
    fn attention_flags_come_and_go() {
        let board = AttentionBoard::default();
        let tenant = TenantId::parse("attention-unit").unwrap();
        assert_eq!(board.get(&tenant), None);
        board.raise(&tenant, "meta", "token expired", Timestamp::from_millis(10));
        board.raise(
            &tenant,
            "meta",
            "token expired again",
            Timestamp::from_millis(20),
        );
        let flag = board.get(&tenant).unwrap();
        assert_eq!(
            (flag.reason.as_str(), flag.since),
            ("token expired again", Timestamp::from_millis(10))
        );
        assert_eq!(board.snapshot().len(), 1);
        let registry = Registry::new();
        AttentionBoard::register(&registry);
        AttentionBoard::register(&registry);
        let gathered = registry.gather();
        assert!(
            gathered
                .iter()
                .any(|family| family.name() == "conversa_provider_attention")
        );
        board.clear(&tenant);
        assert_eq!(board.get(&tenant), None);
        assert!(board.snapshot().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_success_at_a_final_failure_and_at_a_deferred_one() {
        let policy = RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
        };
        let failure = |retryable: bool, defer: bool| Failure {
            error: SendError {
                retryable,
                status: Some(500),
                message: "x".to_owned(),
                handoff: None,
            },
            retry_after: None,
            defer,
        };
        for (retryable, defer, expected_tries) in
            [(true, false, 3), (false, false, 1), (true, true, 1)]
        {
            let mut tries = 0;
            let result: Result<(), SendError> = with_retries(&policy, "test", "op", || {
                tries += 1;
                let failure = failure(retryable, defer);
                async move { Err(failure) }
            })
            .await;
            assert!(result.is_err());
            assert_eq!(
                tries, expected_tries,
                "retryable {retryable}, defer {defer}"
            );
        }
        let mut tries = 0;
        let result = with_retries(&policy, "test", "op", || {
            tries += 1;
            let outcome = if tries < 2 {
                Err(failure(true, false))
            } else {
                Ok(tries)
            };
            async move { outcome }
        })
        .await;
        assert_eq!(result, Ok(2));
    }
}
