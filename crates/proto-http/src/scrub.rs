//! The connection's own credential, kept out of what the target answers.
//!
//! The gateway adds the credential to each request; a target that echoes
//! requests (`TRACE`, an echo endpoint, an error page quoting the headers
//! it got) hands it back. A review read an API key that way through six
//! connections, masked ones included. Every occurrence of the secret in a
//! response's headers and body is overwritten with `*` of the same length
//! (so lengths and framing stay valid), also where it is split across the
//! body's frames. The request asks for no compression and no byte range
//! (either would hide the secret from the search: code review). The
//! secret is also found as targets re-encode it ([`spellings`]). On
//! connections served by an agent, the agent (which adds the secret)
//! scrubs.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response};
use http_body::{Frame, SizeHint};

use crate::{Body, BoxError};

mod reading;

/// Secrets shorter than this are not looked for: they would overwrite
/// ordinary text (and such a credential is no secret).
const MIN_SECRET: usize = 8;

/// What to look for: every spelling a target that echoes the secret is
/// likely to write it in ([`spellings`]), in any mix of ASCII case (a
/// target that echoes it case-folded, in a header name say, had left a
/// caller only the letters' case to guess: re-review). The search runs
/// over a lower-cased copy of the bytes, one SIMD pass for all spellings
/// (Teddy, where the CPU has it), and overwrites the original bytes at
/// the same offsets (lower-casing keeps every offset).
#[derive(Clone)]
pub struct Scrubber {
    search: Arc<Search>,
    /// How many bytes one match may span: the longest spelling, or ten
    /// bytes per byte of the secret in a [reading](reading), whichever is
    /// more (at most [`MAX_REACH`]). What a frame's end holds back, and how
    /// far from an escape a reading looks.
    len: usize,
}

/// The secret as targets re-encode it, lower-cased: as it is; escaped for
/// JSON (`\"` and `\\`, then `/` as `\/` as PHP writes it, or `<>&='` as
/// `\u00XX` as Go and Gson do); escaped for HTML; percent-encoded (as a
/// URI component, and with `/:=+` kept); in hex; and in base64 (standard
/// and URL-safe alphabets) at each of the three byte alignments, where
/// only the characters that depend on the secret alone are looked for. A
/// target that encrypts, reverses or splits the secret over writes more
/// than [`HOLD`] apart is not matched: this is the spellings an echo
/// endpoint, an error page or a debug dump write, not every function of
/// the secret.
fn spellings(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let escape = |table: &dyn Fn(u8) -> Option<String>| -> Vec<u8> {
        secret
            .iter()
            .flat_map(|&b| table(b).map_or_else(|| vec![b], String::into_bytes))
            .collect()
    };
    let json = |b: u8| match b {
        b'"' => Some("\\\"".to_string()),
        b'\\' => Some("\\\\".to_string()),
        b if b < 0x20 => Some(format!("\\u{b:04x}")),
        _ => None,
    };
    let mut all = vec![
        secret.to_vec(),
        escape(&json),
        escape(&|b| match b {
            b'/' => Some("\\/".into()),
            b => json(b),
        }),
        escape(&|b| match b {
            b'<' | b'>' | b'&' | b'=' | b'\'' => Some(format!("\\u{b:04x}")),
            b => json(b),
        }),
        escape(&|b| match b {
            b'&' => Some("&amp;".into()),
            b'<' => Some("&lt;".into()),
            b'>' => Some("&gt;".into()),
            b'"' => Some("&quot;".into()),
            b'\'' => Some("&#39;".into()),
            _ => None,
        }),
        escape(&|b| match b {
            b'\'' => Some("&#x27;".into()),
            b => None.or((b == b'&').then(|| "&amp;".into())),
        }),
        escape(&|b| {
            (!b.is_ascii_alphanumeric() && !b"-._~".contains(&b)).then(|| format!("%{b:02x}"))
        }),
        escape(&|b| {
            (!b.is_ascii_alphanumeric() && !b"-._~/:=+".contains(&b)).then(|| format!("%{b:02x}"))
        }),
        hex::encode(secret).into_bytes(),
    ];
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for lead in 0..3usize {
            // `lead` bytes before the secret, and two after so that its
            // last bits are encoded whole; of the characters, those whose
            // six bits all come from the secret.
            let mut framed = vec![0u8; lead];
            framed.extend_from_slice(secret);
            framed.extend_from_slice(&[0, 0]);
            let text = engine.encode(&framed).into_bytes();
            let first = (8 * lead).div_ceil(6);
            let end = 8 * (lead + secret.len()) / 6;
            all.push(text[first..end].to_vec());
        }
    }
    for s in &mut all {
        s.make_ascii_lowercase();
    }
    all.sort();
    all.dedup();
    all
}

/// All spellings searched at once. Leftmost-longest: where spellings
/// start at one byte (one a prefix of another), the longest is
/// overwritten.
enum Search {
    /// Teddy, where the CPU has it: ~20 GB/s here on the benchmark's
    /// bodies, where the general automaton's prefilter, given three
    /// spellings of common letters, fell to 0.7 GB/s.
    Packed(aho_corasick::packed::Searcher),
    General(aho_corasick::AhoCorasick),
}

impl Search {
    fn new(spellings: &[Vec<u8>]) -> Option<Self> {
        let mut config = aho_corasick::packed::Config::new();
        config.match_kind(aho_corasick::packed::MatchKind::LeftmostLongest);
        match config.builder().extend(spellings).build() {
            Some(p) => Some(Self::Packed(p)),
            None => Self::general(spellings),
        }
    }

    fn general(spellings: &[Vec<u8>]) -> Option<Self> {
        aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(spellings)
            .ok()
            .map(Self::General)
    }

    /// Where the first spelling at or after `from` is.
    fn find(&self, hay: &[u8], from: usize) -> Option<std::ops::Range<usize>> {
        let span = aho_corasick::Span::from(from..hay.len());
        match self {
            Self::Packed(p) => p.find_in(hay, span).map(|m| m.range()),
            Self::General(g) => g
                .find(aho_corasick::Input::new(hay).span(span))
                .map(|m| m.range()),
        }
    }
}

thread_local! {
    /// The lower-cased copy searched, reused (not an allocation per
    /// frame); the search never yields, so one per thread is enough.
    static FOLDED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The same for the [`reading::Reading`].
    static READING: std::cell::RefCell<reading::Reading> = std::cell::RefCell::default();
}

/// How many bytes one byte of the secret may have been read from, at
/// most, for what waits at a frame's end and how far from an escape a
/// reading looks (`&#x0002F;` and a blank), and a bound on it for long
/// secrets: a secret spread wider is not found in a reading.
const READ_WIDTH: usize = 10;
const MAX_REACH: usize = 16 << 10;

/// More than this is not kept between frames in [`FOLDED`].
const FOLDED_KEPT: usize = 1 << 20;

impl Scrubber {
    pub fn new(secret: &[u8]) -> Option<Self> {
        if secret.len() < MIN_SECRET {
            return None;
        }
        let spellings = spellings(secret);
        let search = Search::new(&spellings)?;
        let longest = spellings.iter().map(Vec::len).max().unwrap_or(secret.len());
        Some(Self {
            len: (secret.len() * READ_WIDTH).min(MAX_REACH).max(longest),
            search: Arc::new(search),
        })
    }

    /// `f` over the lower-cased `hay`.
    fn folded<T>(hay: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
        FOLDED.with(|cell| {
            let mut folded = cell.borrow_mut();
            folded.clear();
            folded.extend(hay.iter().map(u8::to_ascii_lowercase));
            let out = f(&folded);
            if folded.capacity() > FOLDED_KEPT {
                *folded = Vec::new();
            }
            out
        })
    }

    /// Whether the secret (in any of its spellings) is in `hay`, as it
    /// is or in its [reading](reading).
    fn found(&self, hay: &[u8]) -> bool {
        Self::folded(hay, |h| self.search.find(h, 0).is_some()) || !self.read(hay).is_empty()
    }

    /// Where the secret is in `hay`'s [reading](reading), as ranges of
    /// `hay`.
    fn read(&self, hay: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut at = Vec::new();
        for part in reading::parts(hay, self.len) {
            READING.with(|cell| {
                let mut r = cell.borrow_mut();
                reading::read(&hay[part.clone()], &mut r);
                for m in self.all(&r.text) {
                    let (from, to) = (r.from[m.start] as usize, r.to[m.end - 1] as usize);
                    at.push(part.start + from..part.start + to);
                }
                Self::trim(&mut r);
            });
        }
        at
    }

    /// Every spelling's place in `hay` (a lower-cased text).
    fn all(&self, hay: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut at = Vec::new();
        let mut from = 0;
        // One spelling per start (the longest); each later start is
        // searched again from the next byte.
        while let Some(r) = self.search.find(hay, from) {
            from = r.start + 1;
            at.push(r);
        }
        at
    }

    fn trim(r: &mut reading::Reading) {
        if r.text.capacity() > FOLDED_KEPT {
            *r = reading::Reading::default();
        }
    }

    /// Overwrite every occurrence in `buf`, overlapping ones included
    /// (all are found before any is overwritten), as it is and in its
    /// reading; how many there were.
    pub fn bytes(&self, buf: &mut [u8]) -> usize {
        let mut at = Self::folded(buf, |h| self.all(h));
        for r in self.read(buf) {
            // Found as it is too: counted once.
            if !at.iter().any(|a| a.start <= r.start && r.end <= a.end) {
                at.push(r);
            }
        }
        for r in &at {
            buf[r.clone()].fill(b'*');
        }
        at.len()
    }

    /// `text` with every occurrence overwritten: for what the gateway
    /// writes itself out of the target's bytes (an error quoting a header
    /// the target sent had handed a review the key: re-review).
    pub fn text(&self, text: &str) -> String {
        let mut b = text.as_bytes().to_vec();
        if self.bytes(&mut b) == 0 {
            return text.to_owned();
        }
        // `*` for whole occurrences of valid text: still valid.
        String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Overwrite every occurrence in these headers' values, and drop a
    /// header whose name holds it (names are lower case).
    pub fn headers(&self, headers: &mut http::HeaderMap) {
        let named: Vec<http::HeaderName> = headers
            .keys()
            .filter(|k| self.found(k.as_str().as_bytes()))
            .cloned()
            .collect();
        for k in named {
            headers.remove(k);
        }
        for v in headers.values_mut() {
            if self.found(v.as_bytes()) {
                let mut b = v.as_bytes().to_vec();
                self.bytes(&mut b);
                // `*` in place of visible bytes: still a valid value.
                *v = HeaderValue::from_bytes(&b).unwrap_or(HeaderValue::from_static("***"));
            }
        }
    }

    /// Whether a body with these headers can be searched: a target asked
    /// for no encoding that compresses anyway (by `Content-Encoding`, or a
    /// `Transfer-Encoding` other than chunked) would hide the secret (a
    /// review read the echoed key after gunzip), so it is refused.
    pub fn searchable(&self, headers: &http::HeaderMap) -> Result<(), String> {
        let codings = |name| {
            headers
                .get_all(name)
                .iter()
                .flat_map(|v| v.to_str().unwrap_or("?").split(','))
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        };
        let compressed = codings(http::header::CONTENT_ENCODING)
            .into_iter()
            .find(|t| t != "identity")
            .or_else(|| {
                codings(http::header::TRANSFER_ENCODING)
                    .into_iter()
                    .find(|t| t != "chunked")
            });
        // Named only when it is a registered coding: the token is the
        // target's text, and a review's target sent the key there.
        const NAMED: &[&str] = &[
            "gzip",
            "x-gzip",
            "deflate",
            "br",
            "zstd",
            "compress",
            "x-compress",
            "dcb",
            "dcz",
            "aes128gcm",
            "exi",
            "pack200-gzip",
        ];
        match compressed {
            None => Ok(()),
            Some(t) => Err(format!(
                "the target answered with encoding {} although asked for none; an answer the gateway cannot search for the credential it added is not passed",
                NAMED
                    .iter()
                    .find(|n| **n == t)
                    .map_or_else(|| "of its own naming".to_string(), |n| format!("{n:?}"))
            )),
        }
    }

    /// The response with its headers and body scrubbed, if its body can be
    /// searched ([`Self::searchable`]).
    pub fn response(&self, resp: Response<Body>) -> Result<Response<Body>, String> {
        self.searchable(resp.headers())?;
        let (mut parts, body) = resp.into_parts();
        self.headers(&mut parts.headers);
        let body = Scrubbed::new(body, self.clone());
        Ok(Response::from_parts(
            parts,
            http_body_util::BodyExt::boxed(body),
        ))
    }
}

/// How long the end of a frame waits for the next frame before it goes
/// on anyway (an event stream's last event must not wait for the next).
const HOLD: std::time::Duration = std::time::Duration::from_millis(20);

/// A body with the secret overwritten. The last `len - 1` bytes received
/// always wait for the next frame (where a secret that began in them would
/// end), or for [`HOLD`], or for the end, whatever they are. The hold does
/// not depend on what the bytes are: a review recovered a whole API key
/// from a target that never echoed it, by timing which of its own guesses
/// came back at once (bytes that could begin the secret had waited for
/// the next frame, others had not). A secret the target splits across
/// writes more than [`HOLD`] apart is not found.
struct Scrubbed {
    inner: Body,
    scrub: Scrubber,
    /// What waits: at most `len - 1` bytes.
    carry: BytesMut,
    /// Where what waits is joined to a frame's first bytes, reused (not
    /// an allocation per frame).
    join: Vec<u8>,
    /// A second frame to give after the one just given.
    queued: Option<Bytes>,
    /// When what waits goes on without a next frame.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    trailers: Option<Frame<Bytes>>,
}

impl Scrubbed {
    fn new(inner: Body, scrub: Scrubber) -> Self {
        Self {
            inner,
            scrub,
            carry: BytesMut::new(),
            join: Vec::new(),
            queued: None,
            timer: None,
            done: false,
            trailers: None,
        }
    }

    /// What can go now of what was held and `data`, scrubbed: what was
    /// held, then the new bytes but their last `len - 1`.
    fn next_data(&mut self, data: Bytes) -> (Option<Bytes>, Option<Bytes>) {
        let keep = self.scrub.len - 1;
        let nonempty = |b: Bytes| (!b.is_empty()).then_some(b);
        // A secret that began in what was held ends in `data`'s first
        // bytes: the join is scrubbed whole (rare).
        if !self.carry.is_empty() {
            let head = &data[..keep.min(data.len())];
            self.join.clear();
            self.join.extend_from_slice(&self.carry);
            self.join.extend_from_slice(head);
            if self.scrub.found(&self.join) {
                self.carry.extend_from_slice(&data);
                self.scrub.bytes(&mut self.carry);
                let at = self.carry.len().saturating_sub(keep);
                return (nonempty(self.carry.split_to(at).freeze()), None);
            }
        }
        let data = if self.scrub.found(&data) {
            let mut b = BytesMut::from(&data[..]);
            self.scrub.bytes(&mut b);
            b.freeze()
        } else {
            // The common case: nothing to overwrite, nothing copied but
            // the tail that waits.
            data
        };
        if data.len() >= keep {
            let held = self.carry.split().freeze();
            self.carry.extend_from_slice(&data[data.len() - keep..]);
            (nonempty(held), nonempty(data.slice(..data.len() - keep)))
        } else {
            self.carry.extend_from_slice(&data);
            let at = self.carry.len().saturating_sub(keep);
            (nonempty(self.carry.split_to(at).freeze()), None)
        }
    }

    /// The inner body has nothing now: what waits goes on after [`HOLD`].
    fn poll_hold(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.carry.is_empty() {
            return Poll::Pending;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(HOLD)));
        ready!(timer.as_mut().poll(cx));
        self.timer = None;
        Poll::Ready(Some(Ok(Frame::data(self.carry.split().freeze()))))
    }
}

impl http_body::Body for Scrubbed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(q) = this.queued.take() {
                return Poll::Ready(Some(Ok(Frame::data(q))));
            }
            if this.done {
                if !this.carry.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(this.carry.split().freeze()))));
                }
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            let polled = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return this.poll_hold(cx),
                Poll::Ready(p) => p,
            };
            this.timer = None;
            match polled {
                None => {
                    this.done = true;
                    this.scrub.bytes(&mut this.carry);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match this.next_data(data) {
                        (Some(first), second) => {
                            this.queued = second;
                            return Poll::Ready(Some(Ok(Frame::data(first))));
                        }
                        (None, Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        (None, None) => {}
                    },
                    Err(mut trailers) => {
                        // After the data: the held bytes go first.
                        this.done = true;
                        this.scrub.bytes(&mut this.carry);
                        if let Some(t) = trailers.trailers_mut() {
                            this.scrub.headers(t);
                        }
                        this.trailers = Some(trailers);
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.carry.is_empty() && self.queued.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // The same length: what the target's body has left, and what is
        // held or queued.
        let inner = self.inner.size_hint();
        let held = (self.carry.len() + self.queued.as_ref().map_or(0, Bytes::len)) as u64;
        let mut h = SizeHint::new();
        h.set_lower(inner.lower().saturating_add(held));
        if let Some(u) = inner.upper() {
            h.set_upper(u.saturating_add(held));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body of these frames.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn body_of(chunks: &[&'static [u8]]) -> Body {
        Chunks(chunks.iter().map(|c| Bytes::from_static(c)).collect()).boxed()
    }

    #[tokio::test]
    async fn the_secret_is_overwritten_in_headers_and_across_frames() {
        let s = Scrubber::new(b"sk-CANARY-1234").unwrap();
        let resp = Response::builder()
            .header("x-echo", "Bearer sk-CANARY-1234")
            .body(body_of(&[
                b"{\"key\":\"sk-CA",
                b"NARY-12",
                b"34\",\"sk-CANARY-1234\":1}",
            ]))
            .unwrap();
        let resp = s.response(resp).unwrap();
        assert_eq!(resp.headers()["x-echo"], "Bearer **************");
        // Compressed although asked not to: refused.
        for (h, v) in [
            ("content-encoding", "gzip"),
            ("content-encoding", "identity, deflate"),
            ("transfer-encoding", "gzip, chunked"),
        ] {
            let r = Response::builder().header(h, v).body(body_of(&[])).unwrap();
            assert!(s.response(r).is_err(), "{h}: {v}");
        }
        // The target's token is not quoted (re-review: the key sent as
        // the content coding came back in the refusal).
        let r = Response::builder()
            .header("content-encoding", "sk-CANARY-1234")
            .body(body_of(&[]))
            .unwrap();
        let e = s.response(r).err().unwrap();
        assert!(!e.to_ascii_lowercase().contains("canary"), "{e}");
        assert_eq!(s.text("a sk-canary-1234 b"), "a ************** b");
        for (h, v) in [
            ("content-encoding", "identity"),
            ("transfer-encoding", "chunked"),
        ] {
            let r = Response::builder().header(h, v).body(body_of(&[])).unwrap();
            assert!(s.response(r).is_ok(), "{h}: {v}");
        }
        let out = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &out[..],
            b"{\"key\":\"**************\",\"**************\":1}".as_slice()
        );
        assert!(Scrubber::new(b"short").is_none());
        // With `/` escaped, as JSON writers do (code review).
        let slashed = Scrubber::new(b"AbC/dEf+9876").unwrap();
        let mut b = br#"{"k":"AbC\/dEf+9876","l":"abc\/def+9876"}"#.to_vec();
        assert_eq!(slashed.bytes(&mut b), 2);
        assert_eq!(&b, br#"{"k":"*************","l":"*************"}"#);
        // Echoed case-folded, in a value or a header's name (re-review).
        let mut b = b"k=sk-canary-1234 K=SK-CANARY-1234".to_vec();
        assert_eq!(s.bytes(&mut b), 2);
        assert_eq!(&b, b"k=************** K=**************");
        let mut h = http::HeaderMap::new();
        h.insert("x-sk-canary-1234", HeaderValue::from_static("1"));
        h.insert("x-ok", HeaderValue::from_static("1"));
        s.headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-ok"));
        // Overlapping copies leave nothing of either (code review).
        let o = Scrubber::new(b"abababab").unwrap();
        let mut b = b"xabababababy".to_vec();
        assert_eq!(o.bytes(&mut b), 2);
        assert_eq!(&b, b"x**********y");
    }

    /// Re-encoded by the target (left for later last stop: base64, hex,
    /// mixed case, `\u` escapes): every spelling is overwritten, and one
    /// byte off is not matched.
    #[test]
    fn spellings_a_target_writes_are_overwritten() {
        use base64::Engine as _;
        let secret = b"sk-Pr0j/Key+9=&<x>'\"z";
        let packed = Scrubber::new(secret).unwrap();
        // Where the CPU has no Teddy: the same answers.
        let general = Scrubber {
            search: Arc::new(Search::general(&spellings(secret)).unwrap()),
            len: packed.len,
        };
        let b64 = |e: &base64::engine::GeneralPurpose, lead: &[u8]| {
            let mut framed = lead.to_vec();
            framed.extend_from_slice(secret);
            framed.extend_from_slice(b"!?");
            e.encode(&framed)
        };
        let std = &base64::engine::general_purpose::STANDARD;
        let url = &base64::engine::general_purpose::URL_SAFE;
        let plain: Vec<String> = vec![
            String::from_utf8(secret.to_vec()).unwrap(),
            "SK-PR0J/KEY+9=&<X>'\"Z".into(),
            "Sk-pR0J/kEy+9=&<x>'\"z".into(),
            r#"sk-Pr0j\/Key+9=&<x>'\"z"#.into(),
            r#"sk-Pr0j/Key+9\u003d\u0026\u003cx\u003e\u0027\"z"#.into(),
            r#"sk-Pr0j/Key+9\u003D\u0026\u003Cx\u003E\u0027\"z"#.into(),
            "sk-Pr0j/Key+9=&amp;&lt;x&gt;&#39;&quot;z".into(),
            "sk-Pr0j%2FKey%2B9%3D%26%3Cx%3E%27%22z".into(),
            "sk-Pr0j/Key+9=%26%3Cx%3E%27%22z".into(),
            hex::encode(secret),
            hex::encode_upper(secret),
        ];
        // Each with how many characters may be left: the brackets, and in
        // base64 what encodes the bytes around the secret (and the two
        // characters that mix them with its own).
        let mut cases: Vec<(String, usize)> = plain.into_iter().map(|c| (c, 2)).collect();
        for e in [std, url] {
            for lead in [&b""[..], b"a", b"ab", b"Basic user:"] {
                cases.push((b64(e, lead), 2 + (lead.len() + 2).div_ceil(3) * 4 + 2));
            }
        }
        for s in [&packed, &general] {
            for (case, may_be_left) in &cases {
                let mut b = format!("<{case}>").into_bytes();
                assert!(s.bytes(&mut b) >= 1, "{case}");
                let left = b.iter().filter(|&&c| c != b'*').count();
                assert!(
                    left <= *may_be_left,
                    "{case}: {}",
                    String::from_utf8_lossy(&b)
                );
            }
            // One byte changed: nothing matched.
            let mut b = b"sk-Pr0j/Key+9=&<x>'\"y sk-Pr0j/Kez+9".to_vec();
            assert_eq!(s.bytes(&mut b), 0);
        }
        assert!(matches!(*packed.search, Search::Packed(_)) || !cfg!(target_arch = "x86_64"));
    }

    /// Re-review: escapers that write other sets of characters escaped
    /// than the spellings name (.NET, Go, Python, ESAPI, quoted-printable,
    /// C) are read through, and a secret broken by blanks is found in a
    /// frame that holds an escape.
    #[test]
    fn escapes_of_any_character_set_are_read_through() {
        use base64::Engine as _;
        let secret = "sk-LIVE-9f2Qx7/Ab+Zk=Tq8";
        let s = Scrubber::new(secret.as_bytes()).unwrap();
        let each = |f: &dyn Fn(u8) -> String| secret.bytes().map(f).collect::<String>();
        let b64 =
            base64::engine::general_purpose::STANDARD.encode(format!("x-api-key: {secret}\r\n"));
        let wrapped = format!("{}\n{}", &b64[..20], &b64[20..]);
        let cases = [
            each(&|b| format!("\\u{b:04x}")),
            each(&|b| format!("\\x{b:02X}")),
            each(&|b| format!("&#{b};")),
            "sk-LIVE-9f2Qx7/Ab\\u002BZk=Tq8".to_string(),
            "sk-LIVE-9f2Qx7/Ab%2BZk%3DTq8".into(),
            "sk-LIVE-9f2Qx7%2FAb+Zk=Tq8".into(),
            "sk-LIVE-9f2Qx7%252FAb%252BZk%253DTq8".into(),
            "sk-LIVE-9f2Qx7/Ab&#43;Zk=Tq8".into(),
            "sk-LIVE-9f2Qx7&#x2F;Ab&#x2b;Zk&#x3d;Tq8".into(),
            "sk-LIVE-9f2Qx7&sol;Ab&plus;Zk&equals;Tq8".into(),
            "sk-LIVE-9f2Qx7/Ab+Zk=3DTq8".into(),
            "sk-LIVE-9f2Qx7/Ab+Zk=3D=\r\nTq8".into(),
            "sk-LIVE-9f2Q x7/Ab+Zk=Tq8".into(),
            format!("{wrapped}&"),
        ];
        for case in &cases {
            let mut b = format!("<{case}>").into_bytes();
            assert!(s.bytes(&mut b) >= 1, "{case}");
            let left = b.iter().filter(|&&c| c != b'*').count();
            // The brackets, and what encodes the dump's other bytes.
            let may_be_left = if case.starts_with(&b64[..4]) { 40 } else { 2 };
            assert!(
                left <= may_be_left,
                "{case}: {}",
                String::from_utf8_lossy(&b)
            );
            assert!(s.found(&format!("<{case}>").into_bytes()), "{case}");
        }
        // Go's encoding/json escapes `<>&` but not `='`.
        let go = Scrubber::new(b"Ab&c=d'e<f\"g-12345").unwrap();
        let mut b = br#"{"k":"Ab\u0026c=d'e\u003cf\"g-12345"}"#.to_vec();
        assert_eq!(go.bytes(&mut b), 1);
        let stars = "*".repeat(r#"Ab\u0026c=d'e\u003cf\"g-12345"#.len());
        assert_eq!(b, format!(r#"{{"k":"{stars}"}}"#).into_bytes());
    }

    /// A spelling escaped character by character and split across two
    /// frames at every point: the join reads it whole (own review of this
    /// change; wider spellings across frames are left open).
    #[tokio::test]
    async fn an_escaped_spelling_split_across_frames_is_overwritten() {
        let secret = "sk-LIVE-9f2Qx7/Ab+Zk=Tq8";
        let s = Scrubber::new(secret.as_bytes()).unwrap();
        let spelled: String = secret.bytes().map(|b| format!("\\u{b:04x}")).collect();
        let whole = format!("{{\"k\":\"{spelled}\"}}");
        for cut in 1..whole.len() {
            let (a, b) = whole.split_at(cut);
            let chunks = Chunks(
                [
                    Bytes::copy_from_slice(a.as_bytes()),
                    Bytes::copy_from_slice(b.as_bytes()),
                ]
                .into_iter()
                .collect(),
            );
            let out = Scrubbed::new(chunks.boxed(), s.clone())
                .collect()
                .await
                .unwrap()
                .to_bytes();
            let stars = "*".repeat(spelled.len());
            assert_eq!(
                out,
                format!("{{\"k\":\"{stars}\"}}").as_bytes(),
                "cut at {cut}"
            );
        }
    }

    /// Review: bytes that could begin the secret waited for the next frame
    /// and others did not, so a caller timing its own echoed guesses read
    /// the key byte by byte. What waits is the last `len - 1` bytes,
    /// whatever they are.
    #[test]
    fn what_waits_does_not_depend_on_the_bytes() {
        let s = Scrubber::new(b"sk-CANARY-1234").unwrap();
        for guess in [&b"#sk-C"[..], b"#sk-X", b"#zzzz"] {
            let mut b = Scrubbed::new(body_of(&[]), s.clone());
            let (first, second) = b.next_data(Bytes::copy_from_slice(guess));
            assert_eq!((first, second), (None, None), "{guess:?}");
            assert_eq!(&b.carry[..], guess);
            let long = Bytes::from(b"0123456789abcdefghij".repeat(50));
            let (first, second) = b.next_data(long.clone());
            // All that waited, then all but the last `len - 1` bytes.
            let mut out = first.unwrap().to_vec();
            out.extend_from_slice(&second.unwrap_or_default());
            let keep = s.len - 1;
            let mut joined = guess.to_vec();
            joined.extend_from_slice(&long);
            let at = joined.len().saturating_sub(keep);
            assert_eq!(out, joined[..at], "{guess:?}");
            assert_eq!(&b.carry[..], &joined[at..]);
        }
    }

    /// A body of what arrives on a channel.
    struct Rx(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for Rx {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn what_waits_goes_on_after_the_hold_or_the_end() {
        let s = Scrubber::new(b"sk-CANARY-1234").unwrap();
        // A stream that sends one event and then nothing for a while.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let mut b = Scrubbed::new(Rx(rx).boxed(), s.clone());
        let event = b"data: {\"n\":1}\n\n";
        tx.send(Bytes::from_static(event)).await.unwrap();
        let mut got = Vec::new();
        let started = std::time::Instant::now();
        while got.len() < event.len() {
            let f = b.frame().await.unwrap().unwrap();
            got.extend_from_slice(f.data_ref().unwrap());
        }
        assert_eq!(&got, event);
        let waited = started.elapsed();
        assert!(waited >= HOLD && waited < HOLD * 50, "{waited:?}");
        // A secret split across frames within the hold: overwritten.
        tx.send(Bytes::from_static(b"x sk-CAN")).await.unwrap();
        tx.send(Bytes::from_static(b"ARY-1234 y")).await.unwrap();
        drop(tx);
        let rest = b.collect().await.unwrap().to_bytes();
        assert_eq!(&rest[..], b"x ************** y");
    }
}
