//! agentpost core: domain types and the one gate (`Service`) through which
//! every entry point acts. The store is private to this crate, so no
//! protocol crate can reach the data except through the gate.

pub mod address;
pub mod audit;
pub mod clock;
pub mod dkim;
pub mod error;
pub mod events;
pub mod ids;
pub mod secret;
pub mod service;
mod store;

pub use error::{Error, Result};
pub use service::*;
pub use store::{Dialect, StoreLocation, redact_url};
