//! /v1/events: the event log as JSON pages (`after=<id>`, for polling) or,
//! with `Accept: text/event-stream`, as Server-Sent Events that resume from
//! `Last-Event-ID` without gaps or repeats.

use crate::AppState;
use crate::extract::{ApiQuery, Caller};
use crate::problem::{ApiError, ApiResult, Problem, problem_response};
use agentpost_core::events::Event;
use agentpost_core::{Ctx, EventPage, EventQuery, Service};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Events after an id, oldest first; as a stream when asked for `text/event-stream`.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume a stream after this event id (takes precedence over `after`)")),
    responses(
        (status = 200, body = EventPage, description = "a page of events (JSON), or a stream (text/event-stream): each SSE message has the event id as `id` and the event as JSON `data`"),
        (status = 404, body = Problem, description = "agent not visible to the caller"),
        (status = 422, body = Problem)))]
pub async fn list_events(
    State(s): State<AppState>,
    Caller(ctx): Caller,
    headers: HeaderMap,
    ApiQuery(mut q): ApiQuery<EventQuery>,
) -> ApiResult<Response> {
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if let Some(v) = headers.get("last-event-id") {
        match v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()) {
            Some(id) if id >= 0 => q.after = Some(id),
            _ => {
                return Ok(problem_response(
                    400,
                    "bad-request",
                    "Last-Event-ID must be an event id".into(),
                    Some("Last-Event-ID".into()),
                    None,
                ));
            }
        }
    }
    if !wants_stream {
        return Ok(Json(s.svc.list_events(&ctx, &q).await?).into_response());
    }
    // Check the caller and the filters before the stream starts, so a
    // refusal is a problem document rather than a broken stream.
    q.limit = Some(200);
    let first = s.svc.list_events(&ctx, &q).await?;
    let stream = EventStream {
        svc: s.svc.clone(),
        ctx,
        cursor: first.last_id,
        buf: first.data.into(),
        q,
        failed: false,
    };
    let body = futures::stream::unfold(stream, |mut st| async move {
        st.next().await.map(|ev| (Ok::<_, Infallible>(ev), st))
    });
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct EventStream {
    svc: Arc<Service>,
    ctx: Ctx,
    q: EventQuery,
    cursor: i64,
    buf: VecDeque<Event>,
    failed: bool,
}

impl EventStream {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(ev) = self.buf.pop_front() {
                let data = serde_json::to_string(&ev).unwrap_or_default();
                return Some(SseEvent::default().id(ev.id.to_string()).data(data));
            }
            if self.failed || self.svc.streams_closing() {
                return None;
            }
            let mut q = self.q.clone();
            q.after = Some(self.cursor);
            match self.svc.list_events(&self.ctx, &q).await {
                Ok(page) => {
                    self.cursor = page.last_id;
                    if page.data.is_empty() {
                        self.svc.wait_for_events(Duration::from_millis(500)).await;
                    } else {
                        self.buf.extend(page.data);
                    }
                }
                Err(e) => {
                    // The client reconnects with Last-Event-ID; tell it why we stopped.
                    self.failed = true;
                    let detail = ApiError(e).into_response().status().as_u16();
                    return Some(
                        SseEvent::default()
                            .event("error")
                            .data(format!("{{\"status\":{detail}}}")),
                    );
                }
            }
        }
    }
}
