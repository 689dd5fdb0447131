//! Extractors that turn bad input into problem documents naming the field,
//! instead of axum's plain-text rejections.

use crate::problem::{ApiError, problem_response};
use agentpost_core::{Ctx, Error};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// JSON body; errors name the offending field path.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status().as_u16();
            if status == 413 {
                problem_response(
                    413,
                    "payload-too-large",
                    "request body is larger than this route accepts (1 MiB; 140 MiB for sends and drafts)".into(),
                    None,
                    None,
                )
            } else {
                problem_response(
                    400,
                    "bad-request",
                    format!("could not read the request body: {e}"),
                    None,
                    None,
                )
            }
        })?;
        if bytes.is_empty() {
            // An empty body means "no fields", which lets optional-field
            // requests (suspend, rotate) omit it.
            return serde_json::from_slice(b"{}").map(ApiJson).map_err(|e| {
                problem_response(
                    422,
                    "validation",
                    format!("request body is required: {e}"),
                    None,
                    None,
                )
            });
        }
        if !is_json {
            return Err(problem_response(
                415,
                "unsupported-media-type",
                "send the body as JSON with Content-Type: application/json".into(),
                None,
                None,
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(ApiJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let field = if path == "." {
                    unknown_field(&inner.to_string())
                } else {
                    Some(path)
                };
                let status = if inner.is_syntax() || inner.is_eof() {
                    400
                } else {
                    422
                };
                let code = if status == 400 {
                    "bad-request"
                } else {
                    "validation"
                };
                problem_response(
                    status,
                    code,
                    format!("invalid JSON body: {inner}"),
                    field,
                    None,
                )
            })
    }
}

/// serde reports an unknown field at the parent path; pull its name out.
fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next().map(str::to_string)
}

/// Query string; errors name the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                problem_response(
                    400,
                    "bad-request",
                    format!("invalid query parameter: {}", e.into_inner()),
                    (path != ".").then_some(path),
                    None,
                )
            })
    }
}

/// The authenticated caller, put in place by the auth middleware.
pub struct Caller(pub Ctx);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Ctx>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| {
                ApiError(Error::Unauthenticated("credential required".into())).into_response()
            })
    }
}
