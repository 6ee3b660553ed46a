//! Sending committed answers through the provider, in order, per conversation.
//!
//! Every message reaches this module only after its outbox entry is durable, so a crash at any
//! point means the entry is sent again at the next start (at-least-once; the window for a
//! duplicate is the time between the provider accepting a message and `outbox_sent` committing).

use std::collections::BTreeMap;
use std::time::Duration;

use engine::events::EventBody;
use engine::message::{DeliveryStatus, OutboxItem};
use engine::{ContactId, TenantId};
use tokio::sync::mpsc;
use tracing::{Instrument, error, info, warn};

use crate::Deps;
use crate::conversation::Command;
use crate::handle::EngineHandle;
use crate::tenant::TenantMsg;

/// Who hears of a send the provider refused because only a person can go on: the tenant
/// supervisor of a live conversation, or the engine for answers resent at start.
#[derive(Debug, Clone)]
pub(crate) enum Owner {
    Supervisor(ractor::ActorRef<TenantMsg>),
    Engine(EngineHandle),
}

impl Owner {
    fn flag_for_human(&self, tenant: &TenantId, contact: &ContactId, reason: engine::Reason) {
        match self {
            Self::Supervisor(supervisor) => {
                let _ = supervisor.cast(TenantMsg::Route {
                    contact: contact.clone(),
                    command: Command::FlagForHuman(reason),
                });
            }
            Self::Engine(handle) => handle.flag_for_human(tenant, contact, reason),
        }
    }
}

/// Spawns the sender of one conversation. It ends when every handle to it is dropped and its queue
/// is empty.
/// Items are boxed: the channel's first block holds 32 slots from the start, so its slot size is
/// memory every live conversation pays.
pub(crate) fn spawn_sender(
    deps: Deps,
    span: tracing::Span,
    owner: Owner,
) -> mpsc::UnboundedSender<Box<OutboxItem>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Box<OutboxItem>>();
    tokio::spawn(
        async move {
            while let Some(item) = rx.recv().await {
                // Boxed so the idle task holds a pointer, not room for a whole send.
                Box::pin(send_one(&deps, *item, &owner)).await;
            }
        }
        .instrument(span),
    );
    tx
}

/// Sends entries left in the outbox by a previous run, in order per conversation.
pub(crate) async fn resend_pending(deps: &Deps, handle: &EngineHandle) -> usize {
    let pending = match deps.store.pending_outbox().await {
        Ok(p) => p,
        Err(e) => {
            error!(error = %e, "cannot read the outbox; pending answers are sent at the next start");
            return 0;
        }
    };
    let count = pending.len();
    let mut by_conversation: BTreeMap<(TenantId, ContactId), Vec<OutboxItem>> = BTreeMap::new();
    for item in pending {
        by_conversation
            .entry((item.tenant.clone(), item.contact.clone()))
            .or_default()
            .push(item);
    }
    for ((tenant, contact), items) in by_conversation {
        let span = tracing::info_span!("outbox_recovery", %tenant, conversation = %contact);
        let tx = spawn_sender(deps.clone(), span, Owner::Engine(handle.clone()));
        for item in items {
            let _ = tx.send(Box::new(item));
        }
    }
    if count > 0 {
        info!(count, "resending answers left in the outbox");
    }
    count
}

async fn send_one(deps: &Deps, item: OutboxItem, owner: &Owner) {
    let Some(rt) = deps.directory.get(&item.tenant) else {
        warn!(seq = item.seq, "tenant gone; outbox entry abandoned");
        let _ = deps
            .store
            .outbox_failed(item.seq, "tenant removed", deps.clock.now())
            .await;
        return;
    };
    let provider = rt.provider.clone();
    let kind = provider.kind();
    let started = std::time::Instant::now();
    let events = &deps.events;
    events.publish(
        &item.tenant,
        &item.contact,
        deps.clock.now(),
        EventBody::Typing { on: true },
    );
    {
        // "Typing…" goes out before the answer. It is best effort and bounded: some providers
        // (Evolution) hold this call open for the whole indicator, so it runs in its own task and
        // the answer waits for it at most `typing_wait`.
        let provider = provider.clone();
        let contact = item.contact.clone();
        let typing = tokio::spawn(async move {
            let _ = provider.typing(&contact, true).await;
        });
        let waited = std::time::Instant::now();
        let _ = tokio::time::timeout(deps.policy.typing_wait, typing).await;
        // Then the pause a person would take to type it, and the tenant's rate.
        let pause = Duration::from_millis(engine::sending::typing_delay_ms(
            &item.text,
            &rt.tenant.settings,
        ));
        tokio::time::sleep(pause.saturating_sub(waited.elapsed())).await;
        rt.pacer.wait().await;
    }
    let policy = &deps.policy;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match provider.send_text(&item.contact, &item.text).await {
            Ok(receipt) => {
                deps.metrics.sends.with_label_values(&[kind, "sent"]).inc();
                deps.metrics
                    .send_seconds
                    .with_label_values(&[kind])
                    .observe(started.elapsed().as_secs_f64());
                if let Err(e) = deps
                    .store
                    .outbox_sent(item.seq, receipt.provider_id.as_deref(), deps.clock.now())
                    .await
                {
                    // The message went out; if this is not recorded it may be sent again after a restart.
                    error!(error = %e, seq = item.seq, "sent but not recorded");
                    deps.metrics
                        .store_errors
                        .with_label_values(&["outbox_sent"])
                        .inc();
                }
                let now = deps.clock.now();
                events.publish(
                    &item.tenant,
                    &item.contact,
                    now,
                    EventBody::Typing { on: false },
                );
                events.publish(
                    &item.tenant,
                    &item.contact,
                    now,
                    EventBody::Delivery {
                        id: item.message_id.to_string(),
                        status: DeliveryStatus::Sent,
                        error: None,
                    },
                );
                return;
            }
            Err(e) if e.retryable && attempt < policy.send_attempts => {
                deps.metrics.sends.with_label_values(&[kind, "retry"]).inc();
                let delay = backoff(policy.send_retry_base, attempt);
                warn!(error = %e, attempt, ?delay, "send failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                deps.metrics
                    .sends
                    .with_label_values(&[kind, "failed"])
                    .inc();
                error!(error = %e, status = ?e.status, attempt, "send failed for good");
                if let Some(reason) = e.handoff {
                    // WhatsApp's 24-hour window closed: only a person (or a template) can go on.
                    owner.flag_for_human(&item.tenant, &item.contact, reason);
                }
                let now = deps.clock.now();
                if let Err(se) = deps.store.outbox_failed(item.seq, &e.message, now).await {
                    error!(error = %se, "failure not recorded");
                }
                events.publish(
                    &item.tenant,
                    &item.contact,
                    now,
                    EventBody::Typing { on: false },
                );
                events.publish(
                    &item.tenant,
                    &item.contact,
                    now,
                    EventBody::Delivery {
                        id: item.message_id.to_string(),
                        status: DeliveryStatus::Failed,
                        error: Some(e.message.clone()),
                    },
                );
                return;
            }
        }
    }
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.saturating_sub(1).min(10))
        .min(Duration::from_secs(300))
}
