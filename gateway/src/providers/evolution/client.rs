//! The Evolution REST client: text messages (retried when a retry may help) and typing indicators.
//!
//! Success is any 2xx. Failures are summarised from Evolution's `{status, error, response:{message}}`
//! into a short [`SendError`] message that never contains the API key.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use engine::ContactId;
use engine::ports::{Provider, SendError, SendReceipt};
use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::KIND;
use crate::providers::{RetryPolicy, read_limited, retry_after};

/// Response bodies are read up to this size; Evolution's are a few hundred bytes.
/// Longest provider summary kept in a [`SendError`] message.
const MAX_SUMMARY_CHARS: usize = 200;
/// How long "typing…" shows after `typing(on)`: Evolution holds `composing` this long, then sends
/// `paused` itself (and the HTTP call blocks meanwhile).
const TYPING_DELAY_MS: u64 = 1200;

/// Sends through one Evolution instance. Cheap to clone (the HTTP client is shared).
#[derive(Clone)]
pub struct EvolutionClient {
    http: reqwest::Client,
    base_url: String,
    instance: String,
    /// `Err` when the configuration cannot produce a request; every call then fails, unretryable.
    endpoints: Result<Endpoints, &'static str>,
    retry: RetryPolicy,
}

#[derive(Clone)]
struct Endpoints {
    send_text: Url,
    send_presence: Url,
    /// Marked sensitive, so `Debug` of the header value never shows it.
    api_key: HeaderValue,
}

impl Endpoints {
    fn build(base_url: &str, instance: &str, api_key: &str) -> Result<Self, &'static str> {
        let base = Url::parse(base_url.trim()).map_err(|_| "the base url is not a valid URL")?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err("the base url is not http or https");
        }
        // The url crate drops `.` and `..` segments instead of escaping them.
        if matches!(instance, "" | "." | "..") {
            return Err("the instance name is empty or a dot segment");
        }
        let endpoint = |first: &str, second: &str| -> Result<Url, &'static str> {
            let mut url = base.clone();
            url.set_query(None);
            url.set_fragment(None);
            // `push` percent-escapes the instance name, `/` and `%` included.
            url.path_segments_mut()
                .map_err(|()| "the base url cannot take a path")?
                .pop_if_empty()
                .push(first)
                .push(second)
                .push(instance);
            Ok(url)
        };
        let mut api_key = HeaderValue::from_str(api_key)
            .map_err(|_| "the api key is not a valid header value")?;
        api_key.set_sensitive(true);
        Ok(Self {
            send_text: endpoint("message", "sendText")?,
            send_presence: endpoint("chat", "sendPresence")?,
            api_key,
        })
    }
}

/// A failed try and what the server said about waiting.
struct Failure {
    error: SendError,
    retry_after: Option<Duration>,
}

impl EvolutionClient {
    /// A client for `instance` on the Evolution server at `base_url` (a trailing `/` or a path prefix
    /// is fine), authenticated by `api_key` (the global key or the instance token).
    ///
    /// Never fails: a configuration that cannot work (a base URL that does not parse, an API key
    /// that is not a header value) is logged here and makes every call return a non-retryable error.
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        instance: &str,
        api_key: &str,
        retry: RetryPolicy,
    ) -> Self {
        let endpoints = Endpoints::build(base_url, instance, api_key);
        if let Err(problem) = &endpoints {
            warn!(
                provider = KIND,
                base_url, instance, problem, "evolution client misconfigured, every send will fail"
            );
        }
        Self {
            http,
            base_url: base_url.to_owned(),
            instance: instance.to_owned(),
            endpoints,
            retry,
        }
    }

    fn endpoints(&self) -> Result<&Endpoints, SendError> {
        self.endpoints.as_ref().map_err(|problem| SendError {
            retryable: false,
            status: None,
            message: format!("evolution client misconfigured: {problem}"),
            handoff: None,
        })
    }

    /// One POST. `Ok` holds the response body of a 2xx (empty when it could not be read).
    async fn post(
        &self,
        url: &Url,
        api_key: &HeaderValue,
        body: &Value,
        operation: &str,
    ) -> Result<Vec<u8>, Failure> {
        let sent = self
            .http
            .post(url.clone())
            .header("apikey", api_key.clone())
            .json(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return Err(transport_failure(operation, &error)),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let response_body = read_limited(response).await;
        if status.is_success() {
            return Ok(response_body.unwrap_or_else(|error| {
                // Evolution took the message; retrying would send it twice.
                warn!(provider = KIND, operation, error = %error.without_url(), "evolution accepted the request but its response could not be read");
                Vec::new()
            }));
        }
        let mut message = format!("evolution {operation}: HTTP {}", status.as_u16());
        let summary = error_summary(&response_body.unwrap_or_default());
        if !summary.is_empty() {
            message.push_str(": ");
            message.push_str(&summary);
        }
        if let Ok(key) = api_key.to_str()
            && !key.is_empty()
        {
            message = message.replace(key, "<redacted>");
        }
        Err(Failure {
            error: SendError {
                retryable: status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
                status: Some(status.as_u16()),
                message,
                handoff: None,
            },
            retry_after,
        })
    }
}

impl fmt::Debug for EvolutionClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvolutionClient")
            .field("base_url", &self.base_url)
            .field("instance", &self.instance)
            .field("api_key", &"<redacted>")
            .field("misconfigured", &self.endpoints.as_ref().err())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Provider for EvolutionClient {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// `POST /message/sendText/{instance}` with `{number, text}`, retried per the [`RetryPolicy`] on
    /// timeouts, connection errors, 429 and 5xx. A timeout may hide a message Evolution did send, so a
    /// retry after one can deliver it twice; the customer seeing it twice beats never seeing it.
    async fn send_text(&self, to: &ContactId, text: &str) -> Result<SendReceipt, SendError> {
        let endpoints = self.endpoints()?;
        let body = json!({ "number": to.as_str(), "text": text });
        let max_attempts = self.retry.max_attempts();
        let mut attempt = 1;
        loop {
            match self
                .post(&endpoints.send_text, &endpoints.api_key, &body, "sendText")
                .await
            {
                Ok(response_body) => {
                    return Ok(SendReceipt {
                        provider_id: message_id(&response_body),
                    });
                }
                Err(failure) if failure.error.retryable && attempt < max_attempts => {
                    let delay = failure.retry_after.map_or_else(
                        || self.retry.backoff(attempt),
                        |wait| wait.min(self.retry.max_delay),
                    );
                    warn!(
                        provider = KIND,
                        attempt,
                        max_attempts,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error = %failure.error,
                        "evolution send failed, retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// `POST /chat/sendPresence/{instance}` with `{number, presence, delay}`: `composing` for
    /// [`TYPING_DELAY_MS`], or `paused` at once. One try, no retries: it is best effort.
    async fn typing(&self, to: &ContactId, on: bool) -> Result<(), SendError> {
        let endpoints = self.endpoints()?;
        let (presence, delay) = if on {
            ("composing", TYPING_DELAY_MS)
        } else {
            ("paused", 0)
        };
        let body = json!({ "number": to.as_str(), "presence": presence, "delay": delay });
        self.post(
            &endpoints.send_presence,
            &endpoints.api_key,
            &body,
            "sendPresence",
        )
        .await
        .map(drop)
        .map_err(|failure| failure.error)
    }
}

/// A request that got no HTTP response. Timeouts and connection failures may pass; a request that
/// could not be built or redirected in circles will not.
fn transport_failure(operation: &str, error: &reqwest::Error) -> Failure {
    let (retryable, what) = if error.is_timeout() {
        (true, "timed out")
    } else if error.is_connect() {
        (true, "could not connect")
    } else if error.is_builder() || error.is_redirect() {
        (false, "request could not be made")
    } else {
        (true, "request failed")
    };
    debug!(provider = KIND, operation, error = %error, "evolution request failed");
    Failure {
        error: SendError {
            retryable,
            status: None,
            message: format!("evolution {operation}: {what}"),
            handoff: None,
        },
        retry_after: None,
    }
}

/// `key.id` of the created message, when the body is the JSON Evolution documents.
fn message_id(response_body: &[u8]) -> Option<String> {
    let created: Value = serde_json::from_slice(response_body).ok()?;
    let id = created.pointer("/key/id")?.as_str()?;
    (!id.is_empty()).then(|| id.to_owned())
}

/// A short, single-line account of Evolution's error body: `response.message` (a string, or a list
/// of strings and not-on-WhatsApp entries), else `error`. Empty when the body is not JSON.
fn error_summary(response_body: &[u8]) -> String {
    let Ok(error_body) = serde_json::from_slice::<Value>(response_body) else {
        return String::new();
    };
    let summary = match error_body.pointer("/response/message") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(entries)) => entries
            .iter()
            .take(5)
            .map(entry_summary)
            .collect::<Vec<_>>()
            .join("; "),
        Some(other @ Value::Object(_)) => other.to_string(),
        _ => error_body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    };
    let mut short: String = summary
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_SUMMARY_CHARS)
        .collect();
    if summary.chars().count() > MAX_SUMMARY_CHARS {
        short.push('…');
    }
    short
}

fn entry_summary(entry: &Value) -> String {
    match entry {
        Value::String(text) => text.clone(),
        Value::Object(fields) if fields.get("exists") == Some(&Value::Bool(false)) => {
            let number = fields
                .get("number")
                .or_else(|| fields.get("jid"))
                .and_then(Value::as_str)
                .unwrap_or("number");
            format!("{number} is not on whatsapp")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_ON_WHATSAPP: &[u8] = include_bytes!(
        "../../../tests/fixtures/evolution/outbound.sendText.error-400-not-on-whatsapp.json"
    );
    const UNAUTHORIZED: &[u8] =
        include_bytes!("../../../tests/fixtures/evolution/outbound.error-401.json");
    const CREATED: &[u8] =
        include_bytes!("../../../tests/fixtures/evolution/outbound.sendText.response-201.json");

    #[test]
    fn summaries_of_evolution_errors() {
        assert_eq!(
            error_summary(NOT_ON_WHATSAPP),
            "5511900000000 is not on whatsapp"
        );
        assert_eq!(error_summary(UNAUTHORIZED), "Unauthorized");
        assert_eq!(
            error_summary(br#"{"response":{"message":["number is required","text is required"]}}"#),
            "number is required; text is required"
        );
        assert_eq!(
            error_summary(br#"{"error":"Internal Server Error"}"#),
            "Internal Server Error"
        );
        assert_eq!(error_summary(b"<html>bad gateway</html>"), "");
        assert_eq!(error_summary(b""), "");
        let long = format!(r#"{{"response":{{"message":"{}\n"}}}}"#, "x".repeat(500));
        let summary = error_summary(long.as_bytes());
        assert_eq!(summary.chars().count(), MAX_SUMMARY_CHARS + 1);
        assert!(summary.ends_with('…'));
    }

    #[test]
    fn message_id_from_the_created_message() {
        assert_eq!(
            message_id(CREATED).as_deref(),
            Some("3EB0C5A277F7F9B6C5990E")
        );
        assert_eq!(message_id(b"OK"), None);
        assert_eq!(message_id(br#"{"key":{"id":""}}"#), None);
    }

    #[test]
    fn endpoints_escape_the_instance_and_keep_a_path_prefix() {
        let endpoints = Endpoints::build("https://evo.example.com/", "loja-centro", "k").unwrap();
        assert_eq!(
            endpoints.send_text.as_str(),
            "https://evo.example.com/message/sendText/loja-centro"
        );
        assert_eq!(
            endpoints.send_presence.as_str(),
            "https://evo.example.com/chat/sendPresence/loja-centro"
        );
        let endpoints =
            Endpoints::build("http://10.0.0.5:8080/evo?x=1", "loja centro/2%?#", "k").unwrap();
        assert_eq!(
            endpoints.send_text.as_str(),
            "http://10.0.0.5:8080/evo/message/sendText/loja%20centro%2F2%25%3F%23"
        );
        assert!(Endpoints::build("evo.example.com", "i", "k").is_err());
        assert!(Endpoints::build("ftp://evo.example.com", "i", "k").is_err());
        assert!(Endpoints::build("https://evo.example.com", "..", "k").is_err());
        assert!(Endpoints::build("https://evo.example.com", "i", "bad\nkey").is_err());
    }

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let policy = RetryPolicy::default();
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!(
                (Duration::from_millis(100)..=Duration::from_millis(200)).contains(&first),
                "{first:?}"
            );
            let second = policy.backoff(2);
            assert!(
                (Duration::from_millis(200)..=Duration::from_millis(400)).contains(&second),
                "{second:?}"
            );
            let late = policy.backoff(u32::MAX);
            assert!(
                (Duration::from_secs(1)..=Duration::from_secs(2)).contains(&late),
                "{late:?}"
            );
        }
        let zero = RetryPolicy {
            attempts: 0,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        };
        assert_eq!(zero.max_attempts(), 1);
        assert_eq!(zero.backoff(3), Duration::ZERO);
    }

    #[tokio::test]
    async fn misconfigured_clients_fail_without_retry_or_key() {
        let client = EvolutionClient::new(
            reqwest::Client::new(),
            "not a url",
            "i",
            "s3cr3t-key",
            RetryPolicy::default(),
        );
        let to = ContactId::parse("5511999999999").unwrap();
        let error = client.send_text(&to, "oi").await.unwrap_err();
        assert!(!error.retryable);
        assert!(error.message.contains("base url"), "{error}");
        assert!(!format!("{client:?}").contains("s3cr3t-key"));
        assert!(client.typing(&to, true).await.is_err());
    }
}
