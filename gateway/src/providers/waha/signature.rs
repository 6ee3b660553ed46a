//! `X-Webhook-Hmac`: the hex HMAC-SHA512 of the raw body, keyed with the session's HMAC key, and
//! the replay window.
//!
//! The signature covers the body only, not the headers, so the envelope's own `timestamp` (inside
//! the signed bytes, since WAHA 2025.3) is what bounds a replay; `X-Webhook-Timestamp` is checked
//! too, but an attacker could rewrite it. Inside the window a replay is a duplicate: the store
//! remembers message ids for 7 days, so it is answered 200 and changes nothing.

use std::time::Duration;

use engine::Timestamp;
use hmac::{Hmac, Mac};
use sha2::Sha512;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-webhook-hmac";
/// The header that names the algorithm (`sha512`, the only one WAHA uses).
pub const ALGORITHM_HEADER: &str = "x-webhook-hmac-algorithm";
/// The header with the time WAHA sent the request, in unix milliseconds.
pub const TIMESTAMP_HEADER: &str = "x-webhook-timestamp";

/// Signed requests older than this are refused as replays. It outlasts WAHA's longest default
/// retry schedule (15 exponential tries from 2 s, about 18 hours in all) and stays well inside the
/// 7 days for which message ids are remembered.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Webhook-Hmac signature")]
    Missing,
    #[error("X-Webhook-Hmac is not hex")]
    Malformed,
    #[error("unsupported X-Webhook-Hmac-Algorithm")]
    Algorithm,
    #[error("invalid X-Webhook-Hmac signature")]
    Invalid,
    #[error("the signed request is too old (replay refused)")]
    Stale,
}

/// Checks `signature` (hex, either case) against HMAC-SHA512(`key`, `body`) in constant time.
/// `algorithm`, when present, must be `sha512`.
pub fn verify(
    key: &[u8],
    body: &[u8],
    signature: Option<&str>,
    algorithm: Option<&str>,
) -> Result<(), SignatureError> {
    if let Some(algorithm) = algorithm
        && !algorithm.trim().eq_ignore_ascii_case("sha512")
    {
        return Err(SignatureError::Algorithm);
    }
    let signature = signature
        .map(str::trim)
        .filter(|signature| !signature.is_empty())
        .ok_or(SignatureError::Missing)?;
    let expected = hex::decode(signature).map_err(|_| SignatureError::Malformed)?;
    let mut mac = Hmac::<Sha512>::new_from_slice(key).map_err(|_| SignatureError::Invalid)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Invalid)
}

/// Refuses a request sent more than [`REPLAY_WINDOW`] before `now`. `sent_at` is the envelope's
/// signed `timestamp` or the `X-Webhook-Timestamp` header; `None` (older WAHA) passes.
pub fn check_fresh(sent_at: Option<Timestamp>, now: Timestamp) -> Result<(), SignatureError> {
    let window_ms = i64::try_from(REPLAY_WINDOW.as_millis()).unwrap_or(i64::MAX);
    match sent_at {
        Some(sent_at) if sent_at.plus_millis(window_ms) < now => Err(SignatureError::Stale),
        _ => Ok(()),
    }
}

/// Reads `X-Webhook-Timestamp` (unix milliseconds); `None` when absent or not a number.
pub fn header_timestamp(value: Option<&str>) -> Option<Timestamp> {
    value?
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Timestamp::from_millis)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    const VECTOR: &[u8] =
        include_bytes!("../../../tests/fixtures/waha/webhook-signature.example.json");
    const SIGNED_BODY: &[u8] =
        include_bytes!("../../../tests/fixtures/waha/message.text.noweb.json");

    #[test]
    fn the_readme_vectors_verify() {
        let vector: Value = serde_json::from_slice(VECTOR).unwrap();
        assert_eq!(vector["body_file"], "message.text.noweb.json");
        let key = vector["hmac_key"].as_str().unwrap();
        let signature = vector["headers"]["X-Webhook-Hmac"].as_str().unwrap();
        let algorithm = vector["headers"]["X-Webhook-Hmac-Algorithm"].as_str();
        assert_eq!(
            verify(key.as_bytes(), SIGNED_BODY, Some(signature), algorithm),
            Ok(())
        );
        // The docs' own short vector.
        let docs = &vector["docs_test_vector"];
        assert_eq!(
            verify(
                docs["key"].as_str().unwrap().as_bytes(),
                docs["body"].as_str().unwrap().as_bytes(),
                docs["X-Webhook-Hmac"].as_str(),
                None,
            ),
            Ok(())
        );
        // Upper-case hex is the same signature.
        assert_eq!(
            verify(
                key.as_bytes(),
                SIGNED_BODY,
                Some(&signature.to_ascii_uppercase()),
                None
            ),
            Ok(())
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let vector: Value = serde_json::from_slice(VECTOR).unwrap();
        let key = vector["hmac_key"].as_str().unwrap().as_bytes();
        let signature = vector["headers"]["X-Webhook-Hmac"].as_str().unwrap();
        let mut altered = SIGNED_BODY.to_vec();
        altered.push(b'\n');
        assert_eq!(
            verify(key, &altered, Some(signature), None),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(b"other-key", SIGNED_BODY, Some(signature), None),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(key, SIGNED_BODY, None, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(key, SIGNED_BODY, Some(" "), None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(key, SIGNED_BODY, Some("zz"), None),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(key, SIGNED_BODY, Some(&signature[..64]), None),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(key, SIGNED_BODY, Some(signature), Some("sha256")),
            Err(SignatureError::Algorithm)
        );
        assert_eq!(
            verify(key, SIGNED_BODY, Some(signature), Some("SHA512")),
            Ok(())
        );
    }

    #[test]
    fn replay_window() {
        let now = Timestamp::from_millis(1_749_562_326_125);
        let window_ms = REPLAY_WINDOW.as_millis() as i64;
        assert_eq!(check_fresh(None, now), Ok(()));
        assert_eq!(check_fresh(Some(now), now), Ok(()));
        assert_eq!(check_fresh(Some(now.plus_millis(60_000)), now), Ok(()));
        assert_eq!(check_fresh(Some(now.plus_millis(-window_ms)), now), Ok(()));
        assert_eq!(
            check_fresh(Some(now.plus_millis(-window_ms - 1)), now),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            header_timestamp(Some("1749562326125")),
            Some(Timestamp::from_millis(1_749_562_326_125))
        );
        assert_eq!(header_timestamp(Some("soon")), None);
        assert_eq!(header_timestamp(Some("-5")), None);
        assert_eq!(header_timestamp(None), None);
    }
}
