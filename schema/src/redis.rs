//! The shared hot state in Redis, through a `bb8` pool (the `redis` crate's own `bb8` support):
//! webhook dedupe, per-tenant rate limits, and the fan-out of dashboard events across nodes.
//!
//! Keys (every key starts with `conversa:`):
//! - `conversa:dedupe:<tenant>:<dedupe key>`: `pending` while a delivery is being recorded, `done`
//!   once the store has it; expires after the dedupe window (7 days). The store's dedupe stays
//!   authoritative: Redis only answers "duplicate" for keys the store confirmed, so a lost or
//!   flushed Redis costs a store lookup, never a message.
//! - `conversa:rate:<tenant>:<window>`: messages accepted in one fixed window (a Lua script adds
//!   and refunds atomically); expires two windows later.
//! - `conversa:seq:<tenant>`: the last dashboard event seq of the tenant, shared by every node.
//!   Created at the wall clock in microseconds, so seqs keep increasing even if Redis lost it.
//! - channel `conversa:events:<tenant>`: every dashboard event of the tenant, as its final JSON
//!   (`{"seq":…,…}`). A Lua script takes the seq and publishes in one step, so subscribers receive
//!   a tenant's events in seq order, each seq once.
//!
//! Every command has a timeout; the pool checks a connection (PING) when it is checked out, so a
//! Redis that restarted is reconnected to transparently. When Redis is down, every call fails
//! with [`HotError`] at once or within the timeout; callers answer 503 and `/ready` says so.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::{AsyncCommands, Script};

/// Redis settings. Every field but `url` has a default.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
    pub url: String,
    /// Most connections the pool opens.
    pub pool_size: u32,
    /// How long a command (or waiting for a pooled connection) may take.
    pub timeout: Duration,
    /// How long a dedupe key lives.
    pub dedupe_ttl: Duration,
    /// The rate limit window.
    pub rate_window: Duration,
}

impl RedisSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            timeout: Duration::from_secs(2),
            dedupe_ttl: Duration::from_secs(7 * 24 * 3600),
            rate_window: Duration::from_secs(1),
        }
    }
}

/// Redis could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis: {0}")]
pub struct HotError(pub String);

/// What Redis knows of a dedupe key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupeState {
    /// New: this call claimed it (`pending`). Record it, then [`HotState::dedupe_done`].
    Claimed,
    /// Another delivery is being recorded, or one failed: let the store decide.
    Pending,
    /// The store recorded it: a duplicate.
    Done,
}

/// A rate limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Messages counted in the current window (including this request when allowed).
    pub count: u64,
    /// When the window ends.
    pub retry_after: Duration,
}

/// A dashboard event received from the fan-out channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEvent {
    pub tenant: String,
    pub seq: u64,
    /// The event's whole JSON, `{"seq":…,…}`.
    pub json: String,
}

/// The Redis hot state. Cheap to clone.
#[derive(Clone)]
pub struct HotState {
    pool: bb8::Pool<redis::Client>,
    client: redis::Client,
    settings: Arc<RedisSettings>,
}

impl std::fmt::Debug for HotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("HotState")
            .field("pool_size", &self.settings.pool_size)
            .field("timeout", &self.settings.timeout)
            .finish_non_exhaustive()
    }
}

/// Adds `ARGV[1]` to the window's counter unless that passes the limit `ARGV[2]`; expires the
/// counter after `ARGV[3]` ms. Returns `{allowed (1/0), count, pttl}`.
const RATE_SCRIPT: &str = r"
local cost = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local n = redis.call('INCRBY', KEYS[1], cost)
if n == cost then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
if n > limit then
  n = redis.call('DECRBY', KEYS[1], cost)
  return {0, n, redis.call('PTTL', KEYS[1])}
end
return {1, n, redis.call('PTTL', KEYS[1])}
";

/// Takes the tenant's next seq (starting from `ARGV[2]` when the counter does not exist) and
/// publishes `{"seq":<seq>,` .. `ARGV[1]` on the tenant's channel, atomically.
const PUBLISH_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[2]) end
local seq = redis.call('INCR', KEYS[1])
-- Lua numbers are doubles: format as an integer (exact below 2^53, centuries of microseconds).
redis.call('PUBLISH', KEYS[2], '{"seq":' .. string.format('%d', seq) .. ',' .. ARGV[1])
return seq
"#;

/// The pattern every node subscribes to.
pub const EVENTS_PATTERN: &str = "conversa:events:*";

impl HotState {
    /// Makes the pool without connecting: connections open on first use (and a Redis that is
    /// down at start is reported by the first call and by `/ready`, not by a crash). Call it
    /// inside a Tokio runtime (the pool's reaper is a Tokio task).
    pub fn new(settings: RedisSettings) -> Result<Self, HotError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| HotError(format!("invalid CONVERSA_REDIS_URL: {e}")))?;
        let pool = bb8::Pool::builder()
            .max_size(settings.pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(settings.timeout)
            .test_on_check_out(true)
            .idle_timeout(Some(Duration::from_secs(300)))
            .build_unchecked(client.clone());
        Ok(Self {
            pool,
            client,
            settings: Arc::new(settings),
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Runs `op` on a pooled connection, bounded by the timeout.
    async fn with_conn<T, F, Fut>(&self, what: &str, op: F) -> Result<T, HotError>
    where
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let run = async {
            let conn = self
                .pool
                .get()
                .await
                .map_err(|e| HotError(format!("{what}: no connection: {e}")))?;
            // A multiplexed connection is a cheap handle onto the pooled socket.
            op(conn.clone())
                .await
                .map_err(|e| HotError(format!("{what}: {e}")))
        };
        tokio::time::timeout(self.settings.timeout, run)
            .await
            .map_err(|_| {
                HotError(format!(
                    "{what}: no answer within {:?}",
                    self.settings.timeout
                ))
            })?
    }

    /// Answers when Redis does (for `/ready`).
    pub async fn ping(&self) -> Result<(), HotError> {
        self.with_conn("ping", |mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(drop)
    }

    /// Claims every key that is new (`SET … pending NX EX`) and tells, key by key, what Redis
    /// knows. One pipeline: one round trip for the whole body.
    pub async fn dedupe_claim(
        &self,
        tenant: &str,
        keys: &[String],
    ) -> Result<Vec<DedupeState>, HotError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ttl = self.settings.dedupe_ttl.as_secs().max(1);
        let names: Vec<String> = keys.iter().map(|k| dedupe_key(tenant, k)).collect();
        let replies: Vec<(Option<String>, Option<String>)> = self
            .with_conn("dedupe", |mut conn| async move {
                let mut pipe = redis::pipe();
                for name in &names {
                    pipe.cmd("SET")
                        .arg(name)
                        .arg("pending")
                        .arg("NX")
                        .arg("EX")
                        .arg(ttl)
                        .arg("GET");
                }
                // SET … NX GET answers the old value (nil when the key was new and set).
                let olds: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
                Ok(olds.into_iter().map(|old| (old, None)).collect())
            })
            .await?;
        Ok(replies
            .into_iter()
            .map(|(old, _)| match old.as_deref() {
                None => DedupeState::Claimed,
                Some("done") => DedupeState::Done,
                Some(_) => DedupeState::Pending,
            })
            .collect())
    }

    /// Marks keys recorded by the store: later deliveries are duplicates without a store call.
    pub async fn dedupe_done(&self, tenant: &str, keys: &[String]) -> Result<(), HotError> {
        if keys.is_empty() {
            return Ok(());
        }
        let ttl = self.settings.dedupe_ttl.as_secs().max(1);
        let names: Vec<String> = keys.iter().map(|k| dedupe_key(tenant, k)).collect();
        self.with_conn("dedupe", |mut conn| async move {
            let mut pipe = redis::pipe();
            for name in &names {
                pipe.cmd("SET")
                    .arg(name)
                    .arg("done")
                    .arg("EX")
                    .arg(ttl)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    /// Forgets keys this call claimed but could not record (the provider will retry).
    pub async fn dedupe_release(&self, tenant: &str, keys: &[String]) -> Result<(), HotError> {
        if keys.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = keys.iter().map(|k| dedupe_key(tenant, k)).collect();
        self.with_conn("dedupe", |mut conn| async move {
            conn.del::<_, ()>(names).await
        })
        .await
    }

    /// Counts `cost` messages against the tenant's `limit` per window; refused requests are not
    /// counted.
    pub async fn rate(
        &self,
        tenant: &str,
        cost: u64,
        limit: u64,
    ) -> Result<RateDecision, HotError> {
        let window_ms = u64::try_from(self.settings.rate_window.as_millis())
            .unwrap_or(1000)
            .max(1);
        let window = now_ms() / window_ms;
        let key = format!("conversa:rate:{tenant}:{window}");
        let (allowed, count, pttl): (i64, i64, i64) = self
            .with_conn("rate limit", |mut conn| async move {
                Script::new(RATE_SCRIPT)
                    .key(&key)
                    .arg(cost)
                    .arg(limit)
                    .arg(window_ms * 2)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let until_window_end = window_ms - now_ms() % window_ms;
        Ok(RateDecision {
            allowed: allowed == 1,
            count: u64::try_from(count).unwrap_or(0),
            retry_after: Duration::from_millis(
                until_window_end.min(u64::try_from(pttl).unwrap_or(window_ms)),
            ),
        })
    }

    /// Publishes one dashboard event of `tenant`. `rest` is the event's JSON without its opening
    /// brace and without `seq` (`"type":…}`); returns the seq it got.
    pub async fn publish_event(&self, tenant: &str, rest: &str) -> Result<u64, HotError> {
        let seq_key = format!("conversa:seq:{tenant}");
        let channel = format!("conversa:events:{tenant}");
        let floor = now_micros();
        let seq: i64 = self
            .with_conn("publish", |mut conn| async move {
                Script::new(PUBLISH_SCRIPT)
                    .key(&seq_key)
                    .key(&channel)
                    .arg(rest)
                    .arg(floor)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    /// Subscribes to every tenant's events. The stream ends when the subscription's connection
    /// does; [`run_event_subscriber`] reconnects.
    pub async fn subscribe_events(
        &self,
    ) -> Result<impl futures_util::Stream<Item = RemoteEvent> + Send + use<>, HotError> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.psubscribe(EVENTS_PATTERN).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(self.settings.timeout, connect)
            .await
            .map_err(|_| HotError("subscribe: no answer".into()))?
            .map_err(|e| HotError(format!("subscribe: {e}")))?;
        Ok(pubsub.into_on_message().filter_map(|msg| async move {
            let tenant = msg
                .get_channel_name()
                .strip_prefix("conversa:events:")?
                .to_owned();
            let json: String = msg.get_payload().ok()?;
            let seq = parse_seq(&json)?;
            Some(RemoteEvent { tenant, seq, json })
        }))
    }
}

/// Keeps a subscription to every tenant's events alive until `stop` completes: each event goes to
/// `on_event`; after a reconnection `on_reconnect` is called first (events published while
/// disconnected are lost, so the hub must treat the next seq as a possible gap).
pub async fn run_event_subscriber<E, R>(
    hot: HotState,
    on_event: E,
    on_reconnect: R,
    stop: impl std::future::Future<Output = ()>,
) where
    E: Fn(RemoteEvent),
    R: Fn(),
{
    let run = async {
        let mut delay = Duration::from_millis(100);
        let mut first = true;
        loop {
            match hot.subscribe_events().await {
                Ok(events) => {
                    if !first {
                        on_reconnect();
                    }
                    first = false;
                    delay = Duration::from_millis(100);
                    tracing::info!("subscribed to dashboard events in redis");
                    let mut events = std::pin::pin!(events);
                    while let Some(event) = events.next().await {
                        on_event(event);
                    }
                    tracing::warn!("redis event subscription ended; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to dashboard events; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    };
    tokio::select! {
        () = run => {}
        () = stop => {}
    }
}

fn dedupe_key(tenant: &str, key: &str) -> String {
    format!("conversa:dedupe:{tenant}:{key}")
}

/// The seq of an event's JSON, which starts `{"seq":<digits>,`.
fn parse_seq(json: &str) -> Option<u64> {
    let digits = json.strip_prefix("{\"seq\":")?;
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_are_read_from_the_json_prefix() {
        assert_eq!(parse_seq(r#"{"seq":42,"type":"typing"}"#), Some(42));
        assert_eq!(parse_seq(r#"{"type":"typing"}"#), None);
        assert_eq!(parse_seq(r#"{"seq":}"#), None);
    }

    #[tokio::test]
    async fn the_url_is_checked_but_nothing_connects() {
        assert!(HotState::new(RedisSettings::new("not a url")).is_err());
        // A closed port: building succeeds (lazy); calls fail.
        assert!(HotState::new(RedisSettings::new("redis://127.0.0.1:1")).is_ok());
    }
}
