//! `[console]`: the web console under `/ui/`. People sign in through the
//! `[oauth]` provider client (or, on a quickstart, a one-time link); what
//! they see is what the API lets them see.

use std::time::Duration;

use serde::Deserialize;

use crate::{Invalid, duration, invalid};

#[derive(Debug, Clone, PartialEq)]
pub struct Console {
    /// Members see every session and the audit log, and may end sessions.
    /// Everyone else sees their own sessions and their agents'.
    pub admin_groups: Vec<String>,
    /// How long a console sign-in lasts.
    pub session_ttl: Duration,
}

impl Default for Console {
    fn default() -> Self {
        Self {
            admin_groups: vec!["admins".into()],
            session_ttl: Duration::from_secs(8 * 3600),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsole {
    admin_groups: Option<Vec<String>>,
    session_ttl: Option<String>,
}

impl RawConsole {
    pub(crate) fn validate(&self) -> Result<Console, Invalid> {
        let d = Console::default();
        let session_ttl = match &self.session_ttl {
            None => d.session_ttl,
            Some(t) => duration("console.session_ttl", t)?,
        };
        if session_ttl < Duration::from_secs(60) || session_ttl > Duration::from_secs(24 * 3600) {
            return Err(invalid("console.session_ttl", "must be between 1m and 24h"));
        }
        let admin_groups = self.admin_groups.clone().unwrap_or(d.admin_groups);
        if admin_groups.iter().any(String::is_empty) {
            return Err(invalid(
                "console.admin_groups",
                "group names must not be empty",
            ));
        }
        Ok(Console {
            admin_groups,
            session_ttl,
        })
    }
}
