//! Who is calling. Every front turns what the caller presented into a
//! [`Credential`], and identity turns a credential into a [`Principal`] or
//! an [`AuthError`]. This crate holds the pure parts: the principal model and
//! the gateway token format; lookups live with the store.

mod principal;
pub mod token;

pub use principal::{AuthMethod, Principal, PrincipalKind, validate_subject};
pub use token::{AuthError, TokenHash, TokenRecord};
