//! One supervisor per tenant: it spawns a conversation actor on the first command for a contact,
//! routes commands to it in arrival order, stops it when idle, and restarts it when it fails.
//!
//! **Invariant:** at most one conversation actor per contact is alive, and a command routed here is
//! never delivered to an actor that is stopping: an idle actor asks to stop with the number of
//! commands it handled, and the supervisor agrees only when that equals the number it routed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engine::{ContactId, TenantId};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

use crate::Deps;
use crate::conversation::{Command, ConversationActor, ConversationArgs, ConversationMsg};

/// Restarts allowed per conversation within [`RESTART_WINDOW`] before the supervisor gives up on it
/// (its pending inbox entries wait for the next command or the next start).
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub enum TenantMsg {
    Route {
        contact: ContactId,
        command: Command,
    },
    /// A conversation actor has been idle; it may stop if nothing is on its way to it.
    Idle {
        contact: ContactId,
        actor: ActorId,
        handled: u64,
    },
    /// Stops a conversation actor (before its data is erased).
    Stop {
        contact: ContactId,
        reply: RpcReplyPort<()>,
    },
    /// How many conversation actors are alive.
    Count(RpcReplyPort<usize>),
}

#[derive(Debug)]
struct Child {
    actor: ActorRef<ConversationMsg>,
    routed: u64,
    /// Incremented by the actor for every routed command it handled.
    handled: Arc<AtomicU64>,
}

impl Child {
    /// Commands routed to the actor and not handled (lost if it dies now).
    fn unhandled(&self) -> i64 {
        self.routed
            .saturating_sub(self.handled.load(Ordering::SeqCst)) as i64
    }
}

#[derive(Debug)]
pub struct TenantState {
    tenant: TenantId,
    children: HashMap<ContactId, Child>,
    by_id: HashMap<ActorId, ContactId>,
    restarts: HashMap<ContactId, VecDeque<Instant>>,
}

#[derive(Debug)]
pub struct TenantSupervisor {
    pub(crate) deps: Deps,
}

impl Actor for TenantSupervisor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantId;

    async fn pre_start(
        &self,
        _myself: ActorRef<TenantMsg>,
        tenant: TenantId,
    ) -> Result<TenantState, ActorProcessingErr> {
        Ok(TenantState {
            tenant,
            children: HashMap::new(),
            by_id: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TenantMsg>,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        for child in state.children.values() {
            child.actor.stop(None);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::Route { contact, command } => {
                self.route(&myself, state, contact, command).await
            }
            TenantMsg::Idle {
                contact,
                actor,
                handled,
            } => {
                let idle = state.children.get(&contact).is_some_and(|c| {
                    c.actor.get_id() == actor && c.routed == handled && c.unhandled() == 0
                });
                if idle && let Some(child) = state.children.remove(&contact) {
                    state.by_id.remove(&actor);
                    child.actor.stop(Some("idle".into()));
                }
            }
            TenantMsg::Stop { contact, reply } => {
                if let Some(child) = state.children.remove(&contact) {
                    state.by_id.remove(&child.actor.get_id());
                    let _ = child
                        .actor
                        .stop_and_wait(Some("stopped".into()), Some(Duration::from_secs(5)))
                        .await;
                    self.deps.metrics.mailbox_depth.sub(child.unhandled());
                }
                let _ = reply.send(());
            }
            TenantMsg::Count(reply) => {
                let _ = reply.send(state.children.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<TenantMsg>,
        event: SupervisionEvent,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        // Overrides ractor's default, which would stop this supervisor whenever a child ends.
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                // Ended without asking (not through Idle or Stop): forget it; the next command
                // respawns it.
                if let Some(contact) = state.by_id.remove(&cell.get_id())
                    && state
                        .children
                        .get(&contact)
                        .is_some_and(|c| c.actor.get_id() == cell.get_id())
                    && let Some(child) = state.children.remove(&contact)
                {
                    self.deps.metrics.mailbox_depth.sub(child.unhandled());
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(contact) = state.by_id.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let Some(child) = state.children.remove(&contact) else {
                    return Ok(());
                };
                if child.actor.get_id() != cell.get_id() {
                    state.children.insert(contact, child);
                    return Ok(());
                }
                self.deps.metrics.actor_restarts.inc();
                // Commands that were in the dead actor's mailbox are gone: inbox entries among them
                // are routed again below; reply ports among them closed, so their callers saw an error.
                self.deps.metrics.mailbox_depth.sub(child.unhandled());
                error!(tenant = %state.tenant, conversation = %contact, error = %err, "conversation actor failed");
                let now = Instant::now();
                let history = state.restarts.entry(contact.clone()).or_default();
                history.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
                if history.len() >= MAX_RESTARTS {
                    error!(tenant = %state.tenant, conversation = %contact, "conversation keeps failing; not restarted until its next message");
                    return Ok(());
                }
                history.push_back(now);
                self.restart(&myself, state, contact).await;
            }
            SupervisionEvent::ActorStarted(_) | SupervisionEvent::ProcessGroupChanged(_) => {}
        }
        Ok(())
    }
}

impl TenantSupervisor {
    async fn route(
        &self,
        myself: &ActorRef<TenantMsg>,
        state: &mut TenantState,
        contact: ContactId,
        command: Command,
    ) {
        if !state.children.contains_key(&contact)
            && self.spawn(myself, state, contact.clone()).await.is_none()
        {
            // The command is dropped; inbox entries stay pending in the store and reply ports
            // close, so callers see an error.
            return;
        }
        let Some(child) = state.children.get_mut(&contact) else {
            return;
        };
        child.routed += 1;
        self.deps.metrics.mailbox_depth.inc();
        if child.actor.cast(ConversationMsg::Routed(command)).is_err() {
            self.deps.metrics.mailbox_depth.dec();
            warn!(tenant = %state.tenant, conversation = %contact, "conversation actor gone while routing");
        }
    }

    async fn spawn(
        &self,
        myself: &ActorRef<TenantMsg>,
        state: &mut TenantState,
        contact: ContactId,
    ) -> Option<()> {
        let actor = ConversationActor {
            deps: self.deps.clone(),
            supervisor: myself.clone(),
        };
        let handled = Arc::new(AtomicU64::new(0));
        let args = ConversationArgs {
            tenant: state.tenant.clone(),
            contact: contact.clone(),
            handled: handled.clone(),
        };
        match Actor::spawn_linked(None, actor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                state.by_id.insert(actor.get_id(), contact.clone());
                state.children.insert(
                    contact,
                    Child {
                        actor,
                        routed: 0,
                        handled,
                    },
                );
                Some(())
            }
            Err(e) => {
                error!(tenant = %state.tenant, conversation = %contact, error = %e, "conversation actor did not start");
                None
            }
        }
    }

    /// Respawns a failed conversation and routes its pending inbox entries to it again.
    async fn restart(
        &self,
        myself: &ActorRef<TenantMsg>,
        state: &mut TenantState,
        contact: ContactId,
    ) {
        let pending = match self.deps.store.pending_inbox().await {
            Ok(entries) => entries,
            Err(e) => {
                error!(tenant = %state.tenant, conversation = %contact, error = %e, "cannot reload the inbox; restart deferred to the next message");
                return;
            }
        };
        info!(tenant = %state.tenant, conversation = %contact, "restarting conversation actor from the store");
        if self.spawn(myself, state, contact.clone()).await.is_none() {
            return;
        }
        let tenant = state.tenant.clone();
        for entry in pending
            .into_iter()
            .filter(|e| e.message.tenant == tenant && e.message.contact == contact)
        {
            self.route(myself, state, contact.clone(), Command::Inbox(entry))
                .await;
        }
    }
}
