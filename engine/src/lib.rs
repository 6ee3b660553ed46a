//! Conversa's domain core: every decision about a conversation, with no IO, no clock and no runtime.
//!
//! Callers (the `actors` crate) pass `now` in, call the pure functions here, and carry out the
//! effects they return through the [`ports`] traits.
//!
//! Module map:
//! - [`ids`]: tenant, contact and message identifiers, and contact normalisation from provider JIDs.
//! - [`time`]: [`Timestamp`], milliseconds since the Unix epoch.
//! - [`error`]: [`EngineError`] and the closed [`ErrorKind`] set the gateway maps to HTTP statuses.
//! - [`message`]: stored messages, inbound items, delivery statuses.
//! - [`tenant`]: tenants, provider configuration, assistant settings and their validation.
//! - [`conversation`]: the three states, the transition reasons and [`conversation::transition`].
//! - [`buffer`]: the debounce buffer that turns quick successive messages into one turn.
//! - [`memory`]: the memory window (last `memory_messages` messages).
//! - [`text`]: case and accent folding, Portuguese tokenisation and stemming.
//! - [`knowledge`]: chunking the tenant's knowledge and lexical retrieval with a confidence in [0,1].
//! - [`smalltalk`]: greetings, thanks and goodbyes.
//! - [`turn`]: the turn decision (answer, small talk, hand off, stay silent).
//! - [`prompt`]: the LLM prompt of a turn (grounding, tone, memory, token budget).
//! - [`sending`]: answers split into messages, typing pauses.
//! - [`events`]: what dashboards are told.
//! - [`ports`]: the traits for storage, providers and event publication.
//!
//! **Invariant:** nothing in this crate performs IO or reads a clock; every function is deterministic
//! given its arguments.

pub mod buffer;
pub mod conversation;
pub mod error;
pub mod events;
pub mod ids;
pub mod knowledge;
pub mod memory;
pub mod message;
pub mod ports;
pub mod prompt;
pub mod sending;
pub mod smalltalk;
pub mod tenant;
pub mod text;
pub mod time;
pub mod turn;

#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use conversation::{Conversation, ConversationState, Reason};
pub use error::{EngineError, ErrorKind};
pub use ids::{ContactId, MessageId, TenantId};
pub use time::Timestamp;
