//! PostgreSQL at Layer 7. The front half ([`PgFront`]) speaks to callers:
//! TLS only, the gateway token as the password, the database name as the
//! connection. The upstream half ([`PgUpstream`]) holds the target's
//! credential. Between them every message passes the inspector chain.

pub mod bounds;
mod budget;
pub mod catalog;
mod checked;
pub mod classify;
mod copy_in;
pub mod doctor;
pub mod frame;
mod front;
mod held;
mod homed;
pub mod inspect;
pub mod io;
pub mod masking;
pub mod messages;
mod options;
pub mod preview;
pub mod recording;
mod relay;
mod statements;
mod upstream;

pub use front::{ALPN, PgFront, PgMetrics};
pub use upstream::{
    MAX_BACKEND_MESSAGE, Owner, PgUpstream, QueryOutcome, SetupError, UpstreamError,
    UpstreamSession, goodbye,
};
