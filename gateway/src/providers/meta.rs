//! Meta's WhatsApp Cloud API (Graph API): the verification handshake, signed webhooks, the client,
//! and the classification of Graph error codes.
//!
//! [`parse`] turns a webhook body into [`ProviderEvent`](super::ProviderEvent)s (every entry ×
//! change × message, echo and status of a batch), [`signature`] checks `X-Hub-Signature-256`, and
//! [`MetaClient`] sends text and the typing indicator through `POST /{version}/{phone-number-id}/messages`.
//! Every quirk these follow is written down in the providers README, section 3.

mod client;
pub mod signature;
mod webhook;

use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, Mutex};

use engine::ContactId;

pub use client::MetaClient;
pub use webhook::parse;

/// The provider's name in metrics, logs and [`engine::ports::Provider::kind`].
pub const KIND: &str = "meta";
/// Where the Graph API lives unless the tenant says otherwise.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.facebook.com";
/// The Graph API version used unless the tenant says otherwise.
pub const DEFAULT_API_VERSION: &str = "v21.0";

/// What a Graph error code means for Conversa.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 130429 (throughput), 131056 (pair rate), 4 and 80007 (API-call limits), HTTP 429: back off
    /// and retry later.
    RateLimited,
    /// 131047: more than 24 hours since the customer last wrote; free-form text is refused, so the
    /// conversation needs a human (or a template). Never retried.
    OutsideWindow,
    /// 190: the access token expired or was revoked; the tenant needs attention. Never retried.
    TokenExpired,
    /// 1, 2, 131000, 131016 and HTTP 5xx: Meta's side failed; retry.
    ServerError,
    /// Any other error (other 4xx): the request will not succeed as it is. Never retried.
    Rejected,
}

impl ErrorClass {
    /// Classifies by Graph `error.code` first (Meta says to branch on it, not on the HTTP
    /// status), then by HTTP status.
    pub fn of(code: Option<i64>, http_status: Option<u16>) -> Self {
        match code {
            Some(130_429 | 131_056 | 4 | 80_007) => Self::RateLimited,
            Some(131_047) => Self::OutsideWindow,
            Some(190) => Self::TokenExpired,
            Some(1 | 2 | 131_000 | 131_016) => Self::ServerError,
            _ => match http_status {
                Some(429) => Self::RateLimited,
                Some(status) if status >= 500 => Self::ServerError,
                _ => Self::Rejected,
            },
        }
    }

    /// Whether trying again later may succeed.
    pub fn retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::ServerError)
    }

    /// The stable name used in error messages, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::OutsideWindow => "outside_window",
            Self::TokenExpired => "token_expired",
            Self::ServerError => "server_error",
            Self::Rejected => "rejected",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a verification handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// `hub.mode` is not `subscribe` or `hub.verify_token` does not match: answer 403.
    #[error("verification refused: wrong mode or verify token")]
    Refused,
    /// `hub.challenge` is missing, too long or not a plain token: answer 400.
    #[error("hub.challenge is missing or not a plain token")]
    BadChallenge,
}

/// The verification handshake: when `mode` is `subscribe` and `token` matches `verify_token`
/// (compared in constant time), returns the challenge to answer as plain text. Meta's challenge is
/// a number; anything longer than 256 characters or outside `[A-Za-z0-9._-]` is refused rather
/// than reflected.
pub fn handshake(
    mode: Option<&str>,
    token: Option<&str>,
    challenge: Option<&str>,
    verify_token: &str,
) -> Result<String, HandshakeError> {
    let token_matches = token.is_some_and(|token| {
        !verify_token.is_empty() && crate::util::secure_eq(token, verify_token)
    });
    if mode != Some("subscribe") || !token_matches {
        return Err(HandshakeError::Refused);
    }
    match challenge {
        Some(challenge)
            if !challenge.is_empty()
                && challenge.len() <= 256
                && challenge
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            Ok(challenge.to_owned())
        }
        _ => Err(HandshakeError::BadChallenge),
    }
}

/// Most (phone number, contact) pairs whose last inbound message id is remembered; past it the
/// memory starts over (the typing indicator is best effort).
const MAX_REMEMBERED: usize = 100_000;

/// The latest inbound message id per business number and contact. The typing indicator of the
/// Cloud API must name an inbound message (it also marks it read), and
/// [`engine::ports::Provider::typing`] only names the contact, so the webhook handler remembers
/// it here and [`MetaClient`] looks it up.
static LAST_INBOUND: LazyLock<Mutex<HashMap<(String, ContactId), String>>> =
    LazyLock::new(Mutex::default);

/// Remembers `wamid` as the latest message `contact` sent to `phone_number_id`.
pub fn remember_inbound(phone_number_id: &str, contact: &ContactId, wamid: &str) {
    let mut remembered = LAST_INBOUND.lock().unwrap_or_else(|p| p.into_inner());
    if remembered.len() >= MAX_REMEMBERED {
        remembered.clear();
    }
    remembered.insert(
        (phone_number_id.to_owned(), contact.clone()),
        wamid.to_owned(),
    );
}

/// The latest inbound message id of `contact` on `phone_number_id`, if remembered.
fn last_inbound(phone_number_id: &str, contact: &ContactId) -> Option<String> {
    LAST_INBOUND
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(phone_number_id.to_owned(), contact.clone()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    const VERIFY: &[u8] = include_bytes!("../../tests/fixtures/meta/verify.get.request.json");

    #[test]
    fn error_codes_are_classified() {
        use ErrorClass::*;
        let class = |code: i64, status: u16| ErrorClass::of(Some(code), Some(status));
        assert_eq!(class(130_429, 400), RateLimited);
        assert_eq!(class(131_056, 400), RateLimited);
        assert_eq!(class(4, 403), RateLimited);
        assert_eq!(class(131_047, 400), OutsideWindow);
        assert_eq!(class(190, 401), TokenExpired);
        assert_eq!(class(131_000, 500), ServerError);
        assert_eq!(class(100, 400), Rejected);
        assert_eq!(class(131_026, 400), Rejected);
        // The code wins over the HTTP status.
        assert_eq!(class(190, 500), TokenExpired);
        assert_eq!(class(100, 503), ServerError);
        assert_eq!(ErrorClass::of(None, Some(429)), RateLimited);
        assert_eq!(ErrorClass::of(None, Some(502)), ServerError);
        assert_eq!(ErrorClass::of(None, Some(404)), Rejected);
        assert_eq!(ErrorClass::of(None, None), Rejected);
        assert!(RateLimited.retryable() && ServerError.retryable());
        assert!(!OutsideWindow.retryable() && !TokenExpired.retryable() && !Rejected.retryable());
    }

    #[test]
    fn the_handshake_fixture_is_answered_with_its_challenge() {
        let request: Value = serde_json::from_slice(VERIFY).unwrap();
        let query = &request["query"];
        let answer = handshake(
            query["hub.mode"].as_str(),
            query["hub.verify_token"].as_str(),
            query["hub.challenge"].as_str(),
            "my-verify-token",
        );
        let expected = request["expected_response"]["body"].as_str().unwrap();
        assert_eq!(answer, Ok(expected.to_owned()));
    }

    #[test]
    fn handshakes_that_are_refused() {
        let ok = |mode, token, challenge| handshake(mode, token, challenge, "tok");
        assert_eq!(
            ok(Some("subscribe"), Some("tok"), Some("42")),
            Ok("42".to_owned())
        );
        assert_eq!(
            ok(Some("subscribe"), Some("nope"), Some("42")),
            Err(HandshakeError::Refused)
        );
        assert_eq!(
            ok(Some("unsubscribe"), Some("tok"), Some("42")),
            Err(HandshakeError::Refused)
        );
        assert_eq!(
            ok(None, Some("tok"), Some("42")),
            Err(HandshakeError::Refused)
        );
        assert_eq!(
            ok(Some("subscribe"), None, Some("42")),
            Err(HandshakeError::Refused)
        );
        assert_eq!(
            ok(Some("subscribe"), Some("tok"), None),
            Err(HandshakeError::BadChallenge)
        );
        assert_eq!(
            ok(Some("subscribe"), Some("tok"), Some("")),
            Err(HandshakeError::BadChallenge)
        );
        assert_eq!(
            ok(Some("subscribe"), Some("tok"), Some("<script>")),
            Err(HandshakeError::BadChallenge)
        );
        assert_eq!(
            ok(Some("subscribe"), Some("tok"), Some(&"9".repeat(257))),
            Err(HandshakeError::BadChallenge)
        );
        assert_eq!(
            handshake(Some("subscribe"), Some(""), Some("42"), ""),
            Err(HandshakeError::Refused)
        );
    }

    #[test]
    fn inbound_ids_are_remembered_per_number_and_contact() {
        let maria = ContactId::parse("5511999999998").unwrap();
        remember_inbound("pnid-test-remember", &maria, "wamid.A");
        remember_inbound("pnid-test-remember", &maria, "wamid.B");
        assert_eq!(
            last_inbound("pnid-test-remember", &maria).as_deref(),
            Some("wamid.B")
        );
        assert_eq!(last_inbound("pnid-test-other", &maria), None);
    }
}
