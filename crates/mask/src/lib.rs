//! Masking: find sensitive values in text, JSON and table cells, and
//! replace them. Pure (no I/O), compiled once, one scan per input to learn
//! which detectors can match before any of them runs.

mod detectors;
mod json;
mod metrics;
mod prefilter;
mod spec;
mod stream;
pub mod validate;

use std::borrow::Cow;
use std::collections::BTreeMap;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Regex, RegexSet};

pub use detectors::BUILTINS;
pub use json::JsonPath;
pub use metrics::MaskMetrics;
pub use spec::{ActionKind, ActionSpec, CustomDetector, FieldRule, MaskSpec, OnError, WordList};

/// The masking rules in force, each compiled, chosen per connection and
/// principal group.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<std::sync::Arc<Rule>>,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub connections: Vec<String>,
    pub groups: Vec<String>,
    pub on_error: OnError,
    pub max_body_bytes: usize,
    /// Content types passed without inspection (lower-case; `type/*`).
    pub pass_content_types: Vec<String>,
    /// PostgreSQL type names whose binary values pass uninspected.
    pub pass_pg_types: Vec<String>,
    pub masker: Masker,
}

impl Rule {
    /// Whether a response of content type `essence` (lower-case, no
    /// parameters) may pass without inspection.
    pub fn passes_content_type(&self, essence: &str) -> bool {
        self.pass_content_types
            .iter()
            .any(|p| match p.strip_suffix("/*") {
                Some(major) => essence.split_once('/').is_some_and(|(m, _)| m == major),
                None => p == essence,
            })
    }
}

impl RuleSet {
    /// Compile every rule; errors name `rules[N].…`.
    pub fn new(specs: &[MaskSpec], hash_key: Option<&[u8]>) -> Result<Self, MaskError> {
        if !specs.is_empty() {
            validate::warm_phone_metadata();
        }
        let rules = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let masker = Masker::new(s, hash_key).map_err(|e| match e {
                    MaskError::Spec { key, message } => {
                        spec_err(format!("rules[{i}].{key}"), message)
                    }
                    other => other,
                })?;
                Ok(std::sync::Arc::new(Rule {
                    name: s.name.clone().unwrap_or_else(|| format!("rules[{i}]")),
                    connections: s.connections.clone(),
                    groups: s.groups.clone(),
                    on_error: s.on_error,
                    max_body_bytes: s.max_body_bytes,
                    pass_content_types: s
                        .pass_content_types
                        .iter()
                        .map(|t| t.trim().to_ascii_lowercase())
                        .collect(),
                    pass_pg_types: s.pass_pg_types.clone(),
                    masker,
                }))
            })
            .collect::<Result<_, MaskError>>()?;
        Ok(Self { rules })
    }

    /// Every rule that names `connection`, in the order they are tried
    /// (the first whose groups match a principal applies).
    pub fn for_connection<'a>(&'a self, connection: &'a str) -> impl Iterator<Item = &'a Rule> {
        self.rules
            .iter()
            .filter(move |r| r.connections.iter().any(|c| c == "*" || c == connection))
            .map(|r| r.as_ref())
    }

    /// Every rule for `connection`, whoever it applies to.
    pub fn rules_for(&self, connection: &str) -> Vec<std::sync::Arc<Rule>> {
        self.rules
            .iter()
            .filter(|r| r.connections.iter().any(|c| c == "*" || c == connection))
            .cloned()
            .collect()
    }

    /// The first rule for `connection` that applies to a principal in
    /// `groups`.
    pub fn select(&self, connection: &str, groups: &[String]) -> Option<&std::sync::Arc<Rule>> {
        self.rules.iter().find(|r| {
            r.connections.iter().any(|c| c == "*" || c == connection)
                && (r.groups.is_empty() || r.groups.iter().any(|g| groups.contains(g)))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("`{key}`: {message}")]
    Spec { key: String, message: String },
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
}

fn spec_err(key: impl Into<String>, message: impl Into<String>) -> MaskError {
    MaskError::Spec {
        key: key.into(),
        message: message.into(),
    }
}

/// One sensitive value found in a text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub detector: String,
    pub start: usize,
    pub end: usize,
    pub action: &'static str,
}

/// How often each detector fired (for metrics; never values).
pub type Stats = BTreeMap<String, u64>;

#[derive(Debug, Clone)]
struct Action {
    kind: ActionKind,
    keep_last: Option<usize>,
    keep_domain: bool,
    reversible: bool,
}

/// What a finding joined with another is masked with when its own action
/// is partial ([`Masker::spans`]).
static REDACT_JOINED: Action = Action {
    kind: ActionKind::Redact,
    keep_last: None,
    keep_domain: false,
    reversible: false,
};

impl Action {
    fn from_spec(a: &ActionSpec) -> Self {
        Self {
            kind: a.action,
            keep_last: a.keep_last,
            keep_domain: a.keep_domain,
            reversible: a.reversible && a.action == ActionKind::Hash,
        }
    }

    fn name(&self) -> &'static str {
        match self.kind {
            ActionKind::Redact => "redact",
            ActionKind::Partial => "partial",
            ActionKind::Hash => "hash",
            ActionKind::Drop => "drop",
        }
    }
}

struct Detector {
    name: String,
    label: String,
    regex: Regex,
    group: usize,
    check: Option<fn(&str) -> bool>,
    weak: bool,
    /// A shape a longer run of groups can hold by chance (four dotted
    /// numbers inside five): a weak match that covers it whole is not
    /// cut short by it ([`Masker::spans`]).
    inside_runs: bool,
    /// Ends told from digits, not words ([`detectors::Builtin::digits_apart`]).
    digits_apart: bool,
    /// Ends refused for glued characters ([`detectors::Builtin::glued_end`]).
    glued_end: Option<fn(&str) -> Option<usize>>,
    /// The longest match of `regex` in bytes (`None`: no bound).
    reach: Option<usize>,
    action: Action,
}

struct Words {
    name: String,
    label: String,
    matcher: AhoCorasick,
    /// The longest word in bytes.
    reach: usize,
    action: Action,
}

/// The longest match of `pattern` in bytes, if it has a bound.
fn reach(pattern: &str) -> Option<usize> {
    regex_syntax::Parser::new()
        .parse(pattern)
        .ok()?
        .properties()
        .maximum_len()
}

pub(crate) struct Field {
    keys: Vec<String>,
    paths: Vec<JsonPath>,
    columns: Vec<String>,
    action: Action,
}

/// A compiled rule set.
pub struct Masker {
    detectors: Vec<Detector>,
    set: RegexSet,
    /// Custom patterns are in `set`: the built-ins' first look
    /// ([`prefilter`]) does not stand for them.
    has_custom: bool,
    words: Vec<Words>,
    fields: Vec<Field>,
    hash_key: aws_lc_rs::hmac::Key,
    /// JSON may be masked in one pass over its bytes ([`stream`]): no path
    /// rules.
    streamable: bool,
    /// The names key and path rules look for (keys, and the key a path
    /// ends in), matched ASCII case-insensitively: `None` without such
    /// rules.
    key_names: Option<AhoCorasick>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field(
                "detectors",
                &self.detectors.iter().map(|d| &d.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The outcome for one SQL cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Keep,
    Replace(String),
    Null,
}

/// The built-in detectors' names, each once (`phone` has two sources).
pub fn builtin_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for b in BUILTINS {
        if !names.contains(&b.name) {
            names.push(b.name);
        }
    }
    names
}

impl Masker {
    /// Compile `spec`. `hash_key` keys the `hash` action's tokens; without
    /// one, a random key is drawn (tokens then differ per process).
    pub fn new(spec: &MaskSpec, hash_key: Option<&[u8]>) -> Result<Self, MaskError> {
        let all = spec.detectors.iter().any(|d| d == "all");
        for d in &spec.detectors {
            if d != "all" && !BUILTINS.iter().any(|b| b.name == d) {
                return Err(spec_err(
                    "detectors",
                    format!(
                        "unknown detector {d:?}; valid: all, {}",
                        builtin_names().join(", ")
                    ),
                ));
            }
        }
        for k in spec.actions.keys() {
            let known =
                BUILTINS.iter().any(|b| b.name == k) || spec.custom.iter().any(|c| &c.name == k);
            if !known {
                return Err(spec_err(format!("actions.{k}"), "no detector of that name"));
            }
        }
        let default = Action {
            kind: spec.action,
            keep_last: None,
            keep_domain: false,
            reversible: false,
        };
        let mut detectors = Vec::new();
        for b in BUILTINS
            .iter()
            .filter(|b| all || spec.detectors.iter().any(|d| d == b.name))
        {
            let regex = Regex::new(b.pattern).map_err(|e| spec_err(b.name, e.to_string()))?;
            detectors.push(Detector {
                name: b.name.to_string(),
                label: b.label.to_string(),
                regex,
                group: b.group,
                check: b.check,
                weak: b.weak,
                inside_runs: b.name == "ipv4",
                digits_apart: b.digits_apart,
                glued_end: b.glued_end,
                reach: reach(b.pattern),
                action: spec
                    .actions
                    .get(b.name)
                    .map(Action::from_spec)
                    .unwrap_or_else(|| default.clone()),
            });
        }
        for (i, c) in spec.custom.iter().enumerate() {
            let regex = Regex::new(&c.regex)
                .map_err(|e| spec_err(format!("custom[{i}].regex"), e.to_string()))?;
            if regex.is_match("") {
                return Err(spec_err(
                    format!("custom[{i}].regex"),
                    "matches the empty string",
                ));
            }
            detectors.push(Detector {
                name: c.name.clone(),
                label: c.name.to_ascii_uppercase(),
                regex,
                group: 0,
                check: None,
                weak: false,
                inside_runs: false,
                digits_apart: false,
                glued_end: None,
                reach: reach(&c.regex),
                action: spec
                    .actions
                    .get(&c.name)
                    .map(Action::from_spec)
                    .unwrap_or(Action {
                        kind: c.action,
                        keep_last: c.keep_last,
                        keep_domain: false,
                        reversible: false,
                    }),
            });
        }
        let set = RegexSet::new(detectors.iter().map(|d| d.regex.as_str()))
            .map_err(|e| spec_err("detectors", e.to_string()))?;

        let mut words = Vec::new();
        for (i, w) in spec.words.iter().enumerate() {
            if w.words.iter().any(|x| x.trim().is_empty()) {
                return Err(spec_err(format!("words[{i}].words"), "empty word"));
            }
            let matcher = AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .build(&w.words)
                .map_err(|e| spec_err(format!("words[{i}]"), e.to_string()))?;
            words.push(Words {
                name: w.name.clone(),
                label: w.name.to_ascii_uppercase(),
                matcher,
                reach: w.words.iter().map(String::len).max().unwrap_or(0),
                action: Action {
                    kind: w.action,
                    keep_last: None,
                    keep_domain: false,
                    reversible: false,
                },
            });
        }
        let mut fields = Vec::new();
        for (i, f) in spec.fields.iter().enumerate() {
            let paths = f
                .paths
                .iter()
                .map(|p| JsonPath::parse(p).map_err(|e| spec_err(format!("fields[{i}].paths"), e)))
                .collect::<Result<_, _>>()?;
            if f.keys.is_empty() && f.paths.is_empty() && f.columns.is_empty() {
                return Err(spec_err(
                    format!("fields[{i}]"),
                    "name at least one of keys, paths, columns",
                ));
            }
            fields.push(Field {
                keys: f.keys.iter().map(|k| k.to_ascii_lowercase()).collect(),
                paths,
                columns: f.columns.iter().map(|c| c.to_ascii_lowercase()).collect(),
                action: Action {
                    kind: f.action,
                    keep_last: f.keep_last,
                    keep_domain: f.keep_domain,
                    reversible: f.reversible && f.action == ActionKind::Hash,
                },
            });
        }
        let key = match hash_key {
            Some(k) => aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, k),
            None => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                aws_lc_rs::hmac::Key::generate(aws_lc_rs::hmac::HMAC_SHA256, &rng)
                    .map_err(|_| spec_err("hash_key", "no randomness for a hash key"))?
            }
        };
        let streamable = fields.iter().all(|f| f.paths.is_empty());
        let key_names = key_names(&fields)?;
        Ok(Self {
            has_custom: !spec.custom.is_empty(),
            detectors,
            set,
            words,
            fields,
            hash_key: key,
            streamable,
            key_names,
        })
    }

    /// Whether any field rule names JSON keys or paths.
    pub fn has_key_rules(&self) -> bool {
        self.key_names.is_some()
    }

    /// Whether `text` holds a name a key or path rule looks for (ASCII
    /// case-insensitive, anywhere): in a body that cannot be read as JSON,
    /// the value may sit beside it in any shape (XML, JSONP, YAML).
    /// A name counts as a whole word (not inside `valid` for a key `id`),
    /// as a key rule names a whole key.
    pub fn names_a_key(&self, text: &str) -> bool {
        let Some(names) = &self.key_names else {
            return false;
        };
        let b = text.as_bytes();
        let word = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        names.find_overlapping_iter(b).any(|m| {
            !word(m.start().checked_sub(1).and_then(|i| b.get(i))) && !word(b.get(m.end()))
        })
    }

    /// The value of a `key=value` pair (a form) as a key rule naming `key`
    /// writes it, counted; `None` when no key rule names `key`.
    pub fn mask_keyed_in(
        &self,
        key: &str,
        value: &str,
        stats: &mut Stats,
        vault: &mut Option<&mut Vault>,
    ) -> Option<String> {
        let f = self
            .fields
            .iter()
            .find(|f| f.keys.iter().any(|k| k.eq_ignore_ascii_case(key)))?;
        let label = key.to_ascii_uppercase();
        *stats
            .entry(format!("field:{}", label.to_ascii_lowercase()))
            .or_default() += 1;
        Some(match f.action.kind {
            ActionKind::Drop => String::new(),
            _ => self.apply_in(&f.action, &label, value, vault),
        })
    }

    /// Every finding in `text`, non-overlapping, in order.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        self.spans(text)
            .into_iter()
            .map(|s| Finding {
                detector: s.name.to_string(),
                start: s.start,
                end: s.end,
                action: s.action.name(),
            })
            .collect()
    }

    /// Whether any detector or word list may match in `text` (a cheap
    /// first look: false means [`Self::mask_str`] would change nothing).
    pub fn may_match(&self, text: &str) -> bool {
        self.may_match_looked(text, self.set_may_match(text))
    }

    /// [`Self::may_match`] with the set's first look already taken:
    /// `set_may` is what [`Self::set_may_match`] says of `text`, or more
    /// (true where it would be false only costs time).
    pub(crate) fn may_match_looked(&self, text: &str, set_may: bool) -> bool {
        self.may_match_scanned(text, set_may, true)
    }

    /// [`Self::may_match_looked`], where the caller's own scan of `text`
    /// says whether it holds a byte a spelling starts with (`spelled`:
    /// [`starts_spelling`] of any byte, or more).
    ///
    /// Inlined, with the answer the flags alone give first: the JSON pass
    /// asks this of every string, most answers are that "no", and as a
    /// call it was 5% of the pass (`perf`; +8% throughput on JSON with few
    /// hits, measured against the call, 2026-12-05).
    #[inline]
    pub(crate) fn may_match_scanned(&self, text: &str, set_may: bool, spelled: bool) -> bool {
        if !self.may_match_open(set_may, spelled) {
            return false;
        }
        if spelled && has_other_spelling(text) {
            // Read plainly by [`Self::spans`]: its answer.
            return true;
        }
        (set_may && self.set.is_match(text)) || self.words.iter().any(|w| w.matcher.is_match(text))
    }

    /// Whether [`Self::may_match_scanned`] needs the text at all: false
    /// when the flags alone say no.
    #[inline]
    pub(crate) fn may_match_open(&self, set_may: bool, spelled: bool) -> bool {
        spelled || set_may || !self.words.is_empty()
    }

    /// Whether the set's first look is ours to take: without custom
    /// patterns, the built-ins' condition ([`prefilter::FirstLook`]).
    pub(crate) fn has_custom(&self) -> bool {
        self.has_custom
    }

    /// False only when no detector in the set can match `text`: the
    /// built-ins' byte-level condition, unless custom patterns are in it.
    fn set_may_match(&self, text: &str) -> bool {
        self.has_custom || prefilter::builtins_may_match(text)
    }

    /// The findings in `text`, left to right, non-overlapping. Each source
    /// (detector or word list) keeps its next candidate at or after the
    /// current position; the earliest (then longest, then strongest) wins,
    /// and sources whose candidate it overlapped search again after it.
    /// Masking the output again therefore finds nothing new: every value
    /// is looked for in the same context either way.
    ///
    /// Text is read as it spells its characters ([`plainly`]): spaces
    /// number formats put between digit groups as ASCII spaces, and
    /// percent-escapes and HTML character references of ASCII as those
    /// characters. A review passed card and phone numbers grouped with
    /// no-break spaces, and `ada.lovelace%40example.com` and
    /// `ada&#64;example.com` in bodies. A finding covers the value as
    /// spelled.
    fn spans<'a>(&'a self, text: &str) -> Vec<Span<'a>> {
        if !has_other_spelling(text) {
            return self.spans_looked(text, self.set_may_match(text));
        }
        let (plain, at) = plainly(text);
        let mut spans = self.spans_looked(&plain, self.set_may_match(&plain));
        for s in &mut spans {
            s.start = at[s.start];
            s.end = at[s.end];
        }
        spans
    }

    /// Whether the detectors find anything in `text` when the set runs
    /// whatever the first look says: the first look's tests ask this.
    #[cfg(test)]
    pub(crate) fn finds_without_first_look(&self, text: &str) -> bool {
        !self.spans_looked(text, true).is_empty()
    }

    /// [`Self::spans`], the set run only where `set_may` says so.
    fn spans_looked<'a>(&'a self, text: &str, set_may: bool) -> Vec<Span<'a>> {
        let matched = set_may.then(|| self.set.matches(text));
        let mut sources: Vec<Cursor> = matched
            .into_iter()
            .flatten()
            .map(Source::Detector)
            .chain((0..self.words.len()).map(Source::Words))
            .map(|source| Cursor {
                source,
                next: None,
                done: false,
            })
            .collect();
        let mut out: Vec<Span<'a>> = Vec::new();
        let mut pos = 0;
        loop {
            for src in sources.iter_mut() {
                if !src.done && src.next.is_none_or(|(s, _)| s < pos) {
                    src.next = self.next_from(src.source, text, pos);
                    src.done = src.next.is_none();
                }
            }
            let best = sources
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.next.map(|(st, en)| (i, st, en)))
                .min_by_key(|&(i, st, en)| {
                    (st, std::cmp::Reverse(en), self.is_weak(sources[i].source))
                });
            let Some((i, start, mut end)) = best else {
                break;
            };
            let source = sources[i].source;
            if self.is_weak(source) {
                // A weak match gives way to a strong one starting inside it,
                // unless that one is a shape a longer run holds by chance
                // and lies wholly inside the weak match, which is valid as
                // a whole: a phone number written with dots (`+33.1.53.59.
                // 90.11`) gave way to the address in its middle and left
                // its last digits visible (review, 2026-12-05).
                // Those it covers whole are left out before the earliest
                // is taken: an address inside a phone number hid a card
                // starting after it (`01.53.59.90.41 11 1111 1111 1111`,
                // review, 2026-12-05).
                let strong_start = sources
                    .iter()
                    .filter(|s| !self.is_weak(s.source))
                    .filter_map(|s| s.next.map(|(st, en)| (s.source, st, en)))
                    .filter(|&(_, st, _)| st > start && st < end)
                    .filter(|&(s, _, en)| !(en <= end && self.inside_runs(s)))
                    .map(|(_, st, _)| st)
                    .min();
                if let Some(cut) = strong_start {
                    let trimmed = text[..cut].trim_end_matches([' ', '-', '.']).len();
                    let Source::Detector(d) = source else {
                        unreachable!("words are never weak")
                    };
                    match self.detectors[d]
                        .check
                        .and_then(|c| checked_end(text, start, trimmed, c, &self.detectors[d]))
                    {
                        Some(e) if e > start => end = e,
                        _ => {
                            // Not a value on its own: look again after it.
                            sources[i].next =
                                self.next_from(source, text, next_group(text, start, end));
                            sources[i].done = sources[i].next.is_none();
                            continue;
                        }
                    }
                }
            }
            // A value starting inside this finding and ending after it is
            // masked with it ([`Self::joined_end`]), a phone number's too
            // (a decoy SSN at its start hid a real one inside it, and two
            // phone patterns' numbers overlapped: review, 2026-12-05). A
            // joined finding is redacted whole: a partial action would show
            // the last of it, the other value's end.
            let joined = self.joined_end(&sources, source, text, start, end);
            let mut span = self.span(source, start, joined);
            if joined > end && span.action.kind == ActionKind::Partial {
                span.action = &REDACT_JOINED;
            }
            out.push(span);
            pos = joined;
        }
        out
    }

    /// Where a strong finding at `start..end` ends once every value that
    /// starts inside it and ends after it is joined to it: whatever the
    /// finding covers is lost to the other's search, which would start
    /// again at its end and leave the rest in the clear. A review chose an
    /// IBAN's check digits (1 in 97) so that the IBAN shape took the first
    /// group of a card after it (`QQ31 ZZZZ ZZZZ ZZZZ 4111 1111 1111
    /// 1111`), and put a decoy value inside a secret before a card that
    /// began inside it too (`password=4111-1111-1111-1111-5555 5555 5555
    /// 4444`), 2026-12-05.
    ///
    /// Every source with a candidate inside the finding (its own from its
    /// second group) is searched on from there, group by group, each as
    /// far as its longest match reaches past the end ([`Detector::reach`];
    /// a pattern without a bound, in the whole text), and each search goes
    /// on where the last stopped when the end grows: linear in the
    /// finding's groups (restarting made a chain of cards quadratic).
    fn joined_end(
        &self,
        sources: &[Cursor],
        source: Source,
        text: &str,
        start: usize,
        mut end: usize,
    ) -> usize {
        // Each source's candidate, wherever it is: one past the end is
        // inside once the end grows past it (an address chain joined up to
        // a card's start: `+33.1.53.59.90.41 11 1111 1111 1111`).
        // Inside a weak finding (a phone number), a weak source's candidate
        // was chosen by a rule that does not hold there (the middle of a
        // run): it is searched from the finding's second group, as the
        // finding's own source is. (Inside a strong one, a phone number's
        // rules stand: read from a card's last groups, they joined digits
        // after it, `4111 1111 1111 1111-01`.)
        let weak = self.is_weak(source);
        let mut at: Vec<(Source, usize)> = sources
            .iter()
            .map(|s| {
                if s.source == source || (weak && self.is_weak(s.source)) {
                    (s.source, next_group(text, start, end))
                } else {
                    (s.source, s.next.map_or(usize::MAX, |(st, _)| st))
                }
            })
            .collect();
        loop {
            let mut grew = false;
            for (src, q) in &mut at {
                let bounded = self.reach(*src).is_some();
                while *q < end {
                    match self.next_near(*src, text, *q, end, weak) {
                        Some((st, en)) if st < end => {
                            if en > end {
                                end = en;
                                grew = true;
                            }
                            // A pattern without a bound steps from match to
                            // match: group by group, each search read on to
                            // the finding's end (`pwd=a-` repeated was
                            // quadratic: review). One with a bound steps by
                            // groups, each search as long as its reach.
                            *q = if bounded {
                                next_group(text, st, en)
                            } else {
                                en.max(next_group(text, st, en))
                            };
                        }
                        // Looked at again should the end grow past it.
                        Some((st, _)) => *q = st,
                        // None starts before the end (one that does fits
                        // in the window); one starting after it may not
                        // have, so the end is where to look again. Without
                        // a bound the whole text was read: none at all.
                        None => *q = if bounded { end } else { text.len() },
                    }
                }
            }
            if !grew {
                return end;
            }
        }
    }

    /// [`Self::next_from`] in the text up to where a match starting before
    /// `end` can reach (the whole text for a source without a bound), and
    /// `inside` a weak finding as [`Self::next_from_in`] reads it. A match
    /// that ends at that limit may have been cut by it, and is read again
    /// in the whole text.
    fn next_near(
        &self,
        source: Source,
        text: &str,
        pos: usize,
        end: usize,
        inside: bool,
    ) -> Option<(usize, usize)> {
        let Some(reach) = self.reach(source) else {
            return self.next_from_in(source, text, pos, inside);
        };
        // A byte more for what a match's end looks at (`\b`).
        let mut limit = text.len().min(end.saturating_add(reach).saturating_add(1));
        while !text.is_char_boundary(limit) {
            limit += 1;
        }
        match self.next_from_in(source, &text[..limit], pos, inside) {
            Some((st, en)) if en == limit && limit < text.len() => {
                self.next_from_in(source, text, st, inside)
            }
            found => found,
        }
    }

    /// The longest match of a source, if it has a bound.
    fn reach(&self, source: Source) -> Option<usize> {
        match source {
            Source::Detector(d) => self.detectors[d].reach,
            Source::Words(w) => Some(self.words[w].reach),
        }
    }

    fn is_weak(&self, s: Source) -> bool {
        matches!(s, Source::Detector(d) if self.detectors[d].weak)
    }

    fn inside_runs(&self, s: Source) -> bool {
        matches!(s, Source::Detector(d) if self.detectors[d].inside_runs)
    }

    fn span(&self, s: Source, start: usize, end: usize) -> Span<'_> {
        match s {
            Source::Detector(d) => Span::of(&self.detectors[d], start, end),
            Source::Words(w) => Span {
                name: &self.words[w].name,
                label: &self.words[w].label,
                start,
                end,
                action: &self.words[w].action,
            },
        }
    }

    /// The next valid finding of one source starting at or after `pos`.
    fn next_from(&self, s: Source, text: &str, pos: usize) -> Option<(usize, usize)> {
        self.next_from_in(s, text, pos, false)
    }

    /// [`Self::next_from`], `inside` a finding ([`Self::joined_end`]): a
    /// weak match there is not the middle of a run of digit groups, the
    /// run being the finding (`0044 0049 30 56789567`: the number after
    /// the chosen prefix was taken for the rest of a run, and showed,
    /// review, 2026-12-05).
    fn next_from_in(
        &self,
        s: Source,
        text: &str,
        mut pos: usize,
        inside: bool,
    ) -> Option<(usize, usize)> {
        match s {
            Source::Words(w) => {
                let words = &self.words[w];
                let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric() && c != '_');
                while pos <= text.len() {
                    let m = words
                        .matcher
                        .find(aho_corasick::Input::new(text).range(pos..))?;
                    if boundary(text[..m.start()].chars().next_back())
                        && boundary(text[m.end()..].chars().next())
                    {
                        return Some((m.start(), m.end()));
                    }
                    pos = m.start() + 1;
                    while pos < text.len() && !text.is_char_boundary(pos) {
                        pos += 1;
                    }
                }
                None
            }
            Source::Detector(i) => {
                let d = &self.detectors[i];
                let b = text.as_bytes();
                while pos <= text.len() {
                    if d.group > 0 {
                        let c = d.regex.captures_at(text, pos)?;
                        let whole = c.get(0)?;
                        if let Some(m) = c.get(d.group).filter(|m| !m.is_empty()) {
                            let (mut st, mut en) = (m.start(), m.end());
                            let v = m.as_str();
                            // Keep quotes around a quoted value.
                            if v.len() >= 2 && (v.starts_with('"') || v.starts_with('\'')) {
                                st += 1;
                                en -= 1;
                            }
                            if d.check.is_none_or(|check| check(&text[st..en]))
                                && !self.own_tokens(&text[st..en])
                                && !in_token(text, whole.start())
                            {
                                return Some((st, en));
                            }
                        }
                        pos = whole.end().max(whole.start() + 1);
                        continue;
                    }
                    let m = d.regex.find_at(text, pos)?;
                    // A value told from digits does not start inside a
                    // number: none starts before the run's end.
                    if d.digits_apart && m.start() > 0 && b[m.start() - 1].is_ascii_digit() {
                        pos = b[m.start()..]
                            .iter()
                            .position(|c| !c.is_ascii_digit())
                            .map_or(text.len() + 1, |p| m.start() + p);
                        continue;
                    }
                    // A custom pattern may match nothing in some context
                    // (`x?\b`): no value, and no progress; look further on.
                    if m.is_empty() {
                        pos = m.end() + text[m.end()..].chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    // In the middle of a longer run of digit groups (an
                    // account number, a near-miss IBAN) a weak pattern is not
                    // a value. A mask token (`…]`) counts as the value it
                    // replaced, so masking twice sees the same context.
                    // A lone `1` before it is NANP's country code, not a
                    // run (a review passed `1 212 555 0123` unmasked); after
                    // a letter too (`x1 415 555 0132` passed) when what
                    // follows is NANP's 3-3-4 (`page1 8983 320 0430` is
                    // not a phone: review).
                    let nanp = m.start() >= 2
                        && b[m.start() - 2] == b'1'
                        && (m.start() == 2
                            || !b[m.start() - 3].is_ascii_alphanumeric()
                            || (b[m.start() - 3].is_ascii_alphabetic() && nanp_shaped(m.as_str())));
                    // A match grouped otherwise than by spaces and dashes
                    // (`0049/30/1234567`, `415/555-0132`) is not the rest of
                    // a run that was: `qty 2 0049/30/1234567` and `10:30
                    // 415/555-0132` passed (review, 2026-12-05).
                    let regrouped = m.as_str().contains(['/', '.', '(']);
                    let mid_run = d.weak
                        && !inside
                        && m.start() >= 2
                        && b[m.start()].is_ascii_digit()
                        && matches!(b[m.start() - 1], b' ' | b'-')
                        && (b[m.start() - 2].is_ascii_digit() || b[m.start() - 2] == b']')
                        && !nanp
                        && !regrouped
                        && !stamp_ends_at(b, m.start() - 1);
                    if !mid_run {
                        let end = match d.check {
                            None => Some(m.end()),
                            Some(check) => checked_end(text, m.start(), m.end(), check, d),
                        };
                        if let Some(e) = end {
                            return Some((m.start(), e));
                        }
                    }
                    // A rejected match may hide a real one that starts at
                    // its next group: resume there, not after it.
                    pos = next_group(text, m.start(), m.end());
                }
                None
            }
        }
    }

    /// Mask every finding in `text`; counts go to `stats`.
    pub fn mask_str<'t>(&self, text: &'t str, stats: &mut Stats) -> Cow<'t, str> {
        self.mask_str_in(text, stats, &mut None)
    }

    /// Whether `v` is one or more of this masker's tokens and nothing else
    /// (`[PHONE][IBAN]`, `[SECRET:5980346acc03c77f]`, a key rule's
    /// `"api_key":"[API_KEY]"` written back into a string): a value masked
    /// already, which masking again would change (review, 2026-12-06). A
    /// redacted token's label must be one this masker writes: a caller's
    /// `password=[HUNTER]` is a value.
    fn own_tokens(&self, v: &str) -> bool {
        let own = |label: &str| {
            self.detectors.iter().any(|d| d.label == label)
                || self.words.iter().any(|w| w.label == label)
                || self
                    .fields
                    .iter()
                    .any(|f| f.keys.iter().any(|k| k.eq_ignore_ascii_case(label)))
        };
        let mut rest = v;
        while rest.starts_with('[') {
            if let Some(m) = token_pattern().find(rest).filter(|m| m.start() == 0) {
                rest = &rest[m.end()..];
                continue;
            }
            let Some(close) = rest.find(']') else {
                return false;
            };
            if !own(&rest[1..close]) {
                return false;
            }
            rest = &rest[close + 1..];
        }
        rest.is_empty() && !v.is_empty()
    }

    /// Whether any action issues reversible tokens.
    pub fn has_reversible(&self) -> bool {
        self.detectors.iter().any(|d| d.action.reversible)
            || self.fields.iter().any(|f| f.action.reversible)
    }

    /// [`Self::mask_str`], remembering reversible tokens in `vault`.
    pub fn mask_str_in<'t>(
        &self,
        text: &'t str,
        stats: &mut Stats,
        vault: &mut Option<&mut Vault>,
    ) -> Cow<'t, str> {
        let spans = self.spans(text);
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for s in &spans {
            out.push_str(&text[at..s.start]);
            out.push_str(&self.apply_in(s.action, s.label, &text[s.start..s.end], vault));
            *stats.entry(s.name.to_string()).or_default() += 1;
            at = s.end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    /// The replacement for `value` under `action`, noting a reversible
    /// token in `vault`.
    fn apply_in(
        &self,
        action: &Action,
        label: &str,
        value: &str,
        vault: &mut Option<&mut Vault>,
    ) -> String {
        let out = self.apply(action, label, value);
        if action.reversible
            && let Some(v) = vault.as_deref_mut()
        {
            v.remember(&out, value);
        }
        out
    }

    /// The replacement for `value` under `action`.
    fn apply(&self, action: &Action, label: &str, value: &str) -> String {
        match action.kind {
            ActionKind::Redact => format!("[{label}]"),
            ActionKind::Drop => String::new(),
            ActionKind::Hash => {
                let tag =
                    aws_lc_rs::hmac::sign(&self.hash_key, format!("{label}\0{value}").as_bytes());
                format!("[{label}:{}]", hex::encode(&tag.as_ref()[..8]))
            }
            ActionKind::Partial => {
                // The full-width `＠` too (review: a spelled address lost
                // its domain to the fallback below).
                if action.keep_domain
                    && let Some(at) = value.rfind(['@', '＠'])
                {
                    return format!("***{}", &value[at..]);
                }
                let keep = action.keep_last.unwrap_or(4);
                let total = value.chars().filter(|c| c.is_alphanumeric()).count();
                let mut seen = 0;
                value
                    .chars()
                    .map(|c| {
                        if c.is_alphanumeric() {
                            seen += 1;
                            if seen + keep > total { c } else { '*' }
                        } else {
                            c
                        }
                    })
                    .collect()
            }
        }
    }

    /// The rule for a SQL column (`name` or `table.name`), if one names it.
    fn column_rule(&self, column: &str, table: Option<&str>) -> Option<&Action> {
        let col = column.to_ascii_lowercase();
        let qualified = table.map(|t| format!("{}.{col}", t.to_ascii_lowercase()));
        self.fields
            .iter()
            .find(|f| {
                f.columns
                    .iter()
                    .any(|c| *c == col || qualified.as_deref() == Some(c.as_str()))
            })
            .map(|f| &f.action)
    }

    /// The column part of every SQL column rule (lower-case, sorted).
    pub fn column_rule_names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.column_rules().into_iter().map(|(_, c)| c).collect();
        n.sort();
        n.dedup();
        n
    }

    /// Every SQL column rule as (table, column): the table only when the
    /// rule is qualified (`users.ssn`). Lower-case, sorted.
    pub fn column_rules(&self) -> Vec<(Option<String>, String)> {
        let mut r: Vec<(Option<String>, String)> = self
            .fields
            .iter()
            .flat_map(|f| f.columns.iter())
            .map(|c| match c.rsplit_once('.') {
                Some((t, c)) => (Some(t.to_string()), c.to_string()),
                None => (None, c.clone()),
            })
            .collect();
        r.sort();
        r.dedup();
        r
    }

    /// Whether a column rule names `column` (of `table`).
    pub fn column_rule_applies(&self, column: &str, table: Option<&str>) -> bool {
        self.column_rule(column, table).is_some()
    }

    /// Whether any field rule names SQL columns.
    pub fn has_column_rules(&self) -> bool {
        self.fields.iter().any(|f| !f.columns.is_empty())
    }

    /// Mask one SQL cell (text form) of `column`.
    pub fn mask_cell(
        &self,
        column: &str,
        table: Option<&str>,
        value: &str,
        stats: &mut Stats,
    ) -> Cell {
        self.mask_cell_in(column, table, value, stats, &mut None)
    }

    /// [`Self::mask_cell`], remembering reversible tokens in `vault`.
    fn mask_cell_in(
        &self,
        column: &str,
        table: Option<&str>,
        value: &str,
        stats: &mut Stats,
        vault: &mut Option<&mut Vault>,
    ) -> Cell {
        if let Some(action) = self.column_rule(column, table) {
            *stats
                .entry(format!("column:{}", column.to_ascii_lowercase()))
                .or_default() += 1;
            return match action.kind {
                ActionKind::Drop => Cell::Null,
                _ => {
                    Cell::Replace(self.apply_in(action, &column.to_ascii_uppercase(), value, vault))
                }
            };
        }
        match self.mask_str_in(value, stats, vault) {
            Cow::Borrowed(_) => Cell::Keep,
            Cow::Owned(s) => Cell::Replace(s),
        }
    }

    /// Mask a JSON document in place.
    pub fn mask_json(&self, v: &mut serde_json::Value, stats: &mut Stats) {
        json::walk(self, v, &mut Vec::new(), stats, &mut None);
    }

    /// Parse, mask and re-serialise a JSON body.
    pub fn mask_json_bytes(&self, body: &[u8], stats: &mut Stats) -> Result<Vec<u8>, MaskError> {
        self.mask_json_bytes_in(body, stats, &mut None)
    }

    /// [`Self::mask_json_bytes`], remembering reversible tokens in `vault`.
    pub fn mask_json_bytes_in(
        &self,
        body: &[u8],
        stats: &mut Stats,
        vault: &mut Option<&mut Vault>,
    ) -> Result<Vec<u8>, MaskError> {
        if let Some(done) = stream::mask(self, body, stats, vault) {
            return done;
        }
        self.mask_json_bytes_walked(body, stats, vault)
    }

    /// Parse, walk and re-serialise: what every JSON body took before the
    /// one-pass path, and still takes where that path does not apply.
    fn mask_json_bytes_walked(
        &self,
        body: &[u8],
        stats: &mut Stats,
        vault: &mut Option<&mut Vault>,
    ) -> Result<Vec<u8>, MaskError> {
        let mut v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| MaskError::InvalidJson(e.to_string()))?;
        json::walk(self, &mut v, &mut Vec::new(), stats, vault);
        serde_json::to_vec(&v).map_err(|e| MaskError::InvalidJson(e.to_string()))
    }
}

/// A matcher for every name key and path rules look for, or `None`.
fn key_names(fields: &[Field]) -> Result<Option<AhoCorasick>, MaskError> {
    let names: Vec<&str> = fields
        .iter()
        .flat_map(|f| {
            let keys = f.keys.iter().map(String::as_str);
            keys.chain(f.paths.iter().filter_map(JsonPath::last_key))
        })
        .filter(|n| !n.is_empty())
        .collect();
    let has_rules = fields
        .iter()
        .any(|f| !f.keys.is_empty() || !f.paths.is_empty());
    if !has_rules {
        return Ok(None);
    }
    // A rule of paths that end in an index (`$[0]`) names no key: it still
    // has key rules, and its matcher finds nothing.
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(names)
        .map(Some)
        .map_err(|e| spec_err("fields", e.to_string()))
}

/// Whether the word ending at `end` (the space or dash before a match)
/// holds a time (`10:30:00`, `2026-11-25T10:30:00.123`, `…-03:00`: any
/// word with a colon, which no account number has) or is an ISO date
/// (`2026-11-25`): a value of its own, so digits after it start a value
/// too rather than continue a run of groups (`2026-11-25 10:30:00 030
/// 1234567` passed unmasked as the middle of an account number, and a
/// re-review passed the same after `2026-11-25T10:30:00`: 2026-12-05).
fn stamp_ends_at(b: &[u8], end: usize) -> bool {
    // Read back at most a long timestamp's length: a text of digit groups
    // with no space was read back to its start for every candidate
    // (quadratic: review, 2026-12-05). A longer word is taken for a stamp,
    // so the number after it is a value of its own, which masks more.
    let from = end.saturating_sub(STAMP_MAX);
    let Some(space) = b[from..end].iter().rposition(u8::is_ascii_whitespace) else {
        return from > 0 || stamp_word(&b[..end]);
    };
    stamp_word(&b[from + space + 1..end])
}

/// The longest word [`stamp_ends_at`] reads back: an ISO timestamp with
/// nanoseconds and an offset is 35 bytes.
const STAMP_MAX: usize = 64;

/// Whether `word` holds a colon (a time, a timestamp) or is an ISO date.
fn stamp_word(word: &[u8]) -> bool {
    let time = word.contains(&b':');
    let date = word.len() == 10
        && word.iter().enumerate().all(|(k, c)| {
            if k == 4 || k == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    time || date
}

/// Three, three and four digits, each group after the first after one
/// separator: a NANP number without its country code.
fn nanp_shaped(s: &str) -> bool {
    s.split([' ', '-', '.']).map(str::len).eq([3, 3, 4])
        && s.bytes().filter(u8::is_ascii_digit).count() == 10
}

/// The longest prefix of `text[start..end]`, cut at a separator, that
/// passes `check`. Greedy patterns over digit groups (phones, cards) can
/// swallow a neighbouring number; trimming whole groups from the end finds
/// the value itself. For a `weak` pattern (a phone number's, which digit
/// runs match everywhere) a cut just before `-<digit>` is refused because
/// it would split another token (an SSN, a date); a strong one's check
/// (Luhn, mod-97) says the value is whole, and a review passed
/// `4111111111111111-1` and `DE89370400440532013000-1` unmasked that way
/// (2026-12-05).
///
/// A value told from digits ([`Detector::digits_apart`]) ends where no
/// digit follows: its pattern has no `\b` to say so, and stops where its
/// repetition does, inside a longer number.
fn checked_end(
    text: &str,
    start: usize,
    end: usize,
    check: fn(&str) -> bool,
    d: &Detector,
) -> Option<usize> {
    let b = text.as_bytes();
    let mut e = end;
    loop {
        // Only a cut of our own can split a token; the pattern's own end
        // is where it chose to stop.
        let splits_token = d.weak
            && e != end
            && b.get(e) == Some(&b'-')
            && b.get(e + 1).is_some_and(u8::is_ascii_digit);
        let in_number = d.digits_apart && b.get(e).is_some_and(u8::is_ascii_digit);
        if !splits_token && !in_number && check(&text[start..e]) {
            return Some(e);
        }
        if let Some(k) = d
            .glued_end
            .filter(|_| e == end)
            .and_then(|g| g(&text[start..end]))
        {
            return Some(start + k);
        }
        // Cut at the last separator before `e`.
        let cut = text[start..e].rfind([' ', '-', '.', ',', '\''])?;
        if cut == 0 {
            return None;
        }
        e = start + cut;
    }
}

/// Reversible tokens a session has been shown, and their originals. Kept
/// by the gateway per session; bounded (the oldest are forgotten).
#[derive(Debug, Default)]
pub struct Vault {
    map: std::collections::HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

const VAULT_MAX: usize = 10_000;

impl Vault {
    /// Remember what `other` remembered, in its order.
    fn absorb(&mut self, mut other: Vault) {
        for token in other.order.drain(..) {
            if let Some(original) = other.map.remove(&token) {
                self.remember(&token, &original);
            }
        }
    }

    fn remember(&mut self, token: &str, original: &str) {
        if self.map.contains_key(token) {
            return;
        }
        if self.order.len() >= VAULT_MAX
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.map.insert(token.to_string(), original.to_string());
        self.order.push_back(token.to_string());
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `text` with every known token replaced by `escape(original)`; `None`
    /// when there was nothing to replace.
    pub fn reverse(&self, text: &str, escape: impl Fn(&str) -> String) -> Option<String> {
        if self.map.is_empty() || !text.contains(':') {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        let mut changed = false;
        for m in token_pattern().find_iter(text) {
            if let Some(orig) = self.map.get(m.as_str()) {
                out.push_str(&text[at..m.start()]);
                out.push_str(&escape(orig));
                at = m.end();
                changed = true;
            }
        }
        if !changed {
            return None;
        }
        out.push_str(&text[at..]);
        Some(out)
    }
}

fn token_pattern() -> &'static Regex {
    static P: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    P.get_or_init(|| Regex::new(r"\[[A-Z0-9_]{1,40}:[0-9a-f]{16}\]").expect("valid pattern"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Detector(usize),
    Words(usize),
}

/// A source and its next candidate.
struct Cursor {
    source: Source,
    /// The next candidate, if searched.
    next: Option<(usize, usize)>,
    /// No candidate left after the last search position.
    done: bool,
}

/// Whether `at` is inside the label of a hashed token
/// (`[GITHUB_TOKEN:5b7446e50555b18b]`): an assignment's name read there
/// (`_TOKEN:` and the hash after it) is the token, and masking it again
/// broke it (review, 2026-12-06). The whole token must be there: a
/// caller's `[DB_PASS:hunter22]` is no token.
fn in_token(text: &str, at: usize) -> bool {
    let b = text.as_bytes();
    // A token's label is at most 40 characters (`token_pattern`).
    let label = b[..at]
        .iter()
        .rev()
        .take(41)
        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || **c == b'_')
        .count();
    let Some(open) = at.checked_sub(label + 1).filter(|&p| b[p] == b'[') else {
        return false;
    };
    token_pattern()
        .find_at(text, open)
        .is_some_and(|m| m.start() == open && m.end() > at)
}

/// Where to resume after a rejected match: its next digit group.
fn next_group(text: &str, start: usize, end: usize) -> usize {
    let mut pos = text[start..end]
        .find([' ', '-', '.'])
        .map(|i| start + i + 1)
        .unwrap_or(end)
        .max(start + 1);
    while pos < text.len() && !text.is_char_boundary(pos) {
        pos += 1;
    }
    pos
}

/// Spaces number formats put between digit groups, other than ASCII's.
fn is_group_space(c: char) -> bool {
    matches!(
        c,
        '\u{00A0}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

/// Whether `text` may spell a character otherwise than [`plainly`]
/// reads it: a byte scan first (group spaces start with 0xC2, 0xE2 or
/// 0xE3), so most text is ruled out at once.
fn has_other_spelling(text: &str) -> bool {
    let b = text.as_bytes();
    b.iter().any(|&c| starts_spelling(c)) && (0..b.len()).any(|i| spelled_at(text, i).is_some())
}

/// Whether a byte may start what [`spelled_at`] reads: the JSON pass
/// gathers this in its scan ([`prefilter::SPELL`]), so most strings skip
/// [`has_other_spelling`]'s own.
pub(crate) const fn starts_spelling(c: u8) -> bool {
    matches!(c, b'%' | b'&' | b'\\' | 0xC2 | 0xE2 | 0xE3 | 0xEF) || starts_other_digit(c)
}

/// The lead bytes of the UTF-8 of every decimal digit in [`DIGIT_ZEROS`]
/// past ASCII and the full-width forms (U+0660 Arabic-Indic to U+1FBF0),
/// and of the [`invisible`] characters past those [`starts_spelling`]
/// names already.
const fn starts_other_digit(c: u8) -> bool {
    matches!(
        c,
        0xCC | 0xCD | 0xD8 | 0xD9 | 0xDB | 0xDF | 0xE0 | 0xE1 | 0xEA | 0xF0 | 0xF3
    )
}

/// What [`spelled_at`] says of an [`invisible`] character: it spells
/// nothing, and is read as absent.
const INVISIBLE: u8 = 0;

/// Characters that show nothing between the ones around them: format
/// characters (soft hyphen, zero-width space and joiners, word joiner,
/// bidirectional marks and embeddings, the byte order mark, tags),
/// variation selectors, and the generic combining marks (accents over
/// the character before). A review put each between a card's digits
/// (`4\u{0301}1\u{200D}1…`): a person or a model reads the number, the
/// detectors read no digits in a row. Read as absent; a finding covers
/// them.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0300}'..='\u{036F}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FE20}'..='\u{FE2F}'
            | '\u{FEFF}'
            | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// The zero of each run of ten decimal digits Unicode knows (general
/// category Nd, Unicode 14: ASCII, Arabic-Indic `٠`, Devanagari `०`,
/// Thai `๐`, full-width `０`, mathematical `𝟎`, …), in order; each run
/// holds 0-9 in order. Written out (from Python's `unicodedata`) because
/// `char::to_digit` reads ASCII only and no small crate gives a digit's
/// value in other scripts (ICU's property tables would, at many times
/// this binary's share).
const DIGIT_ZEROS: [u32; 66] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66,
    0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
    0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50,
    0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// The value of `c` when it is a decimal digit of any script.
fn digit_value(c: char) -> Option<u8> {
    let v = u32::from(c);
    let run = DIGIT_ZEROS.partition_point(|&z| z <= v).checked_sub(1)?;
    let d = v - DIGIT_ZEROS[run];
    // Below ten: `d` fits a byte.
    (d < 10).then_some(d as u8)
}

/// The ASCII character (or space) spelled at byte `i` of `text`, and how
/// many bytes spell it: a character [`ascii_of`] reads as ASCII, or one
/// percent-encoded (`%40`, and the UTF-8 of one such: `%EF%BC%94`) or
/// written as an HTML character reference (`&#64;`, `&#xFF14;`,
/// `&commat;`), or a backslash escape as JavaScript, Python and C write
/// them (`\u0040`, `\x40`: a review's MCP tool answered an address so in
/// text). Escapes of the characters other scripts write were read as what
/// they are not (open until 2026-12-05, "double spellings").
/// Only printable ASCII counts (what detectors read).
fn spelled_at(text: &str, i: usize) -> Option<(u8, usize)> {
    match *text.as_bytes().get(i)? {
        b'%' => percent_at(text, i),
        b'&' => reference_at(text, i),
        b'\\' => backslash_at(text, i),
        c if c >= 0x80 => {
            let c = text.get(i..)?.chars().next()?;
            let n = c.len_utf8();
            match c {
                // The katakana long mark between digits (`０９０ー１２３４`).
                '\u{30FC}' if between_digits(text, i, n) => Some((b'-', n)),
                c if invisible(c) => Some((INVISIBLE, n)),
                c => Some((ascii_of(c)?, n)),
            }
        }
        _ => None,
    }
}

/// The printable ASCII character (or space) a non-ASCII character spells:
/// a space number formats put between digit groups; a hyphen, dash or
/// minus sign Japanese text (the full-width minus of Shift-JIS converts
/// to U+2212) and word processors put between digit groups; the
/// ideographic full stop in addresses; a full-width form (U+FF01-U+FF5E:
/// `４`, `＠`, `－`, as East Asian text writes ASCII; Unicode's
/// compatibility mapping reads each as the ASCII character 0xFEE0 below
/// it); a decimal digit of another script (`٤`, `४`, `๔`, `𝟒`: the digit
/// it is, as a model or a person reads it). Reviews passed cards, SSNs,
/// phones and addresses written each way. Every such character's first
/// byte is one [`starts_spelling`] knows (a test holds it to that).
fn ascii_of(c: char) -> Option<u8> {
    match c {
        c if is_group_space(c) => Some(b' '),
        // Em dashes and the horizontal bar too, and middle dots as dots
        // (`4111—1111—1111—1111`, `123·45·6789`: a review passed them,
        // 2026-12-05).
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' => Some(b'-'),
        '\u{3002}' | '\u{00B7}' | '\u{2027}' | '\u{30FB}' => Some(b'.'),
        // 0x21..=0x7E: a byte.
        '\u{FF01}'..='\u{FF5E}' => u8::try_from(u32::from(c) - 0xFEE0).ok(),
        c => digit_value(c).map(|d| b'0' + d),
    }
}

/// A percent-encoded character at `i`: printable ASCII, or the UTF-8 of
/// a character [`ascii_of`] reads (each of its bytes encoded).
fn percent_at(text: &str, i: usize) -> Option<(u8, usize)> {
    let byte = |k: usize| -> Option<u8> {
        let at = i + 3 * k;
        let hex = text.get(at + 1..at + 3)?;
        (text.as_bytes().get(at) == Some(&b'%') && hex.bytes().all(|c| c.is_ascii_hexdigit()))
            .then_some(())?;
        u8::from_str_radix(hex, 16).ok()
    };
    let first = byte(0)?;
    if first < 0x80 {
        return Some((printable(u32::from(first))?, 3));
    }
    let len = match first {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return None,
    };
    let mut utf8 = [first, 0, 0, 0];
    for (k, b) in utf8.iter_mut().enumerate().take(len).skip(1) {
        *b = byte(k)?;
    }
    let c = std::str::from_utf8(&utf8[..len]).ok()?.chars().next()?;
    Some((ascii_of(c)?, 3 * len))
}

/// An HTML character reference at `i` (`&#NN;`, `&#xHH;`, `&commat;`) of
/// printable ASCII or of a character [`ascii_of`] reads.
fn reference_at(text: &str, i: usize) -> Option<(u8, usize)> {
    let rest = text.get(i + 1..)?;
    if rest.starts_with("commat;") {
        return Some((b'@', 8));
    }
    let num = rest.strip_prefix('#')?;
    // At most 8 bytes ahead: searching the whole rest for each `&` made a
    // text of `&#` without `;` quadratic (code review).
    let end = num
        .as_bytes()
        .iter()
        .take(8)
        .position(|&c| c == b';')
        .filter(|&e| (1..=7).contains(&e))?;
    let digits = &num[..end];
    let v = match digits.strip_prefix(['x', 'X']) {
        Some(h) if !h.is_empty() && h.bytes().all(|c| c.is_ascii_hexdigit()) => {
            u32::from_str_radix(h, 16).ok()?
        }
        None if digits.bytes().all(|c| c.is_ascii_digit()) => digits.parse().ok()?,
        _ => return None,
    };
    let ascii = printable(v).or_else(|| char::from_u32(v).and_then(ascii_of))?;
    Some((ascii, end + 3))
}

/// A backslash escape at `i`: `\uHHHH` of printable ASCII or of a
/// character [`ascii_of`] reads, or `\xHH` of printable ASCII.
fn backslash_at(text: &str, i: usize) -> Option<(u8, usize)> {
    let rest = text.get(i + 1..)?;
    let (hex, n) = match rest.as_bytes().first()? {
        b'u' => (rest.get(1..5)?, 6),
        b'x' => (rest.get(1..3)?, 4),
        _ => return None,
    };
    if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let v = u32::from_str_radix(hex, 16).ok()?;
    let ascii = match n {
        6 => printable(v).or_else(|| char::from_u32(v).and_then(ascii_of))?,
        _ => printable(v)?,
    };
    Some((ascii, n))
}

/// `v` when it is printable ASCII (or a space).
fn printable(v: u32) -> Option<u8> {
    u8::try_from(v).ok().filter(|b| (0x20..0x7f).contains(b))
}

/// Whether the `n` bytes at `i` have a digit (of any script) on each
/// side.
fn between_digits(text: &str, i: usize, n: usize) -> bool {
    let digit = |c: Option<char>| c.and_then(digit_value).is_some();
    digit(text[..i].chars().next_back()) && digit(text.get(i + n..).and_then(|t| t.chars().next()))
}

/// `text` as [`spelled_at`] reads it, and for each byte of that (and its
/// end) the offset it came from in `text`.
fn plainly(text: &str) -> (String, Vec<usize>) {
    let mut plain = Vec::with_capacity(text.len());
    let mut at = Vec::with_capacity(text.len() + 1);
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match spelled_at(text, i) {
            Some((INVISIBLE, n)) => i += n,
            Some((c, n)) => {
                plain.push(c);
                at.push(i);
                i += n;
            }
            None => {
                plain.push(b[i]);
                at.push(i);
                i += 1;
            }
        }
    }
    at.push(text.len());
    // Only ASCII replaced whole characters: still UTF-8.
    let plain = String::from_utf8(plain)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    (plain, at)
}

struct Span<'a> {
    name: &'a str,
    label: &'a str,
    start: usize,
    end: usize,
    action: &'a Action,
}

impl<'a> Span<'a> {
    fn of(d: &'a Detector, start: usize, end: usize) -> Self {
        Self {
            name: &d.name,
            label: &d.label,
            start,
            end,
            action: &d.action,
        }
    }
}

#[cfg(test)]
mod tests;
