//! Evolution API v2 (a Baileys-based WhatsApp gateway): its webhooks and its REST client.
//!
//! [`parse`] turns a webhook body into [`ProviderEvent`](super::ProviderEvent)s; [`EvolutionClient`]
//! sends text and typing indicators through `/message/sendText` and `/chat/sendPresence`.
//! Every quirk these follow is written down in the providers README, section 1.

mod client;
mod webhook;

pub use client::EvolutionClient;
pub use webhook::parse;

/// The provider's name in metrics, logs and [`engine::ports::Provider::kind`].
pub const KIND: &str = "evolution";
