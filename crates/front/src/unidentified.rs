//! Refusals of callers with no identity, merged. Each was a durable,
//! hash-chained audit entry of its own: a review sent ~9,500 requests a
//! second with a made-up token and grew the store by 25 MB in 10 s, until
//! a full disk would have made the gateway refuse every session. Now the
//! first refusal from one address for one reason in a window is written
//! whole; the rest are counted and written as one entry when the window
//! ends (or the gateway stops). Refusals of a known principal stay one
//! entry each: that caller is accountable and can be revoked.
//!
//! Pure: time is passed in, so the rules are tested without waiting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long one entry counts the refusals after the first.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses and reasons counted apart in one window; past it, the rest
/// share one key (an address space or reasons the caller chooses cannot
/// grow the map, nor the entries per window past this).
pub const MAX_KEYS: usize = 1_000;
/// Reasons one network has counted apart in one window; past it, its
/// other reasons share one key of its own. A review varied a word of the
/// reason from one address and took every one of [`MAX_KEYS`], so other
/// addresses' refusals lost their address and reason.
pub const MAX_KINDS_PER_NETWORK: usize = 16;

/// The network an address counts under: an IPv6 /64 (one host is given a
/// whole /64), an IPv4 address, and loopback as one host. Shared by the
/// gateway's limits on open endpoints.
pub fn network(peer: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match peer {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// What a refusal is merged by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub protocol: &'static str,
    /// The caller's address without its port.
    pub peer: String,
    /// The reason's kind ([`kind_of`]), not its whole text.
    pub reason: String,
}

impl Key {
    /// `peer` as the fronts give it (`ip:port`), without the port: a
    /// caller opens a new port per connection.
    pub fn new(protocol: &'static str, peer: &str, reason: &str) -> Self {
        let peer = match peer.parse::<std::net::SocketAddr>() {
            Ok(a) => a.ip().to_string(),
            Err(_) => peer.to_string(),
        };
        Self {
            protocol,
            peer,
            reason: kind_of(reason),
        }
    }

    fn overflow(protocol: &'static str) -> Self {
        Self {
            protocol,
            peer: "*".into(),
            reason: format!("refusals from more than {MAX_KEYS} addresses or reasons"),
        }
    }

    /// The network this key's address counts under (the address as
    /// written when it is not one).
    fn network(&self) -> String {
        match self.peer.parse::<std::net::IpAddr>() {
            Ok(ip) => network(ip).to_string(),
            Err(_) => self.peer.clone(),
        }
    }

    fn network_overflow(&self) -> Self {
        Self {
            protocol: self.protocol,
            peer: self.network(),
            reason: format!("refusals for more than {MAX_KINDS_PER_NETWORK} reasons"),
        }
    }
}

/// Longest reason kind kept, in characters.
const MAX_KIND: usize = 80;

/// What a refusal's reason says without what the caller chose: reasons
/// quote the caller's own text (an issuer, a key id, a path, a status), so
/// keying on the whole text let one address write an entry per variation,
/// up to [`MAX_KEYS`] a minute. Quoted spans become `…`, and so does every
/// word holding anything but letters and plain punctuation (numbers,
/// paths, ids). The first refusal of a kind is still written with its
/// whole reason. Written by hand: the rule is a few lines and no crate
/// states it.
pub fn kind_of(reason: &str) -> String {
    let mut kind = String::new();
    let mut chars = reason.chars();
    let mut word = String::new();
    let flush = |word: &mut String, kind: &mut String| {
        if word.is_empty() {
            return;
        }
        let plain = word.chars().all(|c| {
            c.is_ascii_alphabetic() || matches!(c, ',' | '.' | ':' | ';' | '(' | ')' | '-')
        });
        kind.push_str(if plain { word } else { "…" });
        word.clear();
    };
    while let Some(c) = chars.next() {
        // An apostrophe inside a word ("token's") is not a quote (code
        // review: it swallowed the rest of the reason).
        let quote = matches!(c, '"' | '`') || (c == '\'' && word.is_empty());
        if quote {
            flush(&mut word, &mut kind);
            skip_quoted(&mut chars, c);
            kind.push('…');
        } else if c.is_whitespace() {
            flush(&mut word, &mut kind);
            kind.push(' ');
        } else {
            word.push(c);
        }
        if kind.chars().count() >= MAX_KIND {
            break;
        }
    }
    flush(&mut word, &mut kind);
    kind.chars().take(MAX_KIND).collect()
}

/// Past the quoted text that `q` opened: to the closing quote, past
/// escaped ones (Debug quoting).
fn skip_quoted(chars: &mut std::str::Chars<'_>, q: char) {
    while let Some(x) = chars.next() {
        if x == '\\' {
            chars.next();
        } else if x == q {
            break;
        }
    }
}

/// Refusals counted after the first of their key, to write as one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeated {
    pub key: Key,
    pub count: u64,
    pub seconds: u64,
}

/// One window's counts.
#[derive(Debug)]
pub struct Merger {
    window: Duration,
    started: Option<Instant>,
    /// Refusals seen per key in this window, the first included.
    seen: HashMap<Key, u64>,
    /// Keys counted apart per network in this window.
    kinds: HashMap<String, usize>,
}

impl Default for Merger {
    fn default() -> Self {
        Self::new(WINDOW)
    }
}

impl Merger {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            started: None,
            seen: HashMap::new(),
            kinds: HashMap::new(),
        }
    }

    /// A refusal of `key` at `now`: whether to write it whole (the first
    /// of its key in the window), and what a window that ended is owed.
    #[cfg(test)]
    pub fn refused(&mut self, key: Key, now: Instant) -> (bool, Vec<Repeated>) {
        let owed = self.due(now);
        (self.count(key, now), owed)
    }

    /// A refusal of `key` at `now`, counted in the current window (or one
    /// it starts): whether to write it whole. What an ended window is
    /// owed stays for [`Self::due`].
    pub fn count(&mut self, key: Key, now: Instant) -> bool {
        self.started.get_or_insert(now);
        let key = self.counted_as(key);
        let n = self.seen.entry(key).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// The key a refusal of `key` is counted under: its own while its
    /// network has fewer than [`MAX_KINDS_PER_NETWORK`] and the window
    /// fewer than [`MAX_KEYS`], else an overflow key.
    fn counted_as(&mut self, key: Key) -> Key {
        if self.seen.contains_key(&key) {
            return key;
        }
        let network = key.network();
        let kinds = self.kinds.get(&network).copied().unwrap_or(0);
        let key = if kinds >= MAX_KINDS_PER_NETWORK {
            key.network_overflow()
        } else {
            key
        };
        if self.seen.contains_key(&key) {
            return key;
        }
        if self.seen.len() >= MAX_KEYS {
            return Key::overflow(key.protocol);
        }
        // Counted only once admitted: the map grows no more than the keys
        // (code review: rotating networks had grown it per refusal).
        *self.kinds.entry(network).or_insert(0) += 1;
        key
    }

    /// What a window that ended by `now` is owed (nothing otherwise).
    pub fn due(&mut self, now: Instant) -> Vec<Repeated> {
        match self.started {
            Some(t) if now.duration_since(t) >= self.window => self.drain(now),
            _ => Vec::new(),
        }
    }

    /// Everything counted and not yet written, at `now` (the gateway stops).
    pub fn drain(&mut self, now: Instant) -> Vec<Repeated> {
        let seconds = self
            .started
            .take()
            .map_or(0, |t| now.duration_since(t).as_secs().max(1));
        self.kinds.clear();
        let mut owed: Vec<Repeated> = self
            .seen
            .drain()
            .filter(|(_, n)| *n > 1)
            .map(|(key, n)| Repeated {
                key,
                count: n - 1,
                seconds,
            })
            .collect();
        owed.sort_by(|a, b| (&a.key.peer, &a.key.reason).cmp(&(&b.key.peer, &b.key.reason)));
        owed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(peer: &str, reason: &str) -> Key {
        Key::new("http", peer, reason)
    }

    #[test]
    fn the_first_is_written_whole_and_the_rest_counted_once_the_window_ends() {
        let mut m = Merger::new(Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(
            m.refused(key("10.0.0.1:5000", "unknown token"), t),
            (true, vec![])
        );
        // Another port of the same address is the same caller.
        for i in 0..9 {
            let at = t + Duration::from_secs(i);
            let (whole, owed) =
                m.refused(key(&format!("10.0.0.1:{}", 6000 + i), "unknown token"), at);
            assert!(!whole && owed.is_empty());
        }
        // Another address or reason is written whole.
        assert!(m.refused(key("10.0.0.2:1", "unknown token"), t).0);
        assert!(m.refused(key("10.0.0.1:1", "expired"), t).0);
        assert!(m.due(t + Duration::from_secs(59)).is_empty());
        let owed = m.due(t + Duration::from_secs(60));
        assert_eq!(
            owed,
            vec![Repeated {
                key: key("10.0.0.1:0", "unknown token"),
                count: 9,
                seconds: 60
            }]
        );
        // A new window starts afresh.
        assert!(
            m.refused(
                key("10.0.0.1:5000", "unknown token"),
                t + Duration::from_secs(61)
            )
            .0
        );
        assert!(m.drain(t + Duration::from_secs(62)).is_empty());
    }

    #[test]
    fn a_refusal_after_the_window_brings_what_it_is_owed() {
        let mut m = Merger::new(Duration::from_secs(10));
        let t = Instant::now();
        m.refused(key("[::1]:1", "x"), t);
        m.refused(key("[::1]:2", "x"), t);
        let (whole, owed) = m.refused(key("[::1]:3", "x"), t + Duration::from_secs(11));
        assert!(whole);
        assert_eq!(owed.len(), 1);
        assert_eq!((owed[0].key.peer.as_str(), owed[0].count), ("::1", 1));
    }

    /// Counting never takes what an ended window is owed: the request
    /// path counts, and only the periodic flush (which no caller can
    /// drop) takes the counts to write them (review of cancellation,
    /// 2026-12-05: a request reset while it wrote them lost them).
    #[test]
    fn counting_leaves_what_is_owed_for_the_flush() {
        let mut m = Merger::new(Duration::from_secs(10));
        let t = Instant::now();
        assert!(m.count(key("[::1]:1", "x"), t));
        assert!(!m.count(key("[::1]:2", "x"), t));
        assert!(!m.count(key("[::1]:3", "x"), t + Duration::from_secs(11)));
        let owed = m.due(t + Duration::from_secs(11));
        assert_eq!(owed.len(), 1);
        assert_eq!((owed[0].key.peer.as_str(), owed[0].count), ("::1", 2));
    }

    #[test]
    fn a_reason_is_merged_by_its_kind_not_by_what_the_caller_chose() {
        let kinds = [
            r#"OIDC token refused: issuer "https://a.example/1" is not configured"#,
            r#"OIDC token refused: issuer "x\"y" is not configured"#,
            r#"OIDC token refused: issuer "unterminated"#,
        ];
        assert_eq!(
            kind_of(kinds[0]),
            "OIDC token refused: issuer … is not configured"
        );
        assert_eq!(kind_of(kinds[0]), kind_of(kinds[1]));
        assert_eq!(kind_of(kinds[2]), "OIDC token refused: issuer …");
        assert_eq!(kind_of("HTTP 404"), kind_of("HTTP 405"));
        assert_eq!(kind_of("bad path /c/a/../b"), kind_of("bad path /c/x"));
        assert_eq!(
            kind_of("key id `k1` unknown"),
            kind_of("key id `k2` unknown")
        );
        // Different kinds stay apart.
        assert_ne!(kind_of("unknown token"), kind_of("token has expired"));
        // An apostrophe in a word is not a quote (code review).
        assert_ne!(
            kind_of("the token's issuer is unknown"),
            kind_of("the token's audience is wrong")
        );
        assert!(kind_of(&"a ".repeat(1000)).chars().count() <= MAX_KIND);
        // Keys use the kind, so one address varying the text is one key.
        let mut m = Merger::new(Duration::from_secs(60));
        let t = Instant::now();
        assert!(m.refused(key("10.0.0.1:1", "HTTP 404 on /a"), t).0);
        for i in 0..100 {
            assert!(
                !m.refused(key("10.0.0.1:1", &format!("HTTP 404 on /a{i}")), t)
                    .0
            );
        }
        assert_eq!(m.drain(t)[0].count, 100);
    }

    /// Review: letters-only words of a reason (an `alg`) varied from one
    /// address took every key, so others' refusals lost their address.
    #[test]
    fn one_network_cannot_take_the_keys_of_others() {
        let mut m = Merger::new(Duration::from_secs(60));
        let t = Instant::now();
        let whole = (0..5000)
            .filter(|i| {
                let word: String = format!("{i:x}")
                    .chars()
                    .map(|c| (b'g' + c.to_digit(16).unwrap() as u8) as char)
                    .collect();
                m.refused(
                    key("[2001:db8::1]:1", &format!("algorithm {word} refused")),
                    t,
                )
                .0
            })
            .count();
        assert_eq!(
            whole,
            MAX_KINDS_PER_NETWORK + 1,
            "its own, and one overflow"
        );
        // Another address of its /64 is the same network.
        assert!(
            !m.refused(key("[2001:db8::2]:1", "algorithm zz refused"), t)
                .0
        );
        // Another network is written whole, with its address and reason.
        assert!(m.refused(key("10.0.0.9:1", "unknown token"), t).0);
        let owed = m.drain(t);
        let overflow = owed
            .iter()
            .find(|r| r.key.reason.contains("more than"))
            .unwrap();
        assert_eq!(overflow.key.peer, "2001:db8::");
        assert_eq!(overflow.count as usize, 5000 - MAX_KINDS_PER_NETWORK);
    }

    #[test]
    fn keys_are_bounded_whatever_the_caller_varies() {
        let mut m = Merger::new(Duration::from_secs(60));
        let t = Instant::now();
        let mut whole = 0;
        for i in 0..(MAX_KEYS * 3) {
            if m.refused(key(&format!("10.1.{}.{}:1", i / 256, i % 256), "r"), t)
                .0
            {
                whole += 1;
            }
        }
        assert_eq!(
            whole,
            MAX_KEYS + 1,
            "one whole entry per key, then one for the rest"
        );
        let owed = m.drain(t + Duration::from_secs(1));
        assert_eq!(owed.len(), 1);
        assert_eq!(owed[0].key.peer, "*");
        assert_eq!(owed[0].count, (MAX_KEYS * 2 - 1) as u64);
    }
}
