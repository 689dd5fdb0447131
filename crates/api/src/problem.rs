//! RFC 9457 problem documents: the one shape every error takes on the wire.

use agentpost_core::Error;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable identifier, `urn:agentpost:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad request",
        401 => "Unauthenticated",
        403 => "Forbidden",
        404 => "Not found",
        409 => "Conflict",
        405 => "Method not allowed",
        413 => "Payload too large",
        415 => "Unsupported media type",
        422 => "Invalid request",
        429 => "Too many requests",
        _ => "Internal server error",
    }
}

pub fn problem_response(
    status: u16,
    code: &str,
    detail: String,
    field: Option<String>,
    retry_after: Option<u64>,
) -> Response {
    let p = Problem {
        kind: format!("urn:agentpost:problem:{code}"),
        title: title(status).into(),
        status,
        detail,
        field,
        retry_after,
    };
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/problem+json")],
        serde_json::to_vec(&p).unwrap_or_default(),
    )
        .into_response();
    if let Some(s) = retry_after
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if status == 401 {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"agentpost\""),
        );
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = e.status();
        let (field, retry) = match &e {
            Error::Invalid { field, .. } => (Some(field.clone()), None),
            Error::Conflict { field, .. } => (field.clone(), None),
            Error::RateLimited {
                retry_after_secs, ..
            } => (None, Some(*retry_after_secs)),
            _ => (None, None),
        };
        let detail = match &e {
            // Internals go to the log, not to the caller.
            Error::Internal(msg) => {
                tracing::error!(error = %msg, "internal error");
                "the server could not complete the request; it has been logged".to_string()
            }
            Error::Invalid { message, .. } => message.clone(),
            other => other.to_string(),
        };
        problem_response(status, e.code(), detail, field, retry)
    }
}
