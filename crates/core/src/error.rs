//! The one error type of the gate. Protocol crates turn it into their own
//! answer (RFC 9457 problem JSON, SMTP reply, CLI message); nothing here
//! knows about HTTP beyond a suggested status.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Well-formed request, invalid value: names the field (422).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Malformed request (400).
    #[error("{0}")]
    BadRequest(String),
    /// No valid credential (401). Never says which part was wrong.
    #[error("{0}")]
    Unauthenticated(String),
    /// The principal can see the object but may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Absent, or outside the caller's data boundary (404).
    #[error("{0}")]
    NotFound(String),
    /// State conflict with a stable code (409).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// A limit was hit; retry after the given seconds (429).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// Our fault. The message is logged, never shown with internals.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(what: impl fmt::Display) -> Self {
        Error::NotFound(format!("{what} not found"))
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn conflict_on(code: &'static str, field: &str, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    /// Stable machine-readable slug; the problem `type` is built from it.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid { .. } => "validation",
            Error::BadRequest(_) => "bad-request",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not-found",
            Error::Conflict { code, .. } => code,
            Error::RateLimited { .. } => "rate-limited",
            Error::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Error::Invalid { .. } => 422,
            Error::BadRequest(_) => 400,
            Error::Unauthenticated(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::Conflict { .. } => 409,
            Error::RateLimited { .. } => 429,
            Error::Internal(_) => 500,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Internal(format!("database: {e}"))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Internal(format!("migration: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(format!("io: {e}"))
    }
}

/// True when a database error is a unique-constraint violation (both backends).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}
