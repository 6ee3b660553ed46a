//! Dashboard clients on the WebSocket stream (`/api/v1/stream?access_token=…`, contract §4).
//!
//! Each client matches the `message` events of inbound messages to the webhook that carried them (by
//! the marker every loadtest text ends with) and records receive time − webhook send time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::report::Latency;

/// When each webhook of the run was sent, by its sequence number (lock-free, preallocated).
#[derive(Debug)]
pub struct SendClock {
    start: Instant,
    /// Microseconds since `start` plus one; 0 = not sent.
    slots: Vec<AtomicU64>,
}

impl SendClock {
    pub fn new(capacity: u64) -> Self {
        Self {
            start: Instant::now(),
            slots: (0..=capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn mark(&self, seq: u64, at: Instant) {
        if let Some(slot) = self.slots.get(seq as usize) {
            slot.store(
                at.duration_since(self.start).as_micros() as u64 + 1,
                Ordering::Relaxed,
            );
        }
    }

    pub fn sent_at(&self, seq: u64) -> Option<Instant> {
        let v = self.slots.get(seq as usize)?.load(Ordering::Relaxed);
        (v > 0).then(|| self.start + Duration::from_micros(v - 1))
    }
}

/// Punctuation standing for the digits 0–9 in a marker. Retrieval splits words on non-alphanumeric
/// characters, so the marker never changes what a message is about (a numeric marker would count
/// as an unknown word and lower the retrieval confidence).
const MARKER_DIGITS: [char; 10] = ['~', '^', '*', '+', '=', '|', '/', ';', ':', '!'];

/// The marker of webhook `seq`: `{` + its decimal digits as punctuation + `}`.
pub fn encode_marker(seq: u64) -> String {
    let digits: String = seq
        .to_string()
        .bytes()
        .map(|d| MARKER_DIGITS[usize::from(d - b'0')])
        .collect();
    format!("{{{digits}}}")
}

/// The webhook sequence number of the marker at the end of a loadtest text.
pub fn marker(text: &str) -> Option<u64> {
    let (_, rest) = text.rsplit_once('{')?;
    let encoded = rest.strip_suffix('}').unwrap_or(rest).trim_end_matches('}');
    if encoded.is_empty() {
        return None;
    }
    encoded.chars().try_fold(0u64, |n, c| {
        let digit = MARKER_DIGITS.iter().position(|&d| d == c)? as u64;
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// What one dashboard client saw.
#[derive(Debug, Default)]
pub struct ClientResult {
    pub latency: Latency,
    pub events: u64,
    pub matched: u64,
    pub resync_required: u64,
    pub disconnected: bool,
}

/// How connecting went.
#[derive(Debug)]
pub enum Connect {
    Connected(tokio::task::JoinHandle<ClientResult>),
    /// The server has no stream endpoint (HTTP 404 or 405 on the upgrade).
    Unavailable(String),
    Failed(String),
}

/// The WebSocket URL of the stream for a tenant key.
pub fn stream_url(target: &str, api_key: &str) -> String {
    let ws = if let Some(rest) = target.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        format!("ws://{}", target.trim_start_matches("http://"))
    };
    format!(
        "{}/api/v1/stream?access_token={api_key}",
        ws.trim_end_matches('/')
    )
}

/// Connects one dashboard and spawns its reader, which runs until `stop`.
pub async fn connect(url: &str, clock: Arc<SendClock>, stop: CancellationToken) -> Connect {
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await;
    let mut ws = match connected {
        Err(_) => return Connect::Failed("timeout".into()),
        Ok(Err(WsError::Http(response))) => {
            let status = response.status().as_u16();
            return if status == 404 || status == 405 {
                Connect::Unavailable(format!(
                    "the server answered {status} to the stream upgrade"
                ))
            } else {
                Connect::Failed(format!("http_{status}"))
            };
        }
        Ok(Err(e)) => return Connect::Failed(e.to_string()),
        Ok(Ok((ws, _))) => ws,
    };
    Connect::Connected(tokio::spawn(async move {
        let mut result = ClientResult::default();
        loop {
            let frame = tokio::select! {
                () = stop.cancelled() => break,
                frame = ws.next() => frame,
            };
            let at = Instant::now();
            match frame {
                Some(Ok(Message::Text(text))) => {
                    result.events += 1;
                    let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    match event["type"].as_str() {
                        Some("message") if event["direction"] == "in" => {
                            if let Some(sent) = event["text"]
                                .as_str()
                                .and_then(marker)
                                .and_then(|s| clock.sent_at(s))
                            {
                                result.matched += 1;
                                result.latency.record(at.saturating_duration_since(sent));
                            }
                        }
                        Some("resync_required") => result.resync_required += 1,
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    result.disconnected = true;
                    break;
                }
                Some(Ok(_)) => {}
            }
        }
        let _ = ws.close(None).await;
        result
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_and_urls() {
        for seq in [0, 7, 1234, 9_876_543_210] {
            let text = format!("qual o horário? {}", encode_marker(seq));
            assert!(!text.chars().skip(16).any(char::is_alphanumeric), "{text}");
            assert_eq!(marker(&text), Some(seq), "{text}");
        }
        assert_eq!(encode_marker(1234), "{^*+=}");
        assert_eq!(marker("sem marcador"), None);
        assert_eq!(marker("chaves {} vazias"), None);
        assert_eq!(
            stream_url("http://127.0.0.1:8080/", "k"),
            "ws://127.0.0.1:8080/api/v1/stream?access_token=k"
        );
        assert_eq!(
            stream_url("https://h", "k"),
            "wss://h/api/v1/stream?access_token=k"
        );
    }

    #[test]
    fn the_send_clock_remembers_when_each_webhook_left() {
        let clock = SendClock::new(10);
        assert!(clock.sent_at(3).is_none());
        let at = Instant::now() + Duration::from_millis(5);
        clock.mark(3, at);
        let got = clock.sent_at(3).unwrap();
        assert!(got <= at && at.duration_since(got) < Duration::from_micros(2));
        clock.mark(99, at); // beyond capacity: ignored
        assert!(clock.sent_at(99).is_none());
    }
}
