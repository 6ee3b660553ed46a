//! `GET /api/v1/stream`: the dashboard WebSocket of contract §4.
//!
//! Authentication happens before the upgrade (tenant API key as `Authorization: Bearer` or
//! `?access_token=`; `401` JSON error otherwise). After the upgrade the server sends, in order:
//! the retained events after `?since=` (none without it), one
//! `{"type":"ready","seq":N}` saying "you have every event up to `N`", then live events. Every
//! event is one JSON text frame with the tenant-wide, strictly increasing `seq`.
//!
//! The client sends commands (`reply`, `takeover`, `release`, and `ping` for dashboards that
//! cannot see WebSocket pings), each answered `ack` or `error`, echoing the command's `ref`.
//!
//! Closing, by the server:
//! - `1000` in answer to the client's close;
//! - `1001` the server is shutting down;
//! - `4000` after `{"type":"resync_required","reason"}`: `since_too_old` (the position asked for
//!   is not retained, or comes from before a restart) or `slow_client` (the client fell
//!   [`StreamSettings::client_queue`] events behind the live stream); the client reloads
//!   through the REST API and connects again;
//! - `4001` idle: nothing came from the client, not even a pong, for `idle_timeout`;
//! - `4003` the tenant was deleted.
//!
//! A client whose socket accepts nothing for `idle_timeout` is dropped without a close frame.
//!
//! **Invariant**: one task per connection owns the socket and forwards events in `seq` order;
//! it never waits on anything but the socket, so a slow client slows nobody else. Its backlog is
//! a cursor into the tenant's shared ring ([`crate::events`]), never a private copy: a client
//! costs the same memory whether it keeps up or not.

mod command;

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use engine::TenantId;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::events::{Event, StreamSettings, Subscription};

/// Events written to the socket before one flush.
const BATCH: usize = 64;
/// Commands of one connection running at once; more are answered `busy`.
const MAX_IN_FLIGHT: usize = 16;
/// The largest frame a client may send (a reply's text with room to spare).
const MAX_CLIENT_FRAME: usize = 256 * 1024;
/// Socket buffers: commands are small, and events are flushed in batches.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;
const MAX_WRITE_BUFFER: usize = 1024 * 1024;
/// How long the goodbye (`resync_required`, close frame, the client's close answer) may take.
const GOODBYE: Duration = Duration::from_secs(3);

pub async fn stream(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let rt = app.require_tenant(&headers, q.get("access_token").map(String::as_str))?;
    let since = match q.get("since") {
        None => None,
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
            ApiError::unprocessable(
                "since",
                "must be the seq of an event, a non-negative integer",
            )
        })?),
    };
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            "websocket_required",
            format!("this endpoint speaks WebSocket: {}", rejection.body_text()),
        )
    })?;
    let tenant = rt.tenant.id.clone();
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| serve(app, tenant, since, socket))
        .into_response())
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed or the socket failed: nothing more to say.
    ClientGone,
    /// A frame could not be written for `idle_timeout`: dropped without a word.
    Stuck,
    Resync(&'static str),
    Idle,
    TenantRemoved,
    ShuttingDown,
}

/// Keeps `conversa_dashboard_clients` right however the connection ends.
struct Connected(prometheus::IntGauge);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn serve(app: AppState, tenant: TenantId, since: Option<u64>, socket: WebSocket) {
    app.metrics.dashboard_clients.inc();
    let _connected = Connected(app.metrics.dashboard_clients.clone());
    let settings = *app.hub.settings();
    let (sink, stream) = socket.split();
    let mut conn = Conn {
        sink,
        stream,
        write_timeout: settings.idle_timeout,
        last_seq: since.unwrap_or(0),
    };
    tracing::debug!(tenant = %tenant, ?since, "dashboard connected");
    let end = match pump(&app, &tenant, since, settings, &mut conn).await {
        Err(end) => end,
        Ok(never) => match never {},
    };
    let dropped = |reason: &str| {
        app.metrics
            .dashboard_dropped
            .with_label_values(&[reason])
            .inc();
        tracing::info!(tenant = %tenant, reason, "dashboard dropped");
    };
    match end {
        End::ClientGone => {}
        End::Stuck => dropped("slow_client"),
        End::Resync(reason) => {
            dropped(reason);
            let frame = json!({"type": "resync_required", "reason": reason}).to_string();
            conn.goodbye(Some(Message::Text(frame.into())), 4000, reason)
                .await;
        }
        End::Idle => {
            dropped("idle");
            conn.goodbye(None, 4001, "idle").await;
        }
        End::TenantRemoved => conn.goodbye(None, 4003, "tenant removed").await,
        End::ShuttingDown => conn.goodbye(None, 1001, "server shutting down").await,
    }
    tracing::debug!(tenant = %tenant, ?end, "dashboard disconnected");
}

/// Runs the connection until it ends; only ever returns the reason.
async fn pump(
    app: &AppState,
    tenant: &TenantId,
    since: Option<u64>,
    settings: StreamSettings,
    conn: &mut Conn,
) -> Result<Infallible, End> {
    let closing = app.hub.closing();
    let Subscription {
        replay,
        mut live,
        position,
    } = app
        .hub
        .subscribe(tenant, since)
        .map_err(|_| End::Resync("since_too_old"))?;
    for batch in replay.chunks(BATCH) {
        conn.send_events(batch).await?;
    }
    drop(replay);
    conn.last_seq = conn.last_seq.max(position);
    conn.send(json!({"type": "ready", "seq": position}).to_string())
        .await?;

    let (done_tx, mut done_rx) = mpsc::channel::<command::Answer>(MAX_IN_FLIGHT);
    let mut in_flight = 0usize;
    let mut ping = tokio::time::interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            () = closing.cancelled() => return Err(End::ShuttingDown),
            received = live.recv() => {
                batch.push(received.map_err(|e| match e {
                    RecvError::Lagged(_) => End::Resync("slow_client"),
                    RecvError::Closed => End::TenantRemoved,
                })?);
                drain(&mut live, &mut batch, BATCH)?;
                conn.send_events(&batch).await?;
                batch.clear();
            }
            frame = conn.stream.next() => {
                let Some(Ok(frame)) = frame else {
                    return Err(End::ClientGone);
                };
                last_heard = Instant::now();
                let request = match frame {
                    Message::Text(text) => command::parse(&text),
                    Message::Binary(_) => Err(command::Answer::unsupported_frame()),
                    // Pongs only prove the client is alive; pings are answered by the socket.
                    // After a close the socket answers it and the stream ends.
                    Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
                };
                let answer = match request {
                    Err(answer) => answer,
                    Ok(request) if request.is_immediate() => command::Answer::ok(&request),
                    Ok(_) if in_flight >= MAX_IN_FLIGHT => command::Answer::busy(),
                    Ok(request) => {
                        in_flight += 1;
                        let (app, tenant, done) = (app.clone(), tenant.clone(), done_tx.clone());
                        tokio::spawn(async move {
                            let answer = command::execute(&app, &tenant, request).await;
                            // The connection may be gone; the command took effect anyway.
                            let _ = done.send(answer).await;
                        });
                        continue;
                    }
                };
                conn.answer(app, answer).await?;
            }
            Some(answer) = done_rx.recv() => {
                in_flight -= 1;
                // What the command caused was published before it answered: send that first.
                drain(&mut live, &mut batch, usize::MAX)?;
                for chunk in batch.chunks(BATCH) {
                    conn.send_events(chunk).await?;
                }
                batch.clear();
                conn.answer(app, answer).await?;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    return Err(End::Idle);
                }
                conn.write(Message::Ping(Default::default())).await?;
            }
        }
    }
}

/// Moves what is already waiting on `live` into `batch`, up to `max` events in all.
fn drain(
    live: &mut broadcast::Receiver<Event>,
    batch: &mut Vec<Event>,
    max: usize,
) -> Result<(), End> {
    while batch.len() < max {
        match live.try_recv() {
            Ok(event) => batch.push(event),
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Lagged(_)) => return Err(End::Resync("slow_client")),
            Err(TryRecvError::Closed) => return Err(End::TenantRemoved),
        }
    }
    Ok(())
}

/// The two halves of one socket and what has been sent on it.
struct Conn {
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    write_timeout: Duration,
    /// Every event up to this `seq` has been sent (or predates the connection).
    last_seq: u64,
}

impl Conn {
    /// Writes `frames` and flushes, within the write timeout.
    async fn write_all(&mut self, frames: impl Iterator<Item = Message>) -> Result<(), End> {
        let sink = &mut self.sink;
        let write = async move {
            for frame in frames {
                sink.feed(frame).await?;
            }
            sink.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::ClientGone),
            Err(_) => Err(End::Stuck),
        }
    }

    async fn write(&mut self, frame: Message) -> Result<(), End> {
        self.write_all(std::iter::once(frame)).await
    }

    async fn send(&mut self, text: String) -> Result<(), End> {
        self.write(Message::Text(text.into())).await
    }

    /// Sends events in `seq` order, skipping any already sent (there are none by construction).
    async fn send_events(&mut self, events: &[Event]) -> Result<(), End> {
        let from = self.last_seq;
        let fresh: Vec<Message> = events
            .iter()
            .filter(|e| e.seq > from)
            .map(|e| Message::Text(e.json.clone()))
            .collect();
        if let Some(last) = events.last() {
            self.last_seq = self.last_seq.max(last.seq);
        }
        if fresh.is_empty() {
            return Ok(());
        }
        self.write_all(fresh.into_iter()).await
    }

    async fn answer(&mut self, app: &AppState, answer: command::Answer) -> Result<(), End> {
        app.metrics
            .dashboard_commands
            .with_label_values(&[answer.kind, answer.outcome])
            .inc();
        self.write(Message::Text(answer.frame)).await
    }

    /// Sends `last` (if any) and a close frame, then waits briefly for the client's close.
    async fn goodbye(&mut self, last: Option<Message>, code: u16, reason: &'static str) {
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let sink = &mut self.sink;
        let stream = &mut self.stream;
        let _ = tokio::time::timeout(GOODBYE, async move {
            for frame in last.into_iter().chain(std::iter::once(close)) {
                if sink.send(frame).await.is_err() {
                    return;
                }
            }
            // Reading on lets the client's close answer arrive before the socket is dropped.
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
}
