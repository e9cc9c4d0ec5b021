//! PostgreSQL at Layer 7.

pub mod classify;
pub mod frame;
pub mod messages;
