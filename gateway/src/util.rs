//! Small helpers shared by the handlers.

use std::time::{Duration, UNIX_EPOCH};

use engine::Timestamp;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// RFC 3339 with milliseconds, UTC (`2025-06-10T13:32:06.118Z`).
pub fn rfc3339(t: Timestamp) -> String {
    let ms = t.as_millis().max(0) as u64;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Parses RFC 3339 or integer milliseconds.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(Timestamp::from_millis(ms));
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    Some(Timestamp::from_millis(
        t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64,
    ))
}

/// Hex SHA-256, for API keys at rest.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Compares secrets in constant time.
pub fn secure_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A new random secret with a readable prefix (`cvk_…`): 32 random bytes, hex.
pub fn random_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{prefix}{}", hex::encode(bytes))
}
