//! Route handlers: thin, they parse, call the gate and format.

pub mod admin;
pub mod agents;
pub mod nylas;
pub mod system;
