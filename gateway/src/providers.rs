//! Provider webhooks and clients, normalised: the rest of Conversa never sees a provider's shapes.
//!
//! Each provider module parses a raw webhook body into [`ProviderEvent`]s and implements
//! [`engine::ports::Provider`] for sending.

pub mod evolution;

use std::time::Duration;

use engine::message::{DeliveryStatus, MessageKind};
use engine::{ContactId, Timestamp};
use rand::Rng;

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
    /// The provider's connection to WhatsApp changed (`open`, `close`, …).
    Connection {
        state: String,
        reason: Option<String>,
    },
    /// Deliberately ignored, with the reason counted in metrics.
    Ignored(IgnoreReason),
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
