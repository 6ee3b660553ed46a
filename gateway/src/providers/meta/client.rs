//! The Cloud API client: text messages and the typing indicator through
//! `POST {graph}/{version}/{phone-number-id}/messages` with the tenant's bearer token.
//!
//! Failures are classified by Graph error code ([`ErrorClass`]) and reported as a [`SendError`]
//! whose message starts with `meta <operation>: <class>` (for example
//! `meta sendText: outside_window (HTTP 400, code 131047): …`), never containing the token. An
//! expired token (190) raises the tenant's attention flag; the next successful send clears it.

use std::fmt;

use async_trait::async_trait;
use engine::ports::{Provider, SendError, SendReceipt};
use engine::{ContactId, TenantId};
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};
use tracing::debug;

use super::{DEFAULT_API_VERSION, DEFAULT_GRAPH_URL, ErrorClass, KIND, last_inbound};
use crate::providers::{
    Failure, RetryPolicy, attention, execute, one_line, wall_clock, with_retries,
};

/// The Cloud API refuses text bodies longer than this (in characters).
const MAX_TEXT_CHARS: usize = 4096;
/// Longest provider summary kept in a [`SendError`] message.
const MAX_SUMMARY_CHARS: usize = 200;

/// Sends through one business phone number of the Cloud API.
pub struct MetaClient {
    http: reqwest::Client,
    tenant: TenantId,
    phone_number_id: String,
    /// `Err` when the configuration cannot produce a request; every call then fails, unretryable.
    endpoint: Result<Endpoint, &'static str>,
    retry: RetryPolicy,
}

struct Endpoint {
    messages: Url,
    /// `Bearer <token>`, marked sensitive so `Debug` never shows it.
    authorization: HeaderValue,
    /// The token itself, to redact it from any error text.
    token: String,
}

impl Endpoint {
    fn build(
        graph_url: Option<&str>,
        api_version: Option<&str>,
        phone_number_id: &str,
        access_token: &str,
    ) -> Result<Self, &'static str> {
        let graph_url = graph_url
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .unwrap_or(DEFAULT_GRAPH_URL);
        let api_version = api_version
            .map(str::trim)
            .filter(|version| !version.is_empty())
            .unwrap_or(DEFAULT_API_VERSION);
        let base = Url::parse(graph_url).map_err(|_| "the graph url is not a valid URL")?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err("the graph url is not http or https");
        }
        if matches!(phone_number_id, "" | "." | "..") || matches!(api_version, "." | "..") {
            return Err("the phone number id or api version is empty or a dot segment");
        }
        let mut messages = base;
        messages.set_query(None);
        messages.set_fragment(None);
        // `push` percent-escapes each segment, `/` included.
        messages
            .path_segments_mut()
            .map_err(|()| "the graph url cannot take a path")?
            .pop_if_empty()
            .push(api_version)
            .push(phone_number_id)
            .push("messages");
        let mut authorization = HeaderValue::from_str(&format!("Bearer {access_token}"))
            .map_err(|_| "the access token is not a valid header value")?;
        authorization.set_sensitive(true);
        Ok(Self {
            messages,
            authorization,
            token: access_token.to_owned(),
        })
    }
}

impl MetaClient {
    /// A client for `phone_number_id` at `graph_url` (default [`DEFAULT_GRAPH_URL`]) and
    /// `api_version` (default [`DEFAULT_API_VERSION`]), authenticated by `access_token`, sending
    /// for `tenant`. A new client clears the tenant's attention flag: new credentials get a fresh
    /// chance.
    ///
    /// Never fails: a configuration that cannot work is logged here and makes every call return a
    /// non-retryable error.
    pub fn new(
        http: reqwest::Client,
        tenant: &TenantId,
        graph_url: Option<&str>,
        api_version: Option<&str>,
        phone_number_id: &str,
        access_token: &str,
        retry: RetryPolicy,
    ) -> Self {
        let endpoint = Endpoint::build(graph_url, api_version, phone_number_id, access_token);
        if let Err(problem) = &endpoint {
            tracing::warn!(provider = KIND, tenant = %tenant, phone_number_id, problem, "meta client misconfigured, every send will fail");
        }
        attention().clear(tenant);
        Self {
            http,
            tenant: tenant.clone(),
            phone_number_id: phone_number_id.to_owned(),
            endpoint,
            retry,
        }
    }

    fn endpoint(&self) -> Result<&Endpoint, SendError> {
        self.endpoint.as_ref().map_err(|problem| SendError {
            retryable: false,
            status: None,
            message: format!("meta client misconfigured: {problem}"),
            handoff: None,
        })
    }

    /// One POST to `/messages`. `Ok` holds the body of a 2xx.
    async fn post(
        &self,
        endpoint: &Endpoint,
        body: &Value,
        operation: &'static str,
    ) -> Result<Vec<u8>, Failure> {
        let request = self
            .http
            .post(endpoint.messages.clone())
            .header(AUTHORIZATION, endpoint.authorization.clone())
            .json(body);
        let reply = execute(request, KIND, operation).await?;
        if reply.status.is_success() {
            return Ok(reply.body);
        }
        let status = reply.status.as_u16();
        let (code, summary) = graph_error(&reply.body);
        let class = ErrorClass::of(code, Some(status));
        if class == ErrorClass::TokenExpired {
            attention().raise(
                &self.tenant,
                KIND,
                "meta access token expired or revoked (error 190)",
                wall_clock(),
            );
        }
        let mut message = match code {
            Some(code) => format!("meta {operation}: {class} (HTTP {status}, code {code})"),
            None => format!("meta {operation}: {class} (HTTP {status})"),
        };
        if !summary.is_empty() {
            message.push_str(": ");
            message.push_str(&summary);
        }
        if !endpoint.token.is_empty() {
            message = message.replace(&endpoint.token, "<redacted>");
        }
        Err(Failure {
            error: SendError {
                retryable: class.retryable(),
                status: Some(status),
                message,
                handoff: (class == ErrorClass::OutsideWindow)
                    .then_some(engine::Reason::OutsideWindow),
            },
            retry_after: reply.retry_after,
            // Meta's own rate limits (130429, 131056, …) need seconds, not the short in-client
            // backoff: they go back to the caller at once, still retryable, so the outbox waits.
            defer: class == ErrorClass::RateLimited && code.is_some(),
        })
    }
}

impl fmt::Debug for MetaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaClient")
            .field("tenant", &self.tenant)
            .field("phone_number_id", &self.phone_number_id)
            .field(
                "messages_url",
                &self.endpoint.as_ref().ok().map(|e| e.messages.as_str()),
            )
            .field("access_token", &"<redacted>")
            .field("misconfigured", &self.endpoint.as_ref().err())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Provider for MetaClient {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// `POST /messages` with a `text` message (split into several below 4,096 characters each,
    /// which Meta requires), retried per the [`RetryPolicy`] on timeouts, connection errors, HTTP
    /// 429 and server errors. Meta's rate-limit codes come back at once, retryable, for the
    /// caller's longer backoff. The receipt names the last message sent.
    async fn send_text(&self, to: &ContactId, text: &str) -> Result<SendReceipt, SendError> {
        let endpoint = self.endpoint()?;
        let mut provider_id = None;
        for part in split_text(text, MAX_TEXT_CHARS) {
            let body = json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to.as_str(),
                "type": "text",
                "text": { "preview_url": false, "body": part },
            });
            let response_body = with_retries(&self.retry, KIND, "sendText", || {
                self.post(endpoint, &body, "sendText")
            })
            .await?;
            provider_id = sent_message_id(&response_body).or(provider_id);
        }
        attention().clear(&self.tenant);
        Ok(SendReceipt { provider_id })
    }

    /// On: marks the contact's latest message read and shows "typing…" (dismissed by Meta when
    /// the answer arrives or after 25 s). The Cloud API needs that message's id, which the webhook
    /// handler remembers; without one this does nothing. Off: nothing to do. One try, no retries.
    async fn typing(&self, to: &ContactId, on: bool) -> Result<(), SendError> {
        if !on {
            return Ok(());
        }
        let endpoint = self.endpoint()?;
        let Some(message_id) = last_inbound(&self.phone_number_id, to) else {
            debug!(provider = KIND, "no inbound message to show typing on");
            return Ok(());
        };
        let body = json!({
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
            "typing_indicator": { "type": "text" },
        });
        self.post(endpoint, &body, "typing")
            .await
            .map(drop)
            .map_err(|failure| failure.error)
    }
}

/// `text` in parts of at most `max_chars` characters, cut at the last paragraph break, line break
/// or space of each part when there is one. One part when it fits (empty text included).
fn split_text(text: &str, max_chars: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max_chars {
        let limit = rest
            .char_indices()
            .nth(max_chars)
            .map_or(rest.len(), |(index, _)| index);
        let window = &rest[..limit];
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|separator| window.rfind(separator).filter(|index| *index > 0))
            .unwrap_or(limit);
        let (part, tail) = rest.split_at(cut);
        parts.push(part.trim_end());
        rest = tail.trim_start();
    }
    parts.push(rest);
    parts
}

/// `messages[0].id` of a send response.
fn sent_message_id(response_body: &[u8]) -> Option<String> {
    let sent: Value = serde_json::from_slice(response_body).ok()?;
    let id = sent.pointer("/messages/0/id")?.as_str()?;
    (!id.is_empty()).then(|| id.to_owned())
}

/// The Graph error code and a one-line summary (`error_data.details`, else `message`) of an error
/// body `{"error": {"message", "type", "code", "error_data": {"details"}, "fbtrace_id"}}`.
fn graph_error(response_body: &[u8]) -> (Option<i64>, String) {
    let Ok(body) = serde_json::from_slice::<Value>(response_body) else {
        return (None, String::new());
    };
    let Some(error) = body.get("error") else {
        return (None, String::new());
    };
    let code = error.get("code").and_then(Value::as_i64);
    let summary = error
        .pointer("/error_data/details")
        .and_then(Value::as_str)
        .or_else(|| error.get("message").and_then(Value::as_str))
        .unwrap_or_default();
    (code, one_line(summary, MAX_SUMMARY_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE_LIMITED: &[u8] =
        include_bytes!("../../../tests/fixtures/meta/outbound.error.130429.json");
    const PAIR_RATE_LIMITED: &[u8] =
        include_bytes!("../../../tests/fixtures/meta/outbound.error.131056.json");
    const SENT: &[u8] =
        include_bytes!("../../../tests/fixtures/meta/outbound.text.response-200.json");

    #[test]
    fn graph_errors_of_the_fixtures() {
        assert_eq!(
            graph_error(RATE_LIMITED),
            (
                Some(130_429),
                "Message failed to send because there were too many messages sent from this phone number in a short period of time".to_owned()
            )
        );
        let (code, summary) = graph_error(PAIR_RATE_LIMITED);
        assert_eq!(code, Some(131_056));
        assert!(summary.starts_with("Message failed to send because there were too many messages sent from this phone number to the same phone number"));
        assert_eq!(
            graph_error(br#"{"error":{"message":"Invalid OAuth access token.","code":190}}"#),
            (Some(190), "Invalid OAuth access token.".to_owned())
        );
        assert_eq!(graph_error(b"<html>"), (None, String::new()));
        assert_eq!(graph_error(br#"{"ok":true}"#), (None, String::new()));
    }

    #[test]
    fn sent_ids() {
        assert_eq!(
            sent_message_id(SENT).as_deref(),
            Some("wamid.HBgNNTUxMTk5OTk5OTk5ORUCABIYGDNFQjBDNUEyNzdGN0Y5QjZDNTk5MEUwMAA=")
        );
        assert_eq!(sent_message_id(br#"{"messages":[]}"#), None);
        assert_eq!(sent_message_id(b"x"), None);
    }

    #[test]
    fn endpoints() {
        let endpoint = Endpoint::build(None, None, "112233445566778", "EAAJ").unwrap();
        assert_eq!(
            endpoint.messages.as_str(),
            "https://graph.facebook.com/v21.0/112233445566778/messages"
        );
        let endpoint =
            Endpoint::build(Some("http://127.0.0.1:9/graph/"), Some("v23.0"), "1/2", "t").unwrap();
        assert_eq!(
            endpoint.messages.as_str(),
            "http://127.0.0.1:9/graph/v23.0/1%2F2/messages"
        );
        assert!(Endpoint::build(Some("graph"), None, "1", "t").is_err());
        assert!(Endpoint::build(None, None, "..", "t").is_err());
        assert!(Endpoint::build(None, None, "1", "bad\ntoken").is_err());
        let endpoint = Endpoint::build(None, None, "1", "s3cr3t-token").unwrap();
        assert!(!format!("{:?}", endpoint.authorization).contains("s3cr3t"));
    }

    #[test]
    fn long_texts_are_split_below_the_limit() {
        assert_eq!(split_text("", 10), vec![""]);
        assert_eq!(split_text("curto", 10), vec!["curto"]);
        assert_eq!(
            split_text("um dois três quatro", 10),
            vec!["um dois", "três", "quatro"]
        );
        assert_eq!(split_text("abc\n\ndef ghi", 9), vec!["abc", "def ghi"]);
        assert_eq!(split_text("aaaaaaaaaaaa", 5), vec!["aaaaa", "aaaaa", "aa"]);
        assert_eq!(split_text("ééééééé", 3), vec!["ééé", "ééé", "é"]);
        let long = "palavra ".repeat(1000);
        for part in split_text(&long, MAX_TEXT_CHARS) {
            assert!(part.chars().count() <= MAX_TEXT_CHARS);
        }
    }

    #[tokio::test]
    async fn misconfigured_clients_fail_without_retry_or_token() {
        let tenant = TenantId::parse("meta-misconfigured").unwrap();
        let client = MetaClient::new(
            reqwest::Client::new(),
            &tenant,
            Some("not a url"),
            None,
            "1",
            "s3cr3t-token",
            RetryPolicy::default(),
        );
        let to = ContactId::parse("5511999999999").unwrap();
        let error = client.send_text(&to, "oi").await.unwrap_err();
        assert!(!error.retryable);
        assert!(error.message.contains("graph url"), "{error}");
        assert!(!format!("{client:?}").contains("s3cr3t-token"));
        assert!(client.typing(&to, false).await.is_ok());
    }
}
