//! Conversa's supervised actor tree.
//!
//! ```text
//!                    RootSupervisor
//!                 /        |        \
//!   TenantSupervisor  TenantSupervisor  …        one per tenant, spawned on first use
//!     /     |     \
//!  Conversation actors                          one per (tenant, contact), stopped when idle
//!        |
//!   outbox sender task                          sends committed answers in order
//! ```
//!
//! The gateway reaches the tree only through [`EngineHandle`]. Commands for one conversation pass
//! root → tenant → conversation, three FIFO mailboxes, so they are handled in arrival order.
//! Background tasks started by [`start`]: inbox replay and outbox resend at start, the
//! human-timeout deadline scanner, and the expiry sweeper.
//!
//! Failure policy: a conversation actor that panics or returns an error is restarted by its tenant
//! supervisor from the store, and its pending inbox entries are routed to it again; its neighbours
//! and its tenant are not affected. A conversation that fails three times within a minute is left
//! stopped until its next command.
//!
//! **Invariant:** no actor holds state that is not either in the store or recoverable from it,
//! except the open debounce buffer, whose entries are still pending in the durable inbox.

pub mod clock;
pub mod conversation;
pub mod directory;
pub mod handle;
pub mod metrics;
mod outbox;
pub mod prompts;
pub mod root;
pub mod tenant;

use std::sync::Arc;
use std::time::Duration;

use engine::ports::{Embedder, EventSink, Llm, Store};
use ractor::Actor;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use clock::Clock;
pub use directory::{TenantDirectory, TenantRuntime};
pub use handle::EngineHandle;
pub use metrics::ActorMetrics;

/// How the tree behaves; the gateway builds it from its configuration.
#[derive(Debug, Clone)]
pub struct TreePolicy {
    /// A conversation actor with no activity for this long is stopped.
    pub idle_after: Duration,
    /// Timeout of every request to a conversation.
    pub call_timeout: Duration,
    /// How often due human-timeout deadlines are looked up.
    pub deadline_scan: Duration,
    /// How often expired history and old dedupe keys are swept.
    pub sweep_every: Duration,
    /// How long provider message ids are remembered for dedupe.
    pub dedupe_for: Duration,
    /// Attempts of the outbox per message (each provider call has its own quick retries).
    pub send_attempts: u32,
    /// First delay between outbox attempts; doubles each time.
    pub send_retry_base: Duration,
    /// How long an answer waits for the provider's "typing…" call before it is sent anyway.
    pub typing_wait: Duration,
    /// How long a turn waits for its embedding before it is decided lexically.
    pub embed_wait: Duration,
}

impl Default for TreePolicy {
    fn default() -> Self {
        Self {
            idle_after: Duration::from_secs(600),
            call_timeout: Duration::from_secs(10),
            deadline_scan: Duration::from_secs(5),
            sweep_every: Duration::from_secs(600),
            dedupe_for: Duration::from_secs(7 * 24 * 3600),
            send_attempts: 5,
            send_retry_base: Duration::from_secs(2),
            typing_wait: Duration::from_millis(300),
            embed_wait: Duration::from_secs(3),
        }
    }
}

/// What every actor shares.
#[derive(Debug, Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub events: Arc<dyn EventSink>,
    pub directory: TenantDirectory,
    pub clock: Clock,
    pub policy: TreePolicy,
    pub metrics: Arc<ActorMetrics>,
    /// The language model; `None` means extractive answers.
    pub llm: Option<Arc<dyn Llm>>,
    /// Embeds customer turns for hybrid retrieval; `None` means lexical retrieval.
    pub embedder: Option<Arc<dyn Embedder>>,
    /// The last prompt of recent conversations (debug endpoint).
    pub prompts: prompts::PromptLog,
}

/// The running tree and its background tasks.
#[derive(Debug)]
pub struct Engine {
    pub handle: EngineHandle,
    root: ractor::ActorRef<root::RootMsg>,
    root_task: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the tree: loads nothing by itself (the caller fills the [`TenantDirectory`] first), then
/// replays the inbox, resends the outbox, and starts the deadline scanner and the sweeper.
pub async fn start(deps: Deps) -> Result<Engine, StartError> {
    let (root, root_task) = Actor::spawn(None, root::RootSupervisor { deps: deps.clone() }, ())
        .await
        .map_err(|e| StartError::Spawn(e.to_string()))?;
    let handle = EngineHandle {
        root: root.clone(),
        call_timeout: deps.policy.call_timeout,
        prompts: deps.prompts.clone(),
    };
    let cancel = CancellationToken::new();

    outbox::resend_pending(&deps, &handle).await;
    match deps.store.pending_inbox().await {
        Ok(entries) => {
            if !entries.is_empty() {
                info!(
                    count = entries.len(),
                    "replaying inbox entries not done before the last stop"
                );
            }
            handle.deliver(entries);
        }
        Err(e) => return Err(StartError::Inbox(e)),
    }

    let tasks = vec![
        tokio::spawn(scan_deadlines(deps.clone(), handle.clone(), cancel.clone())),
        tokio::spawn(sweep(deps.clone(), cancel.clone())),
    ];
    Ok(Engine {
        handle,
        root,
        root_task,
        cancel,
        tasks,
    })
}

impl Engine {
    /// Stops the background tasks and the tree. Buffered turns are not flushed: their entries stay
    /// pending in the inbox and are replayed at the next start.
    pub async fn shutdown(self, grace: Duration) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.root.stop(Some("shutdown".into()));
        if tokio::time::timeout(grace, self.root_task).await.is_err() {
            warn!("actor tree did not stop within the grace period");
        }
    }
}

async fn scan_deadlines(deps: Deps, handle: EngineHandle, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(deps.policy.deadline_scan) => {}
        }
        match deps.store.due_deadlines(deps.clock.now(), 1000).await {
            Ok(due) => {
                for d in due {
                    handle.human_timeout(&d.tenant, &d.contact);
                }
            }
            Err(e) => {
                deps.metrics
                    .store_errors
                    .with_label_values(&["due_deadlines"])
                    .inc();
                error!(error = %e, "deadline scan failed; retried at the next tick");
            }
        }
    }
}

async fn sweep(deps: Deps, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(deps.policy.sweep_every) => {}
        }
        let now = deps.clock.now();
        let dedupe_before = now.plus_millis(-(deps.policy.dedupe_for.as_millis() as i64));
        match deps.store.sweep(now, dedupe_before).await {
            Ok(report) => info!(
                messages = report.messages,
                dedupe_keys = report.dedupe_keys,
                inbox = report.inbox_entries,
                "sweep done"
            ),
            Err(e) => {
                deps.metrics
                    .store_errors
                    .with_label_values(&["sweep"])
                    .inc();
                error!(error = %e, "sweep failed; retried at the next tick");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the root supervisor did not start: {0}")]
    Spawn(String),
    #[error("cannot read the inbox: {0}")]
    Inbox(engine::EngineError),
}
