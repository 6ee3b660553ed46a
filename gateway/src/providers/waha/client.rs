//! The WAHA REST client: text messages (retried when a retry may help), typing indicators and read
//! receipts, in the order WAHA recommends: `sendSeen` → `startTyping` → … → `stopTyping` →
//! `sendText`.
//!
//! Typing and sending for one chat are ordered by a per-chat lock, so a slow `startTyping` can never
//! land after the answer and leave "typing…" showing. Failures are summarised from WAHA's
//! `{message, statusCode, error?}` into a short [`SendError`] message that never contains the key.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use engine::ports::{Provider, SendError, SendReceipt};
use engine::{ContactId, TenantId};
use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::{KIND, bare_message_id};
use crate::providers::{Failure, RetryPolicy, attention, execute, one_line, with_retries};

/// Longest provider summary kept in a [`SendError`] message.
const MAX_SUMMARY_CHARS: usize = 200;

/// Sends through one WAHA session.
pub struct WahaClient {
    http: reqwest::Client,
    tenant: TenantId,
    base_url: String,
    session: String,
    /// `Err` when the configuration cannot produce a request; every call then fails, unretryable.
    endpoints: Result<Endpoints, &'static str>,
    retry: RetryPolicy,
    /// Per chat: whether "typing…" is on, behind the lock that orders typing and sending.
    chats: Mutex<HashMap<String, Arc<tokio::sync::Mutex<bool>>>>,
}

struct Endpoints {
    send_text: Url,
    start_typing: Url,
    stop_typing: Url,
    send_seen: Url,
    /// Marked sensitive, so `Debug` of the header value never shows it.
    api_key: HeaderValue,
}

impl Endpoints {
    fn build(base_url: &str, api_key: &str) -> Result<Self, &'static str> {
        let base = Url::parse(base_url.trim()).map_err(|_| "the base url is not a valid URL")?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err("the base url is not http or https");
        }
        let endpoint = |name: &str| -> Result<Url, &'static str> {
            let mut url = base.clone();
            url.set_query(None);
            url.set_fragment(None);
            url.path_segments_mut()
                .map_err(|()| "the base url cannot take a path")?
                .pop_if_empty()
                .push("api")
                .push(name);
            Ok(url)
        };
        let mut api_key = HeaderValue::from_str(api_key)
            .map_err(|_| "the api key is not a valid header value")?;
        api_key.set_sensitive(true);
        Ok(Self {
            send_text: endpoint("sendText")?,
            start_typing: endpoint("startTyping")?,
            stop_typing: endpoint("stopTyping")?,
            send_seen: endpoint("sendSeen")?,
            api_key,
        })
    }
}

impl WahaClient {
    /// A client for `session` on the WAHA server at `base_url` (a trailing `/` or a path prefix is
    /// fine), authenticated by `api_key` (`X-Api-Key`), sending for `tenant`.
    ///
    /// Never fails: a configuration that cannot work (a base URL that does not parse, an API key
    /// that is not a header value) is logged here and makes every call return a non-retryable error.
    pub fn new(
        http: reqwest::Client,
        tenant: &TenantId,
        base_url: &str,
        session: &str,
        api_key: &str,
        retry: RetryPolicy,
    ) -> Self {
        let endpoints = Endpoints::build(base_url, api_key);
        if let Err(problem) = &endpoints {
            warn!(provider = KIND, tenant = %tenant, base_url, session, problem, "waha client misconfigured, every send will fail");
        }
        Self {
            http,
            tenant: tenant.clone(),
            base_url: base_url.to_owned(),
            session: session.to_owned(),
            endpoints,
            retry,
            chats: Mutex::default(),
        }
    }

    fn endpoints(&self) -> Result<&Endpoints, SendError> {
        self.endpoints.as_ref().map_err(|problem| SendError {
            retryable: false,
            status: None,
            message: format!("waha client misconfigured: {problem}"),
            handoff: None,
        })
    }

    /// The lock (and typing flag) of one chat.
    fn chat(&self, chat_id: &str) -> Arc<tokio::sync::Mutex<bool>> {
        let mut chats = self.chats.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(chats.entry(chat_id.to_owned()).or_default())
    }

    /// Forgets a chat that nobody uses and that is not typing, so the map stays small.
    fn release(&self, chat_id: &str, handle: Arc<tokio::sync::Mutex<bool>>) {
        drop(handle);
        let mut chats = self.chats.lock().unwrap_or_else(|p| p.into_inner());
        let idle = chats.get(chat_id).is_some_and(|entry| {
            Arc::strong_count(entry) == 1 && entry.try_lock().is_ok_and(|typing| !*typing)
        });
        if idle {
            chats.remove(chat_id);
        }
    }

    /// One POST with `X-Api-Key`. `Ok` holds the body of a 2xx.
    async fn post(
        &self,
        url: &Url,
        body: &Value,
        operation: &'static str,
    ) -> Result<Vec<u8>, Failure> {
        let endpoints = self.endpoints().map_err(|error| Failure {
            error,
            retry_after: None,
            defer: false,
        })?;
        let request = self
            .http
            .post(url.clone())
            .header("X-Api-Key", endpoints.api_key.clone())
            .json(body);
        let reply = execute(request, KIND, operation).await?;
        if reply.status.is_success() {
            return Ok(reply.body);
        }
        let status = reply.status;
        if status == StatusCode::UNAUTHORIZED {
            attention().raise(
                &self.tenant,
                KIND,
                "waha refused the api key (HTTP 401)",
                crate::providers::wall_clock(),
            );
        }
        let mut message = format!("waha {operation}: HTTP {}", status.as_u16());
        let summary = error_summary(&reply.body);
        if !summary.is_empty() {
            message.push_str(": ");
            message.push_str(&summary);
        }
        if let Ok(key) = endpoints.api_key.to_str()
            && !key.is_empty()
        {
            message = message.replace(key, "<redacted>");
        }
        Err(Failure {
            error: SendError {
                retryable: status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status.is_server_error(),
                status: Some(status.as_u16()),
                message,
                handoff: None,
            },
            retry_after: reply.retry_after,
            defer: false,
        })
    }

    /// `stopTyping` for a chat whose flag is on; best effort.
    async fn stop_typing(&self, chat_id: &str, typing: &mut bool) {
        if !*typing {
            return;
        }
        *typing = false;
        let Ok(endpoints) = self.endpoints() else {
            return;
        };
        let body = json!({ "session": self.session, "chatId": chat_id });
        if let Err(failure) = self.post(&endpoints.stop_typing, &body, "stopTyping").await {
            debug!(provider = KIND, error = %failure.error, "stopTyping failed");
        }
    }
}

impl fmt::Debug for WahaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WahaClient")
            .field("tenant", &self.tenant)
            .field("base_url", &self.base_url)
            .field("session", &self.session)
            .field("api_key", &"<redacted>")
            .field("misconfigured", &self.endpoints.as_ref().err())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Provider for WahaClient {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// `stopTyping` when "typing…" is on, then `POST /api/sendText` with
    /// `{session, chatId, text, linkPreview: false}`, retried per the [`RetryPolicy`] on timeouts,
    /// connection errors, 408, 429 and 5xx. A timeout may hide a message WAHA did send, so a retry
    /// after one can deliver it twice; the customer seeing it twice beats never seeing it.
    async fn send_text(&self, to: &ContactId, text: &str) -> Result<SendReceipt, SendError> {
        let endpoints = self.endpoints()?;
        let chat_id = chat_id(to);
        let handle = self.chat(&chat_id);
        let result = {
            let mut typing = handle.lock().await;
            self.stop_typing(&chat_id, &mut typing).await;
            let body = json!({
                "session": self.session,
                "chatId": chat_id,
                "text": text,
                "linkPreview": false,
            });
            with_retries(&self.retry, KIND, "sendText", || {
                self.post(&endpoints.send_text, &body, "sendText")
            })
            .await
        };
        self.release(&chat_id, handle);
        let response_body = result?;
        attention().clear(&self.tenant);
        Ok(SendReceipt {
            provider_id: sent_message_id(&response_body),
        })
    }

    /// On: `sendSeen` (the customer sees their messages read) then `startTyping`. Off:
    /// `stopTyping`. One try each, no retries: it is best effort. `send_text` stops the indicator
    /// itself before the answer.
    async fn typing(&self, to: &ContactId, on: bool) -> Result<(), SendError> {
        let endpoints = self.endpoints()?;
        let chat_id = chat_id(to);
        let handle = self.chat(&chat_id);
        let result = {
            let mut typing = handle.lock().await;
            let body = json!({ "session": self.session, "chatId": chat_id });
            if on {
                if let Err(failure) = self.post(&endpoints.send_seen, &body, "sendSeen").await {
                    debug!(provider = KIND, error = %failure.error, "sendSeen failed");
                }
                let started = self
                    .post(&endpoints.start_typing, &body, "startTyping")
                    .await
                    .map(drop)
                    .map_err(|failure| failure.error);
                *typing = started.is_ok();
                started
            } else {
                self.stop_typing(&chat_id, &mut typing).await;
                Ok(())
            }
        };
        self.release(&chat_id, handle);
        result
    }
}

/// WAHA's chat id of a person: `<digits>@c.us` (never `@s.whatsapp.net`).
fn chat_id(to: &ContactId) -> String {
    if to.is_hidden() {
        // A person addressed by a hidden id: the chat id is that id.
        return to.as_str().to_owned();
    }
    format!("{}@c.us", to.as_str())
}

/// The bare WhatsApp id of the sent message: NOWEB answers the Baileys message (`key.id`), WEBJS a
/// whatsapp-web.js message (`id._serialized` or `id.id`), some versions `{id: "…"}`.
fn sent_message_id(response_body: &[u8]) -> Option<String> {
    let sent: Value = serde_json::from_slice(response_body).ok()?;
    let id = sent
        .pointer("/key/id")
        .or_else(|| sent.pointer("/id/_serialized"))
        .or_else(|| sent.pointer("/id/id"))
        .or_else(|| sent.get("id"))
        .and_then(Value::as_str)?;
    let id = bare_message_id(id);
    (!id.is_empty()).then(|| id.to_owned())
}

/// A short, single-line account of WAHA's error body: `message` (a string, or NestJS's list of
/// validation messages), else `error`. Empty when the body is not JSON.
fn error_summary(response_body: &[u8]) -> String {
    let Ok(error_body) = serde_json::from_slice::<Value>(response_body) else {
        return String::new();
    };
    let summary = match error_body.get("message") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(entries)) => entries
            .iter()
            .take(5)
            .map(|entry| match entry {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => error_body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    };
    one_line(&summary, MAX_SUMMARY_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNAUTHORIZED: &[u8] =
        include_bytes!("../../../tests/fixtures/waha/outbound.error-401.json");
    const SENT_NOWEB: &[u8] =
        include_bytes!("../../../tests/fixtures/waha/outbound.sendText.response.noweb.json");
    const SENT_WEBJS: &[u8] =
        include_bytes!("../../../tests/fixtures/waha/outbound.sendText.response.webjs.json");

    #[test]
    fn sent_ids_of_every_engine_are_bare() {
        assert_eq!(
            sent_message_id(SENT_NOWEB).as_deref(),
            Some("3EB0C5A277F7F9B6C5990E")
        );
        assert_eq!(
            sent_message_id(SENT_WEBJS).as_deref(),
            Some("3EB0C5A277F7F9B6C5990E")
        );
        assert_eq!(
            sent_message_id(br#"{"id":"true_5511999999999@c.us_ABC"}"#).as_deref(),
            Some("ABC")
        );
        assert_eq!(
            sent_message_id(br#"{"id":{"id":"XYZ"}}"#).as_deref(),
            Some("XYZ")
        );
        assert_eq!(sent_message_id(br#"{"result":true}"#), None);
        assert_eq!(sent_message_id(b""), None);
        assert_eq!(sent_message_id(br#"{"key":{"id":""}}"#), None);
    }

    #[test]
    fn summaries_of_waha_errors() {
        assert_eq!(error_summary(UNAUTHORIZED), "Unauthorized");
        assert_eq!(
            error_summary(br#"{"statusCode":400,"message":["chatId must be a string","text should not be empty"],"error":"Bad Request"}"#),
            "chatId must be a string; text should not be empty"
        );
        assert_eq!(error_summary(br#"{"error":"Bad Gateway"}"#), "Bad Gateway");
        assert_eq!(error_summary(b"<html>"), "");
    }

    #[test]
    fn endpoints_keep_a_path_prefix_and_refuse_nonsense() {
        let endpoints = Endpoints::build("https://waha.example.com/", "k").unwrap();
        assert_eq!(
            endpoints.send_text.as_str(),
            "https://waha.example.com/api/sendText"
        );
        assert_eq!(
            endpoints.start_typing.as_str(),
            "https://waha.example.com/api/startTyping"
        );
        assert_eq!(
            endpoints.stop_typing.as_str(),
            "https://waha.example.com/api/stopTyping"
        );
        assert_eq!(
            endpoints.send_seen.as_str(),
            "https://waha.example.com/api/sendSeen"
        );
        let endpoints = Endpoints::build("http://10.0.0.5:3000/waha?x=1#y", "k").unwrap();
        assert_eq!(
            endpoints.send_text.as_str(),
            "http://10.0.0.5:3000/waha/api/sendText"
        );
        assert!(Endpoints::build("waha.example.com", "k").is_err());
        assert!(Endpoints::build("ftp://waha.example.com", "k").is_err());
        assert!(Endpoints::build("https://waha.example.com", "bad\nkey").is_err());
    }

    #[tokio::test]
    async fn misconfigured_clients_fail_without_retry_or_key() {
        let tenant = TenantId::parse("waha-misconfigured").unwrap();
        let client = WahaClient::new(
            reqwest::Client::new(),
            &tenant,
            "not a url",
            "default",
            "s3cr3t-key",
            RetryPolicy::default(),
        );
        let to = ContactId::parse("5511999999999").unwrap();
        let error = client.send_text(&to, "oi").await.unwrap_err();
        assert!(!error.retryable);
        assert!(error.message.contains("base url"), "{error}");
        assert!(!format!("{client:?}").contains("s3cr3t-key"));
        assert!(client.typing(&to, true).await.is_err());
        assert!(client.chats.lock().unwrap().is_empty());
    }
}
