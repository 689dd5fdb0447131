//! Request plumbing shared by every route: request ids, authentication (the
//! gate's "who"), idempotent replays, and request metrics.

use crate::AppState;
use crate::problem::{ApiError, problem_response};
use agentpost_core::{Ctx, IdempotencyStart};
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Instant;

pub const REQUEST_ID: &str = "x-request-id";
/// JSON bodies are small; anything bigger is a mistake or an attack.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// Routes that carry messages (send, drafts) take up to this much.
pub const LARGE_BODY_LIMIT: usize = 140 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Takes a caller's request id if it is sane, else mints one; echoes it back.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

pub async fn metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("agentpost_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("agentpost_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

fn source_of(req: &Request) -> Option<String> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// Who: resolves the bearer credential through the gate and stores the
/// resulting `Ctx` for handlers. The secret goes no further than this.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let source = source_of(&req);
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match state
        .svc
        .authenticate(&presented, request_id.clone(), source.clone())
        .await
    {
        Ok(principal) => {
            req.extensions_mut().insert(Ctx {
                principal,
                request_id,
                source,
            });
            next.run(req).await
        }
        Err(e) => ApiError(e).into_response(),
    }
}

/// `Idempotency-Key` on POST: replays the first answer for the same key and
/// body, refuses the same key with another body. Runs after authentication.
pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
    else {
        return next.run(req).await;
    };
    let Ok(key) = key else {
        return problem_response(
            422,
            "validation",
            "Idempotency-Key must be visible ASCII".into(),
            Some("Idempotency-Key".into()),
            None,
        );
    };
    let Some(ctx) = req.extensions().get::<Ctx>().cloned() else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    // The route's own limit still applies when its handler reads the body.
    let Ok(bytes) = to_bytes(body, LARGE_BODY_LIMIT).await else {
        return problem_response(
            413,
            "payload-too-large",
            "request body is larger than the limit".into(),
            None,
            None,
        );
    };
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update(b" ");
    h.update(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("")
            .as_bytes(),
    );
    h.update(b"\n");
    h.update(&bytes);
    let fingerprint = hex::encode(h.finalize());
    match state.svc.idempotency_begin(&ctx, &key, &fingerprint).await {
        Err(e) => ApiError(e).into_response(),
        Ok(IdempotencyStart::Replay { status, body }) => {
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() =
                axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
            let ct = if status >= 400 {
                "application/problem+json"
            } else {
                "application/json"
            };
            resp.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static(ct),
            );
            resp.headers_mut()
                .insert("idempotency-replayed", HeaderValue::from_static("true"));
            resp
        }
        Ok(IdempotencyStart::Proceed) => {
            let resp = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            let (parts, body) = resp.into_parts();
            let bytes = match to_bytes(body, 16 * BODY_LIMIT).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "could not buffer a response for idempotent replay");
                    let _ = state.svc.idempotency_finish(&ctx, &key, 500, b"").await;
                    return problem_response(
                        500,
                        "internal",
                        "the server could not complete the request".into(),
                        None,
                        None,
                    );
                }
            };
            if let Err(e) = state
                .svc
                .idempotency_finish(&ctx, &key, parts.status.as_u16(), &bytes)
                .await
            {
                tracing::error!(error = %e, "could not store an idempotent response");
            }
            Response::from_parts(parts, Body::from(bytes))
        }
    }
}
