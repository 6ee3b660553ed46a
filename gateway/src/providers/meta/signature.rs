//! `X-Hub-Signature-256`: `sha256=` and the hex HMAC-SHA256 of the raw body, keyed with the app
//! secret, checked in constant time before the body is parsed.
//!
//! The signature carries no timestamp, so a captured body can be replayed for as long as the app
//! secret is valid. The defence is deduplication: message ids are remembered for 7 days (as long as
//! Meta retries an undelivered notification), and statuses only move forward, so a replay is
//! answered 200 and changes nothing.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 signature")]
    Missing,
    #[error("X-Hub-Signature-256 is not `sha256=` and hex")]
    Malformed,
    #[error("invalid X-Hub-Signature-256 signature")]
    Invalid,
}

/// Checks `header` (`sha256=<hex>`) against HMAC-SHA256(`app_secret`, `body`) in constant time.
/// An empty app secret never verifies.
pub fn verify(app_secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header
        .map(str::trim)
        .filter(|header| !header.is_empty())
        .ok_or(SignatureError::Missing)?;
    let Some((scheme, hex_signature)) = header.split_once('=') else {
        return Err(SignatureError::Malformed);
    };
    if !scheme.eq_ignore_ascii_case("sha256") {
        return Err(SignatureError::Malformed);
    }
    let expected = hex::decode(hex_signature).map_err(|_| SignatureError::Malformed)?;
    if app_secret.is_empty() {
        return Err(SignatureError::Invalid);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret).map_err(|_| SignatureError::Invalid)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Invalid)
}

/// The header value for `body` signed with `app_secret`, as Meta sends it (for tests and tools).
pub fn sign(app_secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    const VECTOR: &[u8] =
        include_bytes!("../../../tests/fixtures/meta/webhook-signature.example.json");
    const SIGNED_BODY: &[u8] = include_bytes!("../../../tests/fixtures/meta/messages.text.json");

    #[test]
    fn the_readme_vector_verifies() {
        let vector: Value = serde_json::from_slice(VECTOR).unwrap();
        assert_eq!(vector["body_file"], "messages.text.json");
        let secret = vector["app_secret"].as_str().unwrap().as_bytes();
        let header = vector["headers"]["X-Hub-Signature-256"].as_str().unwrap();
        assert_eq!(verify(secret, SIGNED_BODY, Some(header)), Ok(()));
        assert_eq!(sign(secret, SIGNED_BODY), header);
        assert_eq!(
            verify(secret, SIGNED_BODY, Some(&header.to_ascii_uppercase())),
            Ok(())
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let vector: Value = serde_json::from_slice(VECTOR).unwrap();
        let secret = vector["app_secret"].as_str().unwrap().as_bytes();
        let header = vector["headers"]["X-Hub-Signature-256"].as_str().unwrap();
        let mut altered = SIGNED_BODY.to_vec();
        altered[0] = b' ';
        assert_eq!(
            verify(secret, &altered, Some(header)),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(b"other", SIGNED_BODY, Some(header)),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(b"", SIGNED_BODY, Some(header)),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(secret, SIGNED_BODY, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(secret, SIGNED_BODY, Some(&header["sha256=".len()..])),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(
                secret,
                SIGNED_BODY,
                Some(&header.replace("sha256=", "sha1="))
            ),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(secret, SIGNED_BODY, Some("sha256=xyz")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(secret, SIGNED_BODY, Some(&header[..header.len() - 2])),
            Err(SignatureError::Invalid)
        );
    }
}
