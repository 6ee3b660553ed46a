//! WAHA (WhatsApp HTTP API, engines NOWEB, WEBJS, GOWS): its webhooks, their HMAC signature, and
//! its REST client.
//!
//! [`parse`] turns a webhook body into [`ProviderEvent`](super::ProviderEvent)s, [`signature`]
//! checks `X-Webhook-Hmac` and the replay window, and [`WahaClient`] sends text, typing and read
//! receipts through `/api/sendText`, `/api/startTyping`, `/api/stopTyping` and `/api/sendSeen`.
//! Every quirk these follow is written down in the providers README, section 2.

mod client;
pub mod signature;
mod webhook;

pub use client::WahaClient;
pub use webhook::{Envelope, parse, parse_envelope};

/// The provider's name in metrics, logs and [`engine::ports::Provider::kind`].
pub const KIND: &str = "waha";

/// The bare WhatsApp id inside a serialized WAHA message id
/// (`{fromMe}_{chatId}_{waMessageId}[_{participant}]`); any other string is returned whole.
///
/// Conversa keys WAHA messages by the bare id because the send response (NOWEB: `key.id`), the
/// `message.any` echo and `message.ack` (serialized ids) and `editedMessageId` /
/// `revokedMessageId` (bare ids) only agree on that part.
pub fn bare_message_id(id: &str) -> &str {
    let mut parts = id.splitn(4, '_');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("true" | "false"), Some(chat), Some(bare))
            if chat.contains('@') && !bare.is_empty() =>
        {
            bare
        }
        _ => id,
    }
}

#[cfg(test)]
mod tests {
    use super::bare_message_id;

    #[test]
    fn bare_ids_from_serialized_ids() {
        assert_eq!(
            bare_message_id("false_5511999999999@c.us_A1F3C2B9E7D84F1A9C0B3D5E6F708192"),
            "A1F3C2B9E7D84F1A9C0B3D5E6F708192"
        );
        assert_eq!(
            bare_message_id("true_5511999999999@c.us_3EB0C5A277F7F9B6C5990E"),
            "3EB0C5A277F7F9B6C5990E"
        );
        assert_eq!(
            bare_message_id(
                "false_120363025246125486@g.us_C9D8E7F6A5B4C3D2E1F0A9B8C7D6E5F4_5511977776666@c.us"
            ),
            "C9D8E7F6A5B4C3D2E1F0A9B8C7D6E5F4"
        );
        assert_eq!(
            bare_message_id("3EB0C5A277F7F9B6C5990E"),
            "3EB0C5A277F7F9B6C5990E"
        );
        assert_eq!(bare_message_id("false_nochat_X"), "false_nochat_X");
        assert_eq!(bare_message_id("true_a@c.us_"), "true_a@c.us_");
        assert_eq!(bare_message_id(""), "");
    }
}
