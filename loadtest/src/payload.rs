//! Provider-shaped webhook bodies and tenant provider configurations, one section per provider.
//!
//! The shapes follow `shared/providers/*` (Evolution `messages.upsert`, WAHA `message`, Meta Cloud API
//! `messages`). Adding a provider means a new [`ProviderKind`] variant and its three functions here;
//! the recorder learns its outbound routes in `recorder.rs`.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};

/// The WhatsApp providers Conversa receives webhooks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Evolution,
    Waha,
    Meta,
}

/// The per-tenant secrets a provider configuration needs; all made up for the run.
#[derive(Debug, Clone)]
pub struct TenantSecrets {
    pub webhook_token: String,
    pub hmac_secret: String,
    pub app_secret: String,
    pub verify_token: String,
    pub phone_number_id: String,
}

impl TenantSecrets {
    /// Secrets derived from the run id and the tenant index (distinct per tenant and run).
    pub fn new(run: &str, index: u32) -> Self {
        Self {
            webhook_token: format!("lt-{run}-{index}-webhook-token"),
            hmac_secret: format!("lt-{run}-{index}-hmac"),
            app_secret: format!("lt-{run}-{index}-app-secret"),
            verify_token: format!("lt-{run}-{index}-verify"),
            // Meta phone number ids are digits; unique per tenant and run.
            phone_number_id: format!(
                "9{:08}{:06}",
                u32::from_str_radix(&run[..6], 16).unwrap_or(0) % 100_000_000,
                index
            ),
        }
    }
}

/// One webhook ready to POST.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Evolution => "evolution",
            Self::Waha => "waha",
            Self::Meta => "meta",
        }
    }

    /// The `provider` object of `POST /api/v1/tenants`, pointing at the recording server.
    pub fn tenant_config(
        self,
        recorder_base: &str,
        tenant: &str,
        secrets: &TenantSecrets,
    ) -> Value {
        match self {
            Self::Evolution => json!({
                "kind": "evolution", "base_url": recorder_base, "instance": tenant,
                "api_key": format!("{tenant}-evolution-key"), "webhook_token": secrets.webhook_token,
            }),
            Self::Waha => json!({
                "kind": "waha", "base_url": recorder_base, "session": tenant,
                "api_key": format!("{tenant}-waha-key"), "hmac_secret": secrets.hmac_secret,
                "webhook_token": secrets.webhook_token,
            }),
            Self::Meta => json!({
                "kind": "meta", "graph_url": recorder_base, "api_version": "v21.0",
                "phone_number_id": secrets.phone_number_id, "access_token": format!("{tenant}-meta-token"),
                "app_secret": secrets.app_secret, "verify_token": secrets.verify_token,
            }),
        }
    }

    /// An inbound text message from `contact` (digits), with provider message id `message_id`.
    pub fn text_webhook(
        self,
        tenant: &str,
        secrets: &TenantSecrets,
        contact: &str,
        message_id: &str,
        text: &str,
        unix_seconds: u64,
    ) -> Webhook {
        match self {
            Self::Evolution => {
                let body = json!({
                    "event": "messages.upsert",
                    "instance": tenant,
                    "data": {
                        "key": {"remoteJid": format!("{contact}@s.whatsapp.net"), "fromMe": false, "id": message_id},
                        "pushName": "Cliente Teste",
                        "status": "DELIVERY_ACK",
                        "message": {"conversation": text},
                        "messageType": "conversation",
                        "messageTimestamp": unix_seconds,
                        "instanceId": "6f1c2a3b-9d4e-4b7a-8c21-5e0f3a9b7d12",
                        "source": "android"
                    },
                    "destination": "http://127.0.0.1/webhooks/evolution",
                    "date_time": "2025-06-10T13:32:06.118Z",
                    "sender": "5511988887777@s.whatsapp.net",
                    "server_url": "http://127.0.0.1",
                    "apikey": null
                });
                Webhook {
                    path: format!("/webhooks/evolution/{tenant}"),
                    headers: vec![("apikey", secrets.webhook_token.clone())],
                    body: serde_json::to_vec(&body).unwrap_or_default(),
                }
            }
            Self::Waha => {
                let body = json!({
                    "id": format!("evt_{}", message_id.to_ascii_lowercase()),
                    "timestamp": unix_seconds * 1000,
                    "event": "message",
                    "session": tenant,
                    "metadata": {},
                    "me": {"id": "5511988887777@c.us", "pushName": "Loja"},
                    "payload": {
                        "id": format!("false_{contact}@c.us_{message_id}"),
                        "timestamp": unix_seconds,
                        "from": format!("{contact}@c.us"),
                        "fromMe": false,
                        "source": "app",
                        "to": "5511988887777@c.us",
                        "participant": null,
                        "body": text,
                        "hasMedia": false,
                        "media": null,
                        "ack": 2,
                        "ackName": "DEVICE",
                        "vCards": [],
                        "replyTo": null,
                        "_data": {}
                    },
                    "engine": "NOWEB",
                    "environment": {"version": "2025.6.2", "engine": "NOWEB", "tier": "PLUS", "browser": null}
                });
                let body = serde_json::to_vec(&body).unwrap_or_default();
                let signature = hmac_sha512_hex(&secrets.hmac_secret, &body);
                Webhook {
                    path: format!("/webhooks/waha/{tenant}"),
                    headers: vec![
                        ("x-webhook-hmac", signature),
                        ("x-webhook-hmac-algorithm", "sha512".to_owned()),
                    ],
                    body,
                }
            }
            Self::Meta => {
                let body = json!({
                    "object": "whatsapp_business_account",
                    "entry": [{
                        "id": "109876543210987",
                        "changes": [{
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {"display_phone_number": "5511988887777", "phone_number_id": secrets.phone_number_id},
                                "contacts": [{"profile": {"name": "Cliente Teste"}, "wa_id": contact}],
                                "messages": [{
                                    "from": contact,
                                    "id": format!("wamid.{message_id}"),
                                    "timestamp": unix_seconds.to_string(),
                                    "type": "text",
                                    "text": {"body": text}
                                }]
                            },
                            "field": "messages"
                        }]
                    }]
                });
                let body = serde_json::to_vec(&body).unwrap_or_default();
                let signature = format!("sha256={}", hmac_sha256_hex(&secrets.app_secret, &body));
                Webhook {
                    path: format!("/webhooks/meta/{tenant}"),
                    headers: vec![("x-hub-signature-256", signature)],
                    body,
                }
            }
        }
    }
}

/// Hex HMAC-SHA256 of `body` with `key` (Meta's `X-Hub-Signature-256`).
pub fn hmac_sha256_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Hex HMAC-SHA512 of `body` with `key` (WAHA's `X-Webhook-Hmac`).
pub fn hmac_sha512_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_the_contact_the_id_and_the_text() {
        let secrets = TenantSecrets::new("abcdef", 3);
        for kind in [
            ProviderKind::Evolution,
            ProviderKind::Waha,
            ProviderKind::Meta,
        ] {
            let hook = kind.text_webhook(
                "lt-abcdef-3",
                &secrets,
                "5511900000042",
                "LTID42",
                "qual o horário? #42",
                1_749_562_325,
            );
            let text = String::from_utf8(hook.body.clone()).unwrap();
            assert!(hook.path.ends_with("/lt-abcdef-3"), "{}", hook.path);
            assert!(
                text.contains("5511900000042") && text.contains("LTID42") && text.contains("#42"),
                "{text}"
            );
            assert!(!hook.headers.is_empty());
        }
    }

    #[test]
    fn signatures_match_the_shared_test_vectors() {
        // RFC 4231 test case 2.
        let data = b"what do ya want for nothing?";
        assert_eq!(
            hmac_sha256_hex("Jefe", data),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hmac_sha512_hex("Jefe", data),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }
}
