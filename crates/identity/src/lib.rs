//! Who is calling: gateway tokens, OIDC bearer JWTs and client
//! certificates. Every front turns what the caller presented into a
//! [`Credential`], and [`Authenticator`] turns it into a [`Principal`] or
//! an [`AuthError`]. Token lookups go through [`TokenStore`], which the
//! store crate implements.

mod authn;
pub mod oidc;
pub mod oidc_keys;
mod principal;
pub mod token;

pub use authn::{
    Authenticator, Credential, DelegateError, Delegated, LookupFuture, MAX_DELEGATION, Mint,
    MintFuture, RevokedFuture, TokenStore, unix_now,
};
pub use oidc::{IssuerSettings, OidcError};
pub use oidc_keys::OidcVerifier;
pub use principal::{
    AuthMethod, Namespace, Principal, PrincipalKind, Resource, delegated_subject, is_delegated,
    validate_namespace, validate_principal, validate_subject,
};
pub use token::{AuthError, TokenHash, TokenRecord};
