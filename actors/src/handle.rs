//! [`EngineHandle`]: the cheap, cloneable façade the gateway uses to reach the actor tree.

use std::time::Duration;

use engine::conversation::Conversation;
use engine::message::{InboxEntry, StoredMessage};
use engine::{ContactId, EngineError, MessageId, TenantId};
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use crate::conversation::{Command, ConversationSnapshot};
use crate::root::RootMsg;

#[derive(Debug, Clone)]
pub struct EngineHandle {
    pub(crate) root: ActorRef<RootMsg>,
    pub(crate) call_timeout: Duration,
    pub(crate) prompts: crate::prompts::PromptLog,
}

impl EngineHandle {
    /// The last LLM prompt of a conversation, if one was built since it was last loaded.
    pub fn last_prompt(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
    ) -> Option<std::sync::Arc<engine::prompt::LlmRequest>> {
        self.prompts.get(tenant, contact)
    }

    /// Routes accepted inbox entries to their conversations (fire and forget: they are durable).
    pub fn deliver(&self, entries: Vec<InboxEntry>) {
        if !entries.is_empty() && self.root.cast(RootMsg::Deliver(entries)).is_err() {
            tracing::error!("actor tree is down; entries stay in the inbox until the next start");
        }
    }

    async fn ask<T: Send + 'static>(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
        build: impl FnOnce(RpcReplyPort<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (tenant, contact) = (tenant.clone(), contact.clone());
        let result = self
            .root
            .call(
                |reply| RootMsg::Route {
                    tenant,
                    contact,
                    command: build(reply),
                },
                Some(self.call_timeout),
            )
            .await;
        match result {
            Ok(CallResult::Success(value)) => Ok(value),
            Ok(CallResult::Timeout) => Err(EngineError::Unavailable(
                "the conversation did not answer in time".into(),
            )),
            Ok(CallResult::SenderError) | Err(_) => Err(EngineError::Unavailable(
                "the conversation could not take the request".into(),
            )),
        }
    }

    /// A human operator's reply: recorded, sent through the provider, state `HUMANO_RESPONDEU`.
    pub async fn human_reply(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
        text: String,
    ) -> Result<StoredMessage, EngineError> {
        self.ask(tenant, contact, |reply| Command::HumanReply { text, reply })
            .await?
    }

    pub async fn takeover(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
    ) -> Result<Conversation, EngineError> {
        self.ask(tenant, contact, |reply| Command::Takeover { reply })
            .await?
    }

    pub async fn release(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
    ) -> Result<Conversation, EngineError> {
        self.ask(tenant, contact, |reply| Command::Release { reply })
            .await?
    }

    pub async fn snapshot(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
    ) -> Result<ConversationSnapshot, EngineError> {
        self.ask(tenant, contact, Command::Snapshot).await
    }

    /// Makes the conversation actor panic (tests of supervision only).
    #[cfg(feature = "testsuite")]
    pub fn crash(&self, tenant: &TenantId, contact: &ContactId) {
        let _ = self.root.cast(RootMsg::Route {
            tenant: tenant.clone(),
            contact: contact.clone(),
            command: Command::Crash,
        });
    }

    /// Hands a conversation to a human because the provider requires it (fire and forget).
    pub fn flag_for_human(&self, tenant: &TenantId, contact: &ContactId, reason: engine::Reason) {
        let _ = self.root.cast(RootMsg::Route {
            tenant: tenant.clone(),
            contact: contact.clone(),
            command: Command::FlagForHuman(reason),
        });
    }

    /// Tells a conversation that the customer edited (or, with empty text, deleted) a message,
    /// which may still wait in its buffer.
    pub fn amend(&self, tenant: &TenantId, contact: &ContactId, message: MessageId, text: String) {
        let _ = self.root.cast(RootMsg::Route {
            tenant: tenant.clone(),
            contact: contact.clone(),
            command: Command::Amend { message, text },
        });
    }

    /// Asks a conversation to check its human-timeout deadline.
    pub fn human_timeout(&self, tenant: &TenantId, contact: &ContactId) {
        let _ = self.root.cast(RootMsg::Route {
            tenant: tenant.clone(),
            contact: contact.clone(),
            command: Command::HumanTimeout,
        });
    }

    /// Stops a conversation's actor (before its data is erased).
    pub async fn stop_conversation(
        &self,
        tenant: &TenantId,
        contact: &ContactId,
    ) -> Result<(), EngineError> {
        let (tenant, contact) = (tenant.clone(), contact.clone());
        match self
            .root
            .call(
                |reply| RootMsg::StopConversation {
                    tenant,
                    contact,
                    reply,
                },
                Some(self.call_timeout),
            )
            .await
        {
            Ok(CallResult::Success(())) => Ok(()),
            _ => Err(EngineError::Unavailable(
                "the conversation did not stop in time".into(),
            )),
        }
    }

    /// Stops a tenant's actors (the tenant was deleted).
    pub async fn stop_tenant(&self, tenant: &TenantId) -> Result<(), EngineError> {
        let tenant = tenant.clone();
        match self
            .root
            .call(
                |reply| RootMsg::StopTenant { tenant, reply },
                Some(self.call_timeout),
            )
            .await
        {
            Ok(CallResult::Success(())) => Ok(()),
            _ => Err(EngineError::Unavailable(
                "the tenant's actors did not stop in time".into(),
            )),
        }
    }

    /// Live conversation actors of a tenant.
    pub async fn live_conversations(&self, tenant: &TenantId) -> Result<usize, EngineError> {
        let tenant = tenant.clone();
        match self
            .root
            .call(
                |reply| RootMsg::CountConversations { tenant, reply },
                Some(self.call_timeout),
            )
            .await
        {
            Ok(CallResult::Success(n)) => Ok(n),
            _ => Err(EngineError::Unavailable(
                "the tenant did not answer in time".into(),
            )),
        }
    }
}
