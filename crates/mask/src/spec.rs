//! Masking rules as written in configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What to do with a sensitive value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Replace with `[LABEL]`.
    #[default]
    Redact,
    /// Keep part of it: `keep_last` characters, or the domain of an email.
    Partial,
    /// A stable keyed token, `[LABEL:0123456789abcdef]`: equal values give
    /// equal tokens, so a caller can still group and join.
    Hash,
    /// Remove the value (empty text, JSON null, SQL NULL).
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    #[serde(default)]
    pub action: ActionKind,
    /// With `partial`: how many trailing letters and digits stay visible.
    pub keep_last: Option<usize>,
    /// With `partial` on emails: keep the domain.
    #[serde(default)]
    pub keep_domain: bool,
    /// With `hash`: a token the caller sends back in a later HTTP request
    /// to the same target is swapped for the original on the way in, by
    /// the gateway only. (Not on PostgreSQL, where a swapped value would be
    /// SQL text the caller shapes: docs/security.md.)
    #[serde(default)]
    pub reversible: bool,
}

/// Structure-aware rules: JSON keys and paths, SQL columns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// JSON object keys, case-insensitive (`password`, `api_key`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// JSON paths: `$.users[*].ssn`, `$.items[0]['card']`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// SQL result columns: `ssn` or `users.ssn`, case-insensitive.
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub action: ActionKind,
    pub keep_last: Option<usize>,
    #[serde(default)]
    pub keep_domain: bool,
    #[serde(default)]
    pub reversible: bool,
}

/// A user-defined regex detector.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    pub name: String,
    pub regex: String,
    #[serde(default)]
    pub action: ActionKind,
    pub keep_last: Option<usize>,
}

/// A list of words (case-insensitive, whole words) to mask.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordList {
    pub name: String,
    pub words: Vec<String>,
    #[serde(default)]
    pub action: ActionKind,
}

/// When a body cannot be inspected (invalid JSON where JSON was declared,
/// an unknown content encoding): refuse, or mask it as plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Refuse,
    MaskAsText,
}

/// One set of masking rules, and whom it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    /// Shown in logs and `--explain` (default: rules[N]).
    pub name: Option<String>,
    /// Connections the rule applies to; `["*"]` (the default) for all.
    #[serde(default = "star")]
    pub connections: Vec<String>,
    /// Principals' groups it applies to; empty (the default) for everyone.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub on_error: OnError,
    /// Largest response body that is masked; larger ones are refused.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// HTTP content types passed without inspection (`image/png`,
    /// `image/*`). Every other type the masker cannot read is refused.
    #[serde(default)]
    pub pass_content_types: Vec<String>,
    /// PostgreSQL types (by name: `tsvector`, `geometry`) whose binary
    /// values pass without inspection; every other binary type the masker
    /// cannot read ends its statement with an error. Column rules still
    /// apply to them.
    #[serde(default)]
    pub pass_pg_types: Vec<String>,
    /// Built-in detectors to run: names, or `["all"]` (the default).
    #[serde(default = "all")]
    pub detectors: Vec<String>,
    /// The action for detector findings without their own.
    #[serde(default)]
    pub action: ActionKind,
    /// Per-detector actions: `card = { action = "partial", keep_last = 4 }`.
    #[serde(default)]
    pub actions: BTreeMap<String, ActionSpec>,
    #[serde(default)]
    pub fields: Vec<FieldRule>,
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
    #[serde(default)]
    pub words: Vec<WordList>,
}

fn all() -> Vec<String> {
    vec!["all".to_string()]
}

fn star() -> Vec<String> {
    vec!["*".to_string()]
}

fn default_max_body() -> usize {
    8 * 1024 * 1024
}

impl Default for MaskSpec {
    fn default() -> Self {
        Self {
            name: None,
            connections: star(),
            groups: Vec::new(),
            on_error: OnError::Refuse,
            max_body_bytes: default_max_body(),
            pass_content_types: Vec::new(),
            pass_pg_types: Vec::new(),
            detectors: all(),
            action: ActionKind::Redact,
            actions: BTreeMap::new(),
            fields: Vec::new(),
            custom: Vec::new(),
            words: Vec::new(),
        }
    }
}
