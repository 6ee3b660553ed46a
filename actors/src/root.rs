//! The root supervisor: one tenant supervisor per tenant, spawned on the first command for it and
//! respawned when it fails. It only routes; it never waits on IO.

use std::collections::HashMap;

use engine::message::InboxEntry;
use engine::{ContactId, TenantId};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, warn};

use crate::Deps;
use crate::conversation::Command;
use crate::tenant::{TenantMsg, TenantSupervisor};

#[derive(Debug)]
pub enum RootMsg {
    Route {
        tenant: TenantId,
        contact: ContactId,
        command: Command,
    },
    /// Routes inbox entries, in order.
    Deliver(Vec<InboxEntry>),
    /// Stops one conversation actor (before erasing its data).
    StopConversation {
        tenant: TenantId,
        contact: ContactId,
        reply: RpcReplyPort<()>,
    },
    /// Stops a tenant's supervisor and its conversations (the tenant was deleted).
    StopTenant {
        tenant: TenantId,
        reply: RpcReplyPort<()>,
    },
    /// Live conversation actors of one tenant.
    CountConversations {
        tenant: TenantId,
        reply: RpcReplyPort<usize>,
    },
}

#[derive(Debug, Default)]
pub struct RootState {
    tenants: HashMap<TenantId, ActorRef<TenantMsg>>,
    by_id: HashMap<ActorId, TenantId>,
}

#[derive(Debug)]
pub struct RootSupervisor {
    pub(crate) deps: Deps,
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<RootMsg>,
        _: (),
    ) -> Result<RootState, ActorProcessingErr> {
        Ok(RootState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Route {
                tenant,
                contact,
                command,
            } => {
                if let Some(sup) = self.supervisor(&myself, state, &tenant).await
                    && sup.cast(TenantMsg::Route { contact, command }).is_err()
                {
                    warn!(%tenant, "tenant supervisor gone while routing");
                }
            }
            RootMsg::Deliver(entries) => {
                for entry in entries {
                    let tenant = entry.message.tenant.clone();
                    let contact = entry.message.contact.clone();
                    if let Some(sup) = self.supervisor(&myself, state, &tenant).await {
                        let _ = sup.cast(TenantMsg::Route {
                            contact,
                            command: Command::Inbox(entry),
                        });
                    }
                }
            }
            RootMsg::StopConversation {
                tenant,
                contact,
                reply,
            } => match state.tenants.get(&tenant) {
                Some(sup) => {
                    // The tenant supervisor answers `reply` once the actor has stopped.
                    if let Err(ractor::MessagingErr::SendErr(TenantMsg::Stop { reply, .. })) =
                        sup.cast(TenantMsg::Stop { contact, reply })
                    {
                        let _ = reply.send(());
                    }
                }
                None => {
                    let _ = reply.send(());
                }
            },
            RootMsg::StopTenant { tenant, reply } => {
                if let Some(sup) = state.tenants.remove(&tenant) {
                    state.by_id.remove(&sup.get_id());
                    let _ = sup
                        .stop_and_wait(
                            Some("tenant removed".into()),
                            Some(std::time::Duration::from_secs(5)),
                        )
                        .await;
                }
                let _ = reply.send(());
            }
            RootMsg::CountConversations { tenant, reply } => match state.tenants.get(&tenant) {
                Some(sup) => {
                    let _ = sup.cast(TenantMsg::Count(reply));
                }
                None => {
                    let _ = reply.send(0);
                }
            },
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // A tenant supervisor that ends is forgotten and respawned on the next command for it; its
        // conversations' pending inbox entries are still in the store.
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(tenant) = state.by_id.remove(&cell.get_id()) {
                    error!(%tenant, error = %err, "tenant supervisor failed; respawned on its next command");
                    state.tenants.remove(&tenant);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(tenant) = state.by_id.remove(&cell.get_id()) {
                    state.tenants.remove(&tenant);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl RootSupervisor {
    async fn supervisor(
        &self,
        myself: &ActorRef<RootMsg>,
        state: &mut RootState,
        tenant: &TenantId,
    ) -> Option<ActorRef<TenantMsg>> {
        if let Some(sup) = state.tenants.get(tenant) {
            return Some(sup.clone());
        }
        let handler = TenantSupervisor {
            deps: self.deps.clone(),
        };
        match Actor::spawn_linked(None, handler, tenant.clone(), myself.get_cell()).await {
            Ok((sup, _)) => {
                state.by_id.insert(sup.get_id(), tenant.clone());
                state.tenants.insert(tenant.clone(), sup.clone());
                Some(sup)
            }
            Err(e) => {
                error!(%tenant, error = %e, "tenant supervisor did not start");
                None
            }
        }
    }
}
