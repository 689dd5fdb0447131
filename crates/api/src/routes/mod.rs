//! Route handlers: thin, they parse, call the gate and format.

pub mod admin;
pub mod agents;
pub mod events;
pub mod messages;
pub mod nylas;
pub mod outbound;
pub mod system;
pub mod webhooks;
