//! /v1/agents/{id}/messages, /threads, /folders: an agent's mailbox.
//! Agent tokens on their own agent need `mail.read` (the raw view
//! `mail.read_raw`); PATCH and DELETE need `mail.read` too, since managing
//! one's own mailbox is part of reading it. Admin keys may read any agent's
//! mailbox, and every such access is audited.

use crate::AppState;
use crate::extract::{ApiJson, ApiQuery, Caller};
use crate::problem::{ApiResult, Problem};
use agentpost_core::{
    FolderCounts, MessageDetail, MessagePatch, MessageQuery, MessageSummary, Page, Removed,
    ThreadDetail, ThreadQuery, ThreadSummary,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ViewParam {
    /// `safe` (default): the model-safe view; `parsed`: also the bodies as
    /// sent; `raw`: the message exactly as received (`message/rfc822`). The
    /// last two need the scope `mail.read_raw`.
    pub view: Option<String>,
}

/// List messages, newest first: filters, full-text `q`, cursor pagination.
#[utoipa::path(get, path = "/v1/agents/{id}/messages", tag = "mail", params(("id" = String, Path), MessageQuery),
    responses((status = 200, body = Page<MessageSummary>), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn list_messages(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MessageQuery>,
) -> ApiResult<Json<Page<MessageSummary>>> {
    Ok(Json(s.svc.list_messages(&ctx, &id, q).await?))
}

/// One message. By default its model-safe view (`safe`: what a human sees,
/// with every hidden thing reported); `?view=parsed` adds the bodies as sent
/// and `?view=raw` returns the RFC 5322 message (both need `mail.read_raw`).
#[utoipa::path(get, path = "/v1/agents/{id}/messages/{message_id}", tag = "mail", params(("id" = String, Path), ("message_id" = String, Path), ViewParam),
    responses((status = 200, body = MessageDetail), (status = 200, content_type = "message/rfc822", description = "with view=raw"), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_message(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, mid)): Path<(String, String)>,
    ApiQuery(v): ApiQuery<ViewParam>,
) -> ApiResult<Response> {
    match v.view.as_deref() {
        None | Some("safe") => {
            Ok(Json(s.svc.get_message(&ctx, &id, &mid, false).await?).into_response())
        }
        Some("parsed") => Ok(Json(s.svc.get_message(&ctx, &id, &mid, true).await?).into_response()),
        Some("raw") => {
            let raw = s.svc.get_raw_message(&ctx, &id, &mid).await?;
            Ok((
                [
                    (header::CONTENT_TYPE, "message/rfc822".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{}.eml\"", raw.id),
                    ),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
                ],
                raw.bytes,
            )
                .into_response())
        }
        Some(_) => Err(agentpost_core::Error::invalid(
            "view",
            "must be safe (the default), parsed or raw",
        )
        .into()),
    }
}

/// Change unread, starred, folder or labels.
#[utoipa::path(patch, path = "/v1/agents/{id}/messages/{message_id}", tag = "mail", params(("id" = String, Path), ("message_id" = String, Path)), request_body = MessagePatch,
    responses((status = 200, body = MessageDetail), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update_message(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, mid)): Path<(String, String)>,
    ApiJson(body): ApiJson<MessagePatch>,
) -> ApiResult<Json<MessageDetail>> {
    Ok(Json(s.svc.update_message(&ctx, &id, &mid, body).await?))
}

/// Move to trash; a message already in trash is deleted for good.
#[utoipa::path(delete, path = "/v1/agents/{id}/messages/{message_id}", tag = "mail", params(("id" = String, Path), ("message_id" = String, Path)),
    responses((status = 200, body = Removed), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_message(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, mid)): Path<(String, String)>,
) -> ApiResult<Json<Removed>> {
    Ok(Json(s.svc.delete_message(&ctx, &id, &mid).await?))
}

/// Download one attachment (its index from the message's `attachments`).
#[utoipa::path(get, path = "/v1/agents/{id}/messages/{message_id}/attachments/{index}", tag = "mail",
    params(("id" = String, Path), ("message_id" = String, Path), ("index" = u32, Path)),
    responses((status = 200, content_type = "application/octet-stream", description = "the decoded attachment, with its own content type"), (status = 404, body = Problem)))]
pub async fn download_attachment(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, mid, index)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let index: u32 = index
        .parse()
        .map_err(|_| agentpost_core::Error::not_found("attachment"))?;
    let a = s.svc.get_attachment(&ctx, &id, &mid, index).await?;
    // The type is the sender's claim; nosniff and attachment disposition
    // keep a browser from rendering it in our origin.
    let ct = if is_plain_content_type(&a.info.content_type) {
        a.info.content_type.clone()
    } else {
        "application/octet-stream".into()
    };
    Ok((
        [
            (header::CONTENT_TYPE, ct),
            (
                header::CONTENT_DISPOSITION,
                content_disposition(a.info.name.as_deref(), index),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
        ],
        a.bytes,
    )
        .into_response())
}

/// A content type we pass on: `type/subtype` of token characters only
/// (no parameters, nothing that could break the header).
fn is_plain_content_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    matches!(s.split_once('/'), Some((a, b)) if token(a) && token(b))
}

/// `attachment; filename="<ascii fallback>"; filename*=UTF-8''<percent-encoded>` (RFC 6266).
fn content_disposition(name: Option<&str>, index: u32) -> String {
    let name = name
        .filter(|n| !n.trim().is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("attachment-{index}"));
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Threads, most recently active first.
#[utoipa::path(get, path = "/v1/agents/{id}/threads", tag = "mail", params(("id" = String, Path), ThreadQuery),
    responses((status = 200, body = Page<ThreadSummary>), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list_threads(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ThreadQuery>,
) -> ApiResult<Json<Page<ThreadSummary>>> {
    Ok(Json(s.svc.list_threads(&ctx, &id, q).await?))
}

/// One thread with its messages, oldest first.
#[utoipa::path(get, path = "/v1/agents/{id}/threads/{thread_id}", tag = "mail", params(("id" = String, Path), ("thread_id" = String, Path)),
    responses((status = 200, body = ThreadDetail), (status = 404, body = Problem)))]
pub async fn get_thread(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path((id, tid)): Path<(String, String)>,
) -> ApiResult<Json<ThreadDetail>> {
    Ok(Json(s.svc.get_thread(&ctx, &id, &tid).await?))
}

/// System folders and labels with message and unread counts, and storage use.
#[utoipa::path(get, path = "/v1/agents/{id}/folders", tag = "mail", params(("id" = String, Path)),
    responses((status = 200, body = FolderCounts), (status = 404, body = Problem)))]
pub async fn folders(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<FolderCounts>> {
    Ok(Json(s.svc.folder_counts(&ctx, &id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_are_safe_header_values() {
        let d = content_disposition(Some("Grüße \"x\".pdf"), 0);
        assert!(d.is_ascii());
        assert!(d.starts_with("attachment; filename=\"Gr"));
        assert!(d.contains("filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%22x%22.pdf"));
        assert_eq!(
            content_disposition(None, 3),
            "attachment; filename=\"attachment-3\"; filename*=UTF-8''attachment-3"
        );
        assert!(is_plain_content_type("text/html"));
        assert!(!is_plain_content_type("text/html\r\nX: y"));
    }
}
