//! The tenant API (`Authorization: Bearer <tenant api_key>`): a tenant sees only its own data.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::conversation::ConversationState;
use engine::knowledge::{self, KnowledgeIndex, MAX_KNOWLEDGE_CHARS};
use engine::ports::Knowledge;
use engine::{ContactId, EngineError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::json_body;
use super::auth::TenantAuth;
use super::views;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::util::parse_time;

type Params = Query<HashMap<String, String>>;

fn contact(raw: &str) -> ApiResult<ContactId> {
    ContactId::parse(raw)
        .map_err(|_| ApiError::not_found("no such contact: contacts are E.164 digits"))
}

fn limit(params: &HashMap<String, String>, default: usize, max: usize) -> ApiResult<usize> {
    match params.get("limit") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::unprocessable(
                "limit",
                &format!("must be an integer from 1 to {max}"),
            )),
        },
    }
}

pub async fn get_settings(TenantAuth(rt): TenantAuth) -> ApiResult<Json<Value>> {
    Ok(Json(
        serde_json::to_value(&rt.tenant.settings).unwrap_or(Value::Null),
    ))
}

pub async fn put_settings(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let patch: Value = json_body(&body)?;
    let mut tenant = rt.tenant.clone();
    tenant.settings = tenant.settings.apply_patch(&patch)?;
    app.store.update_tenant(&tenant).await?;
    let view = serde_json::to_value(&tenant.settings).unwrap_or(Value::Null);
    app.directory.upsert(tenant, None);
    Ok(Json(view))
}

pub async fn get_knowledge(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
) -> ApiResult<Json<Value>> {
    let k = app.store.get_knowledge(&rt.tenant.id).await?;
    Ok(Json(match k {
        Some(k) => {
            json!({"text": k.text, "chars": k.text.chars().count(), "chunks": k.chunks.len()})
        }
        None => json!({"text": "", "chars": 0, "chunks": 0}),
    }))
}

pub async fn put_knowledge(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let text = if is_json {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            text: String,
        }
        json_body::<Body>(&body)?.text
    } else {
        String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the knowledge text is not valid UTF-8"))?
    };
    let chars = text.chars().count();
    if chars > MAX_KNOWLEDGE_CHARS {
        return Err(ApiError::too_large(format!(
            "the knowledge text has {chars} characters; the limit is {MAX_KNOWLEDGE_CHARS}"
        )));
    }
    // Chunking and indexing are CPU work: off the async threads.
    let (text, chunks) = tokio::task::spawn_blocking(move || {
        let chunks =
            knowledge::chunk(&text).map_err(|e| EngineError::invalid("text", e.to_string()))?;
        Ok::<_, EngineError>((text, chunks))
    })
    .await
    .map_err(|e| EngineError::Internal(e.to_string()))??;
    let n = chunks.len();
    let _writing = app.knowledge_locks.lock(&rt.tenant.id).await;
    let (chunks, embeddings) = match app.embedder.get() {
        None => (chunks, None),
        Some(embedder) => {
            let previous = app.store.get_knowledge(&rt.tenant.id).await?;
            let (chunks, report) =
                crate::embeddings::embed_chunks(embedder, chunks, previous.as_ref()).await;
            if let Some(error) = &report.error {
                tracing::warn!(tenant = %rt.tenant.id, %error, "knowledge saved without vectors; retrieval stays lexical");
            }
            (chunks, Some(report))
        }
    };
    let indexed = chunks.clone();
    let index = tokio::task::spawn_blocking(move || KnowledgeIndex::build(indexed))
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?;
    let k = Knowledge {
        text,
        chunks,
        updated_at: app.clock.now(),
    };
    app.store.put_knowledge(&rt.tenant.id, &k).await?;
    app.directory.set_index(&rt.tenant.id, Arc::new(index));
    tracing::info!(tenant = %rt.tenant.id, chars, chunks = n, "knowledge updated");
    let mut body = json!({"chars": chars, "chunks": n});
    if let Some(report) = embeddings {
        body["embeddings"] = serde_json::to_value(report).unwrap_or(Value::Null);
    }
    Ok(Json(body))
}

pub async fn search_knowledge(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
    q: Params,
) -> ApiResult<Json<Value>> {
    let query = q.get("q").map(|s| s.trim()).unwrap_or_default();
    if query.is_empty() {
        return Err(ApiError::unprocessable("q", "must not be empty"));
    }
    let k = limit(&q, 5, 50)?;
    // Bounded like a turn's embedding: a slow endpoint makes the search lexical, not slow.
    let dense = match app.embedder.get() {
        Some(embedder) => {
            crate::embeddings::query(
                embedder.as_ref(),
                &rt.tenant.id,
                rt.index.embedding_model(),
                query,
            )
            .await
        }
        None => None,
    };
    let hits = rt.index.search_with(query, dense.as_ref(), k);
    Ok(Json(Value::Array(
        hits.into_iter()
            .map(|h| json!({"chunk": h.chunk, "text": h.text, "score": h.score}))
            .collect(),
    )))
}

pub async fn list_conversations(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
    q: Params,
) -> ApiResult<Json<Value>> {
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(ConversationState::parse(s).ok_or_else(|| {
            ApiError::unprocessable(
                "state",
                "must be IA_ATIVA, AGUARDANDO_HUMANO or HUMANO_RESPONDEU",
            )
        })?),
    };
    let n = limit(&q, 50, 500)?;
    let page = app
        .store
        .list_conversations(&rt.tenant.id, state, n, q.get("cursor").map(String::as_str))
        .await?;
    Ok(Json(json!({
        "items": page.items.iter().map(views::conversation).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })))
}

pub async fn get_conversation(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let contact = contact(&raw)?;
    let c = app
        .store
        .load_conversation(&rt.tenant.id, &contact)
        .await?
        .ok_or_else(|| ApiError::not_found("conversation not found"))?;
    Ok(Json(views::conversation(&c)))
}

pub async fn list_messages(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
    q: Params,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let contact = contact(&raw)?;
    let n = limit(&q, 50, 500)?;
    let before = match q.get("before") {
        None => None,
        Some(b) => Some(parse_time(b).ok_or_else(|| {
            ApiError::unprocessable(
                "before",
                "must be an RFC 3339 time or milliseconds since the epoch",
            )
        })?),
    };
    let messages = app
        .store
        .history(&rt.tenant.id, &contact, n, before, app.clock.now())
        .await?;
    Ok(Json(Value::Array(
        messages.iter().map(views::message).collect(),
    )))
}

pub async fn post_message(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
    Path(raw): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let contact = contact(&raw)?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        text: String,
    }
    let text = json_body::<Body>(&body)?.text;
    let message = app
        .engine
        .human_reply(&rt.tenant.id, &contact, text)
        .await?;
    Ok((StatusCode::CREATED, Json(views::message(&message))).into_response())
}

pub async fn takeover(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let c = app.engine.takeover(&rt.tenant.id, &contact(&raw)?).await?;
    Ok(Json(views::conversation(&c)))
}

pub async fn release(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let c = app.engine.release(&rt.tenant.id, &contact(&raw)?).await?;
    Ok(Json(views::conversation(&c)))
}

pub async fn erase_contact(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
    Path(raw): Path<String>,
) -> ApiResult<StatusCode> {
    let contact = contact(&raw)?;
    app.engine
        .stop_conversation(&rt.tenant.id, &contact)
        .await?;
    app.store.erase_contact(&rt.tenant.id, &contact).await?;
    tracing::info!(tenant = %rt.tenant.id, "contact erased");
    Ok(StatusCode::NO_CONTENT)
}

/// The exact prompt of the conversation's last LLM turn (debug).
pub async fn last_prompt(
    State(app): State<AppState>,
    TenantAuth(rt): TenantAuth,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let prompt = app
        .engine
        .last_prompt(&rt.tenant.id, &contact(&raw)?)
        .ok_or_else(|| {
            ApiError::not_found("no LLM prompt recorded for this conversation recently")
        })?;
    Ok(Json(serde_json::to_value(&*prompt).unwrap_or(Value::Null)))
}
