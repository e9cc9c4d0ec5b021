//! Masking responses on their way back to the caller. A body that cannot
//! be inspected is never passed raw: it is refused, or masked as text when
//! the rule says so.

use crate::scrub::Scrubber;
use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use portcullis_mask::{OnError, Rule, Stats, Vault};

use crate::{Body, full};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    /// JSON per line (ndjson, JSON Lines, JSON text sequences).
    Lines,
    /// Server-sent events: `data:` lines may each hold JSON.
    Events,
    Text,
    Form,
    /// Images, archives, octet streams: not text the masker can read.
    /// Refused unless the rule lists the type to pass.
    Opaque,
}

/// A content type's essence: lower-case, without parameters.
pub(crate) fn essence(content_type: Option<&HeaderValue>) -> Option<String> {
    let ct = content_type?.to_str().ok()?;
    Some(
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

fn kind(content_type: Option<&HeaderValue>) -> Kind {
    if content_type.is_some_and(|v| v.to_str().is_err()) {
        return Kind::Opaque;
    }
    let Some(essence) = essence(content_type) else {
        // Undeclared: inspect it as text rather than trust it.
        return Kind::Text;
    };
    if essence.is_empty() {
        return Kind::Text;
    }
    if is_lines(&essence) {
        Kind::Lines
    } else if essence == "text/event-stream" {
        Kind::Events
    } else if essence == "application/json" || essence.ends_with("+json") {
        Kind::Json
    } else if essence == "application/x-www-form-urlencoded" {
        Kind::Form
    } else if essence.starts_with("text/")
        || essence == "application/xml"
        || essence.ends_with("+xml")
        || essence.ends_with("+yaml")
        || matches!(
            essence.as_str(),
            "application/javascript"
                | "application/x-javascript"
                | "application/ecmascript"
                | "application/yaml"
                | "application/x-yaml"
                | "application/csv"
                | "application/sql"
                | "application/graphql"
        )
    {
        Kind::Text
    } else {
        Kind::Opaque
    }
}

/// Types that carry one JSON document per line.
fn is_lines(essence: &str) -> bool {
    matches!(
        essence,
        "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonl"
            | "application/jsonlines"
            | "application/x-jsonlines"
            | "application/json-seq"
    ) || essence.ends_with("+ndjson")
        || essence.ends_with("+jsonl")
}

/// The charset a content type declares, lower-case and unquoted.
fn charset(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').trim().to_ascii_lowercase())
    })
}

/// Whether the masker reads a body of this charset as it is: UTF-8 and
/// its ASCII subset. Anything else (UTF-16 is valid UTF-8 full of NULs,
/// UTF-7 spells `@` as `+AEA-`) hides every value from the detectors.
fn readable_charset(charset: &str) -> bool {
    matches!(charset, "utf-8" | "utf8" | "us-ascii" | "ascii")
}

/// Why a body could not be masked (said to the caller in a 502).
#[derive(Debug)]
pub struct MaskFailure(pub String);

/// Why [`mask_response`] gives no response: the rules could not be
/// applied, or the target broke off its response before the body was
/// whole (not a masking failure: said as the target's fault).
#[derive(Debug)]
pub enum ResponseError {
    Mask(MaskFailure),
    Target(String),
}

impl From<MaskFailure> for ResponseError {
    fn from(f: MaskFailure) -> Self {
        ResponseError::Mask(f)
    }
}

/// Bodies larger than this are decoded and masked on the blocking pool:
/// a multi-megabyte body takes milliseconds of CPU that would otherwise
/// stall every other caller on the async worker. Smaller ones stay inline,
/// where the hand-off would cost more than the work.
const INLINE_MAX: usize = 64 * 1024;

/// Mask `resp` under `rule`. Bodies are read whole, up to the rule's
/// `max_body_bytes` (after decompression too), so memory stays bounded.
pub async fn mask_response(
    rule: &Arc<Rule>,
    method: &Method,
    resp: Response<Incoming>,
    stats: &mut Stats,
    vault: Option<&Arc<Mutex<Vault>>>,
    scrub: Option<&Scrubber>,
) -> Result<Response<Body>, ResponseError> {
    let (mut parts, body) = resp.into_parts();
    // The credential the gateway added is overwritten before masking
    // rewrites anything: a masker that replaced digit groups of an echoed
    // hex dump (`[PHONE]`) had broken the key's spelling, and the rest of
    // it reached the caller past the scrubber that runs after (review of
    // the scrubber's squeeze).
    if let Some(s) = scrub {
        s.headers(&mut parts.headers);
    }
    // HTTP/1.1's reason phrase is the target's free text (`404 no user
    // carol@example.com`), kept by hyper in an extension: never read,
    // so never sent.
    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    drop_body_oracles(&mut parts.headers);
    mask_headers(rule, &mut parts.headers, stats, vault)?;
    mask_content_type(rule, &mut parts.headers, stats, vault)?;
    let no_body = method == Method::HEAD
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
        || parts.status.is_informational();
    let ct = parts.headers.get(header::CONTENT_TYPE).cloned();
    let ct = ct.as_ref();
    let mut k = kind(ct);
    let passed = k == Kind::Opaque && essence(ct).is_some_and(|e| rule.passes_content_type(&e));
    if no_body {
        // The unmasked body's length, on HEAD (and a 304's), says what a
        // GET would have been before masking.
        parts.headers.remove(header::CONTENT_LENGTH);
        return Ok(Response::from_parts(parts, without_trailers(body)));
    }
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let body = if passed {
        // A passed type is a label the target writes, and often one the
        // caller chooses (`response-content-type`, `?ct=`): a review read
        // a whole JSON answer unmasked as `image/png`. Passed only as
        // bytes that are not text, and as they came.
        let (head, body) = sniff(body).await?;
        match passing(&encoding, &head) {
            Passing::Bytes => {
                return Ok(Response::from_parts(parts, without_trailers(body)));
            }
            Passing::Text => k = Kind::Text,
            Passing::Encoded => {
                return Err(ResponseError::Mask(MaskFailure(format!(
                    "the response's type is passed by rule {:?} but its body is content-encoded ({encoding:?}), so what it holds cannot be checked",
                    rule.name
                ))));
            }
        }
        body
    } else {
        Prefixed {
            head: None,
            trailers: None,
            inner: body,
        }
    };
    readable(rule, k, ct)?;
    let limit = rule.max_body_bytes;
    let raw = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ResponseError::Mask(MaskFailure(format!(
                    "the response body exceeds the masking limit of {limit} bytes (rule {:?})",
                    rule.name
                )))
            } else {
                ResponseError::Target(format!("the target broke off its response: {e}"))
            }
        })?
        .to_bytes();
    let masked = if raw.len() <= INLINE_MAX {
        mask_body(rule, k, &encoding, &raw, stats, vault.map(|v| &**v), scrub)?
    } else {
        let (rule, vault, scrub) = (rule.clone(), vault.cloned(), scrub.cloned());
        let mut taken = std::mem::take(stats);
        let (masked, taken) = tokio::task::spawn_blocking(move || {
            let masked = mask_body(
                &rule,
                k,
                &encoding,
                &raw,
                &mut taken,
                vault.as_deref(),
                scrub.as_ref(),
            );
            (masked, taken)
        })
        .await
        .map_err(|e| MaskFailure(format!("masking failed: {e}")))?;
        *stats = taken;
        masked?
    };

    // The body is now identity-encoded and of a new length.
    for h in [
        header::CONTENT_ENCODING,
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
    ] {
        parts.headers.remove(h);
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(masked.len()));
    Ok(Response::from_parts(parts, full(Bytes::from(masked))))
}

/// How much of a body is read to tell text from bytes.
const SNIFF: usize = 512;

/// The first [`SNIFF`] bytes of `body` (fewer if it ends first), and the
/// body again, whole.
async fn sniff<B>(mut body: B) -> Result<(Bytes, Prefixed<B>), ResponseError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut head = bytes::BytesMut::new();
    let mut trailers = None;
    while head.len() < SNIFF {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                return Err(ResponseError::Target(format!(
                    "the target broke off its response: {e}"
                )));
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => head.extend_from_slice(&d),
                Err(t) => {
                    trailers = Some(t);
                    break;
                }
            },
        }
    }
    let head = head.freeze();
    Ok((
        head.clone(),
        Prefixed {
            head: (!head.is_empty()).then_some(head),
            trailers,
            inner: body,
        },
    ))
}

/// A body whose first bytes were read ahead.
struct Prefixed<B> {
    head: Option<Bytes>,
    trailers: Option<http_body::Frame<Bytes>>,
    inner: B,
}

impl<B> http_body::Body for Prefixed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        if let Some(h) = self.head.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(h))));
        }
        if let Some(t) = self.trailers.take() {
            return std::task::Poll::Ready(Some(Ok(t)));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
}

/// What a body of a passed type is.
#[derive(Debug, PartialEq, Eq)]
enum Passing {
    /// A binary format by its signature: passed as it came.
    Bytes,
    /// Anything else under a passed label: masked as text (refused if it
    /// is not text).
    Text,
    /// Compressed: what it holds cannot be told.
    Encoded,
}

/// Signatures of binary formats a rule may pass, at the offset each is
/// at. By signature rather than by "does not look like text": one DEL or
/// stray Latin-1 byte a caller got echoed near the top had passed a whole
/// JSON answer labelled `image/png` (code review).
const SIGNATURES: &[(usize, &[u8])] = &[
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"\xff\xd8\xff"),
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (0, b"%PDF-"),
    (0, b"PK\x03\x04"),
    (0, b"PK\x05\x06"),
    (0, b"\x1f\x8b"),
    (0, b"BZh"),
    (0, b"\xfd7zXZ\x00"),
    (0, b"\x28\xb5\x2f\xfd"),
    (0, b"7z\xbc\xaf\x27\x1c"),
    (0, b"wOFF"),
    (0, b"wOF2"),
    (0, b"\x00\x01\x00\x00"),
    (0, b"OTTO"),
    (0, b"OggS"),
    (0, b"fLaC"),
    (0, b"ID3"),
    (0, b"\x00asm"),
    (0, b"\x1a\x45\xdf\xa3"),
    (0, b"8BPS"),
    (0, b"II*\x00"),
    (0, b"MM\x00*"),
    (0, b"\x00\x00\x01\x00"),
    (0, b"PAR1"),
    (0, b"SQLite format 3\x00"),
    (0, b"\x7fELF"),
    (4, b"ftyp"),
    (8, b"WEBP"),
    (8, b"WAVE"),
    (8, b"AVI "),
];

fn passing(encoding: &str, head: &[u8]) -> Passing {
    if !matches!(encoding, "" | "identity") {
        return Passing::Encoded;
    }
    let signed = SIGNATURES
        .iter()
        .any(|(at, sig)| head.get(*at..at + sig.len()) == Some(*sig));
    if signed || head.is_empty() {
        Passing::Bytes
    } else {
        Passing::Text
    }
}

/// A passed or bodiless response's body as it came, less its trailers:
/// trailers are headers sent after the body, which nothing here reads.
fn without_trailers<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<crate::BoxError>,
{
    body.map_frame(|f| match f.into_data() {
        Ok(data) => http_body::Frame::data(data),
        Err(_) => http_body::Frame::data(Bytes::new()),
    })
    .map_err(Into::into)
    .boxed()
}

/// Whether a response header is a validator or digest of the unmasked
/// body: with it, a caller checks a guess of the body offline (a digest)
/// or, sending it back, online (an ETag's 304). Named as the standards
/// and the big stores name them (`Content-Digest`, `x-amz-checksum-*`,
/// `x-goog-hash`).
fn reveals_body(name: &str) -> bool {
    const EXACT: &[&str] = &["etag", "content-md5", "digest", "x-goog-hash"];
    const WITHIN: &[&str] = &[
        "digest",
        "checksum",
        "md5",
        "sha1",
        "sha256",
        "crc32",
        "crc64",
        // The stored object's size: the unmasked body's length.
        "stored-content-length",
    ];
    EXACT.contains(&name) || WITHIN.iter().any(|w| name.contains(w))
}

/// Remove every header [`reveals_body`] names.
fn drop_body_oracles(h: &mut http::HeaderMap) {
    let names: Vec<header::HeaderName> = h
        .keys()
        .filter(|n| reveals_body(n.as_str()))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
}

/// The Content-Type as the caller gets it: the type, a charset the
/// masker reads, and a multipart boundary (the body it delimits passes
/// only where the rule passes the type, holding it anyway). Any other
/// parameter (`name=carol@example.com`) is the target's free text:
/// dropped. What is kept goes through the detectors too.
fn mask_content_type(
    rule: &Rule,
    h: &mut http::HeaderMap,
    stats: &mut Stats,
    vault: Option<&Arc<Mutex<Vault>>>,
) -> Result<(), MaskFailure> {
    let values: Vec<HeaderValue> = h.get_all(header::CONTENT_TYPE).iter().cloned().collect();
    if values.is_empty() {
        return Ok(());
    }
    h.remove(header::CONTENT_TYPE);
    let mut guard = vault.and_then(|v| v.lock().ok());
    let vault = &mut guard.as_deref_mut();
    for v in values {
        // Not text: nothing to keep (the body is then refused as opaque).
        let Ok(text) = v.to_str() else { continue };
        let kept = content_type_kept(text);
        let masked = rule.masker.mask_str_in(&kept, stats, vault);
        let value = HeaderValue::from_str(&masked)
            .map_err(|_| MaskFailure("the masked Content-Type is not a header value".into()))?;
        h.append(header::CONTENT_TYPE, value);
    }
    Ok(())
}

/// `type/subtype`, with the charset where the masker reads it and a
/// multipart boundary.
fn content_type_kept(text: &str) -> String {
    let mut parts = text.split(';');
    let mut kept = parts.next().unwrap_or("").trim().to_string();
    let multipart = kept.to_ascii_lowercase().starts_with("multipart/");
    let mut charset = false;
    for p in parts {
        let Some((name, value)) = p.split_once('=') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        // The first charset stays, the one [`readable`] checks (a client
        // may read the last of two; code review); it is masked with the
        // rest.
        let keep = match name.as_str() {
            "charset" => !std::mem::replace(&mut charset, true),
            "boundary" => multipart,
            _ => false,
        };
        if keep {
            kept.push_str(&format!("; {name}={}", value.trim()));
        }
    }
    kept
}

/// A body the masker would read is refused when its declared charset is
/// one the detectors cannot read (absent means UTF-8).
fn readable(rule: &Rule, k: Kind, ct: Option<&HeaderValue>) -> Result<(), MaskFailure> {
    if k == Kind::Opaque {
        return Ok(());
    }
    let declared = ct.and_then(|v| v.to_str().ok()).and_then(charset);
    match declared {
        Some(c) if !readable_charset(&c) => Err(MaskFailure(format!(
            "the response declares charset {c:?}, which the masker cannot read (only UTF-8); refused by rule {:?}",
            rule.name
        ))),
        _ => Ok(()),
    }
}

/// Response headers carry data too (`X-User-Email`, a `Location` naming
/// a person): every value is masked, except the headers that only
/// describe the message. A value that is not text is removed (it cannot
/// be inspected). The percent-decoded form of a URL is masked as well.
fn mask_headers(
    rule: &Rule,
    h: &mut http::HeaderMap,
    stats: &mut Stats,
    vault: Option<&Arc<Mutex<Vault>>>,
) -> Result<(), MaskFailure> {
    let mut guard = vault.and_then(|v| v.lock().ok());
    let vault = &mut guard.as_deref_mut();
    let names: Vec<header::HeaderName> = h
        .keys()
        .filter(|n| !STRUCTURAL.contains(&n.as_str()))
        .cloned()
        .collect();
    for name in names {
        let values: Vec<HeaderValue> = h.get_all(&name).iter().cloned().collect();
        let mut out = Vec::with_capacity(values.len());
        let mut changed = false;
        for v in values {
            let Ok(text) = v.to_str() else {
                changed = true;
                continue;
            };
            let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
            let masked = match rule.masker.mask_str_in(&decoded, stats, vault) {
                std::borrow::Cow::Owned(m) => Some(m),
                std::borrow::Cow::Borrowed(_) if decoded != text => {
                    match rule.masker.mask_str_in(text, stats, vault) {
                        std::borrow::Cow::Owned(m) => Some(m),
                        std::borrow::Cow::Borrowed(_) => None,
                    }
                }
                std::borrow::Cow::Borrowed(_) => None,
            };
            match masked {
                Some(m) => {
                    changed = true;
                    let safe: String = m
                        .chars()
                        .map(|c| {
                            if c.is_ascii_graphic() || c == ' ' {
                                c
                            } else {
                                '?'
                            }
                        })
                        .collect();
                    let value = HeaderValue::from_str(&safe).map_err(|_| {
                        MaskFailure(format!("the masked {name} header is not a header value"))
                    })?;
                    out.push(value);
                }
                None => out.push(v),
            }
        }
        if changed {
            h.remove(&name);
            for v in out {
                h.append(name.clone(), v);
            }
        }
    }
    Ok(())
}

/// Headers that only describe the message (lengths, types, times,
/// caching, security policy) and are kept as they are.
const STRUCTURAL: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "date",
    "cache-control",
    "expires",
    "last-modified",
    "etag",
    "vary",
    "age",
    "accept-ranges",
    "strict-transport-security",
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "retry-after",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-allow-credentials",
    "access-control-max-age",
    "access-control-expose-headers",
];

/// Decode and mask one whole body (CPU only: no I/O).
fn mask_body(
    rule: &Rule,
    k: Kind,
    encoding: &str,
    raw: &[u8],
    stats: &mut Stats,
    vault: Option<&Mutex<Vault>>,
    scrub: Option<&Scrubber>,
) -> Result<Vec<u8>, MaskFailure> {
    let mut plain = decode(encoding, raw, rule.max_body_bytes)?;
    if let Some(s) = scrub {
        s.bytes(&mut plain);
    }
    if k != Kind::Opaque && plain.contains(&0) {
        // A NUL splits every value in two for the detectors (and is how
        // UTF-16 reads as UTF-8); no text body needs one.
        return Err(MaskFailure(format!(
            "the response body holds a NUL byte, which the masker cannot read past; refused by rule {:?}",
            rule.name
        )));
    }
    let mut guard = vault.and_then(|v| v.lock().ok());
    let vault = &mut guard.as_deref_mut();
    let masked: Vec<u8> = match k {
        Kind::Json => mask_json(rule, &plain, stats, vault)?,
        Kind::Form => mask_form(rule, &plain, stats, vault)?,
        Kind::Text | Kind::Lines | Kind::Events => {
            let text = utf8(rule, &plain)?;
            mask_text(rule, k, text, stats, vault)?.into_bytes()
        }
        // An empty body says nothing; anything else is refused.
        Kind::Opaque if plain.is_empty() => Vec::new(),
        Kind::Opaque => {
            return Err(MaskFailure(format!(
                "the response's content type cannot be inspected; refused by rule {:?} (list it in pass_content_types to let it through)",
                rule.name
            )));
        }
    };
    Ok(masked)
}

/// A body declared JSON (a UTF-8 byte order mark before it is not part
/// of it); one that is not is refused, or masked as text where the rule
/// says so.
fn mask_json(
    rule: &Rule,
    plain: &[u8],
    stats: &mut Stats,
    vault: &mut Option<&mut Vault>,
) -> Result<Vec<u8>, MaskFailure> {
    let body = plain.strip_prefix(BOM.as_bytes()).unwrap_or(plain);
    match rule.masker.mask_json_bytes_in(body, stats, vault) {
        Ok(b) => Ok(b),
        Err(e) => match rule.on_error {
            OnError::Refuse => Err(MaskFailure(format!(
                "the response declares JSON but {e}; refused by rule {:?} (on_error = \"refuse\")",
                rule.name
            ))),
            OnError::MaskAsText => {
                let text = utf8(rule, plain)?;
                Ok(mask_text(rule, Kind::Text, text, stats, vault)?.into_bytes())
            }
        },
    }
}

const BOM: &str = "\u{feff}";

fn utf8<'a>(rule: &Rule, plain: &'a [u8]) -> Result<&'a str, MaskFailure> {
    std::str::from_utf8(plain).map_err(|_| {
        MaskFailure(format!(
            "the response body is not UTF-8 text; refused by rule {:?}",
            rule.name
        ))
    })
}

/// A text body. Without key or path rules, the detectors over the whole
/// text. With them, key rules must not hang on the declared type: a body
/// that is a JSON document is masked as one, and so is each line that is
/// one (ndjson, an event's `data:`); the rest is text, refused when it
/// names a rule's key (its value may sit beside it in any shape: XML,
/// JSONP, YAML), masked by the detectors otherwise.
fn mask_text(
    rule: &Rule,
    k: Kind,
    text: &str,
    stats: &mut Stats,
    vault: &mut Option<&mut Vault>,
) -> Result<String, MaskFailure> {
    let m = &rule.masker;
    if k == Kind::Text && !m.has_key_rules() {
        return Ok(m.mask_str_in(text, stats, vault).into_owned());
    }
    let body = text.strip_prefix(BOM).unwrap_or(text);
    if k != Kind::Events
        && looks_json(body)
        && let Ok(b) = m.mask_json_bytes_in(body.as_bytes(), stats, vault)
    {
        return String::from_utf8(b).map_err(|_| MaskFailure("masked JSON is not UTF-8".into()));
    }
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for line in body.split_inclusive('\n') {
        match json_line(rule, k, line, stats, vault) {
            Some(masked) => {
                out.push_str(&text_run(rule, &run, stats, vault)?);
                run.clear();
                out.push_str(&masked);
            }
            None => run.push_str(line),
        }
    }
    out.push_str(&text_run(rule, &run, stats, vault)?);
    Ok(out)
}

/// Whether a text opens a JSON object or array.
fn looks_json(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\r', '\n', '\u{1e}'])
        .starts_with(['{', '['])
}

/// One line (with its end) masked as JSON where it holds a document:
/// after an event's `data:` field name, or a JSON text sequence's record
/// separator. `None`: not JSON, left to the text around it.
fn json_line(
    rule: &Rule,
    k: Kind,
    line: &str,
    stats: &mut Stats,
    vault: &mut Option<&mut Vault>,
) -> Option<String> {
    let content = line.trim_end_matches(['\r', '\n']);
    let end = &line[content.len()..];
    let (field, payload) = match k {
        Kind::Events => {
            let rest = content.strip_prefix("data:")?;
            let payload = rest.strip_prefix(' ').unwrap_or(rest);
            content.split_at(content.len() - payload.len())
        }
        _ => {
            let payload = content.trim_start_matches('\u{1e}');
            content.split_at(content.len() - payload.len())
        }
    };
    if !looks_json(payload) {
        return None;
    }
    let masked = rule
        .masker
        .mask_json_bytes_in(payload.as_bytes(), stats, vault)
        .ok()?;
    let masked = String::from_utf8(masked).ok()?;
    Some(format!("{field}{masked}{end}"))
}

/// Lines that are not JSON, masked together (a detector's pattern may
/// span lines): refused when they name a rule's key.
fn text_run(
    rule: &Rule,
    run: &str,
    stats: &mut Stats,
    vault: &mut Option<&mut Vault>,
) -> Result<String, MaskFailure> {
    if rule.masker.names_a_key(run) {
        return Err(names_a_key(rule));
    }
    Ok(rule.masker.mask_str_in(run, stats, vault).into_owned())
}

fn names_a_key(rule: &Rule) -> MaskFailure {
    MaskFailure(format!(
        "the response body cannot be read as JSON but names a key the rule masks by key; refused by rule {:?} (the value may sit beside the key in any shape)",
        rule.name
    ))
}

/// `a=b&c=d`: each key and value decoded, masked, encoded again. A key a
/// key rule names has its value masked by that rule; a value that is a
/// JSON document is masked as one.
fn mask_form(
    rule: &Rule,
    plain: &[u8],
    stats: &mut Stats,
    vault: &mut Option<&mut Vault>,
) -> Result<Vec<u8>, MaskFailure> {
    let text =
        std::str::from_utf8(plain).map_err(|_| MaskFailure("the form body is not UTF-8".into()))?;
    let mut out = Vec::with_capacity(plain.len());
    for (i, pair) in text.split('&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k);
        // Keys carry data too (`carol%40example.com=1`).
        match rule.masker.mask_str_in(&key, stats, vault) {
            std::borrow::Cow::Owned(masked) => {
                out.extend_from_slice(percent_encode(&masked).as_bytes())
            }
            std::borrow::Cow::Borrowed(_) => out.extend_from_slice(k.as_bytes()),
        }
        if pair.contains('=') {
            out.push(b'=');
            let masked = form_value(rule, &key, &percent_decode(v), stats, vault)?;
            out.extend_from_slice(percent_encode(&masked).as_bytes());
        }
    }
    Ok(out)
}

/// One form value under the rule: a key rule's, a JSON document's, or
/// the detectors' (refused when it names a rule's key, as a text body).
fn form_value(
    rule: &Rule,
    key: &str,
    value: &str,
    stats: &mut Stats,
    vault: &mut Option<&mut Vault>,
) -> Result<String, MaskFailure> {
    let m = &rule.masker;
    if let Some(masked) = m.mask_keyed_in(key, value, stats, vault) {
        return Ok(masked);
    }
    // A key that names a rule's key inside it (`user[password]`,
    // `user.password`): the value goes whole (code review).
    if m.names_a_key(key) {
        *stats.entry("field:form".into()).or_default() += 1;
        return Ok(String::new());
    }
    if !m.has_key_rules() {
        return Ok(m.mask_str_in(value, stats, vault).into_owned());
    }
    mask_text(rule, Kind::Text, value, stats, vault)
}

/// A form value as text (`+` is a space in forms).
fn percent_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// A form value as `application/x-www-form-urlencoded` writes it.
fn percent_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Undo a content encoding, reading at most `limit` bytes of output (a
/// small compressed body may expand without bound).
fn decode(encoding: &str, raw: &[u8], limit: usize) -> Result<Vec<u8>, MaskFailure> {
    let reader: Box<dyn Read + '_> = match encoding {
        "" | "identity" => return Ok(raw.to_vec()),
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(raw)),
        "br" => Box::new(brotli_decompressor::Decompressor::new(raw, 4096)),
        "zstd" => Box::new(
            ruzstd::decoding::StreamingDecoder::new(raw)
                .map_err(|e| MaskFailure(format!("the zstd body is invalid: {e}")))?,
        ),
        other => {
            return Err(MaskFailure(format!(
                "the response uses content encoding {other:?}, which cannot be inspected"
            )));
        }
    };
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| MaskFailure(format!("the {encoding} body could not be decoded: {e}")))?;
    if out.len() > limit {
        return Err(MaskFailure(format!(
            "the decoded response body exceeds the masking limit of {limit} bytes"
        )));
    }
    Ok(out)
}

/// A request with the caller's reversible tokens swapped back: in the
/// query string and in a JSON, text or form body (read whole, up to
/// `limit`). `None` when nothing changed.
pub fn reverse_query(query: &str, vault: &Vault) -> Option<String> {
    let mut changed = false;
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match vault.reverse(&percent_decode(v), str::to_string) {
                Some(orig) if pair.contains('=') => {
                    changed = true;
                    format!("{k}={}", percent_encode(&orig))
                }
                _ => pair.to_string(),
            }
        })
        .collect();
    changed.then(|| pairs.join("&"))
}

pub fn reverse_body(
    content_type: Option<&HeaderValue>,
    body: &[u8],
    vault: &Vault,
) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    match kind(content_type) {
        Kind::Json | Kind::Lines => vault
            .reverse(text, |o| {
                // Inside a JSON string: escape as JSON does, without quotes.
                let q = serde_json::to_string(o).unwrap_or_default();
                q[1..q.len().saturating_sub(1)].to_string()
            })
            .map(String::into_bytes),
        Kind::Form => reverse_query(text, vault).map(String::into_bytes),
        Kind::Text | Kind::Events => vault.reverse(text, str::to_string).map(String::into_bytes),
        Kind::Opaque => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn content_kinds() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            kind(Some(&h("application/json; charset=utf-8"))),
            Kind::Json
        );
        assert_eq!(kind(Some(&h("application/problem+json"))), Kind::Json);
        assert_eq!(kind(Some(&h("text/csv"))), Kind::Text);
        assert_eq!(
            kind(Some(&h("application/x-www-form-urlencoded"))),
            Kind::Form
        );
        assert_eq!(kind(Some(&h("image/png"))), Kind::Opaque);
        assert_eq!(kind(Some(&h("Application/Octet-Stream"))), Kind::Opaque);
        assert_eq!(kind(Some(&h("TEXT/Plain; Charset=UTF-8"))), Kind::Text);
        assert_eq!(kind(Some(&h("APPLICATION/JSON"))), Kind::Json);
        assert_eq!(kind(Some(&h("application/yaml"))), Kind::Text);
        assert_eq!(kind(None), Kind::Text);
    }

    #[test]
    fn headers_are_masked_but_structural_ones_kept() {
        let rs = portcullis_mask::RuleSet::new(&[portcullis_mask::MaskSpec::default()], Some(b"k"))
            .unwrap();
        let rule = rs.select("x", &[]).unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("x-user-email", HeaderValue::from_static("ada@example.com"));
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("https://t/users/ada%40example.com?x=1"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert("x-plain", HeaderValue::from_static("nothing here"));
        let mut stats = Stats::new();
        mask_headers(rule, &mut h, &mut stats, None).unwrap();
        assert_eq!(h["x-user-email"], "[EMAIL]");
        assert_eq!(h[header::LOCATION], "https://t/users/[EMAIL]?x=1");
        assert_eq!(h[header::CONTENT_TYPE], "text/plain");
        assert_eq!(h["x-plain"], "nothing here");
    }

    #[test]
    fn decoders_and_bombs() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&vec![b'a'; 10_000]).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decode("gzip", &gz, 20_000).unwrap().len(), 10_000);
        assert!(
            decode("gzip", &gz, 1_000)
                .unwrap_err()
                .0
                .contains("exceeds")
        );
        assert!(
            decode("compress", b"x", 10)
                .unwrap_err()
                .0
                .contains("cannot be inspected")
        );
        assert!(decode("gzip", b"not gzip", 10).is_err());
    }

    /// A rule with key rules (`secret_note`, `password`) and the default
    /// detectors.
    fn keyed() -> Arc<Rule> {
        let spec = portcullis_mask::MaskSpec {
            name: Some("strict".into()),
            fields: vec![portcullis_mask::FieldRule {
                keys: vec!["secret_note".into(), "password".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let rs = portcullis_mask::RuleSet::new(&[spec], Some(b"k")).unwrap();
        rs.select("x", &[]).unwrap().clone()
    }

    const DOC: &str = r#"{"user":{"email":"carol@example.com","secret_note":"TOPSECRET-1","password":"s3cr3tpw"}}"#;

    fn masked(rule: &Rule, ct: Option<&'static str>, body: &[u8]) -> Result<String, MaskFailure> {
        let ct = ct.map(HeaderValue::from_static);
        readable(rule, kind(ct.as_ref()), ct.as_ref())?;
        let out = mask_body(
            rule,
            kind(ct.as_ref()),
            "",
            body,
            &mut Stats::new(),
            None,
            None,
        )?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn clear(out: &str) -> bool {
        !["TOPSECRET", "s3cr3tpw", "carol@example.com", "carol%40"]
            .iter()
            .any(|v| out.contains(v))
    }

    // A target (or a caller choosing `?format=`) sends the same JSON under
    // another type: key rules held only for a body declared JSON.
    #[test]
    fn key_rules_hold_whatever_type_the_json_is_sent_under() {
        let rule = keyed();
        let bom = format!("\u{feff}{DOC}");
        let lines = format!("{DOC}\n{DOC}\r\n");
        let sse = format!("event: user\ndata: {DOC}\n\ndata:{DOC}\n\n");
        let seq = format!("\u{1e}{DOC}\n");
        let cases: &[(Option<&'static str>, &[u8])] = &[
            (Some("text/plain"), DOC.as_bytes()),
            (None, DOC.as_bytes()),
            (Some("text/html; charset=utf-8"), DOC.as_bytes()),
            (Some("application/json"), bom.as_bytes()),
            (Some("text/plain"), bom.as_bytes()),
            (Some("application/x-ndjson"), lines.as_bytes()),
            (Some("application/jsonl"), lines.as_bytes()),
            (Some("text/plain"), lines.as_bytes()),
            (Some("application/json-seq"), seq.as_bytes()),
            (Some("text/event-stream"), sse.as_bytes()),
        ];
        for (ct, body) in cases {
            let out = masked(&rule, *ct, body).unwrap_or_else(|e| panic!("{ct:?}: {}", e.0));
            assert!(clear(&out), "{ct:?}: {out}");
            assert!(out.contains("[SECRET_NOTE]"), "{ct:?}: {out}");
        }
        // The shape of each line is kept.
        let out = masked(&rule, Some("text/event-stream"), sse.as_bytes()).unwrap();
        assert!(out.starts_with("event: user\ndata: {"), "{out}");
        assert_eq!(out.matches("\n\n").count(), 2, "{out}");
    }

    #[test]
    fn a_text_body_that_names_a_key_but_is_not_json_is_refused() {
        let rule = keyed();
        let jsonp = format!("cb({DOC});");
        let cases: &[(Option<&'static str>, String)] = &[
            (Some("application/javascript"), jsonp.clone()),
            (None, jsonp),
            (
                Some("application/xml"),
                "<u><Secret_Note>TOPSECRET-1</Secret_Note></u>".into(),
            ),
            (
                Some("application/yaml"),
                "user:\n  PASSWORD: s3cr3tpw\n".into(),
            ),
            // One line of ndjson broken: the rest is not enough.
            (
                Some("application/x-ndjson"),
                format!("{DOC}\n{{\"password\": \"s3cr3tpw\"\n"),
            ),
        ];
        for (ct, body) in cases {
            let e = masked(&rule, *ct, body.as_bytes()).expect_err(body);
            assert!(
                e.0.contains("names a key") && e.0.contains("strict"),
                "{}",
                e.0
            );
        }
        // Text without a key's name is masked by the detectors, as before.
        let out = masked(&rule, Some("text/plain"), b"mail carol@example.com").unwrap();
        assert_eq!(out, "mail [EMAIL]");
        // Declared JSON that is not, masked as text where the rule says so:
        // the key's name still refuses it.
        let spec = portcullis_mask::MaskSpec {
            on_error: OnError::MaskAsText,
            fields: vec![portcullis_mask::FieldRule {
                keys: vec!["password".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let rs = portcullis_mask::RuleSet::new(&[spec], Some(b"k")).unwrap();
        let lax = rs.select("x", &[]).unwrap();
        let body = br#"cb({"password":"s3cr3tpw"})"#;
        assert!(masked(lax, Some("application/json"), body).is_err());
    }

    #[test]
    fn form_keys_are_masked_and_key_rules_apply_to_them() {
        let rule = keyed();
        let body = b"carol%40example.com=1&Secret_Note=TOPSECRET-1&n=x&data=%7B%22password%22%3A%22s3cr3tpw%22%7D";
        let out = masked(&rule, Some("application/x-www-form-urlencoded"), body).unwrap();
        assert!(clear(&out), "{out}");
        assert!(
            out.starts_with("%5BEMAIL%5D=1&Secret_Note=%5BSECRET_NOTE%5D&n=x&data="),
            "{out}"
        );
        // A key naming a rule's key inside it (`user[password]`): the
        // value goes (code review).
        for key in ["user%5Bpassword%5D", "user.password"] {
            let body = format!("{key}=s3cr3tpw");
            let out = masked(
                &rule,
                Some("application/x-www-form-urlencoded"),
                body.as_bytes(),
            )
            .unwrap();
            assert!(!out.contains("s3cr3tpw"), "{out}");
        }
        // Without key rules the key still goes through the detectors.
        let rs =
            portcullis_mask::RuleSet::new(&[portcullis_mask::MaskSpec::default()], None).unwrap();
        let plain = rs.select("x", &[]).unwrap();
        let out = masked(
            plain,
            Some("application/x-www-form-urlencoded"),
            b"carol%40example.com=1",
        )
        .unwrap();
        assert_eq!(out, "%5BEMAIL%5D=1");
    }

    // UTF-16 of ASCII is valid UTF-8 with a NUL after every character;
    // UTF-7 spells `@` as `+AEA-`: the detectors read neither.
    #[test]
    fn charsets_the_masker_cannot_read_and_nul_bytes_are_refused() {
        let rule = keyed();
        let utf16: Vec<u8> = "contact carol@example.com"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        for ct in [
            "text/plain; charset=utf-16le",
            "text/plain; charset=\"UTF-7\"",
            "application/json; Charset=ISO-8859-1",
            "application/x-www-form-urlencoded; charset=utf-16",
        ] {
            let e = masked(&rule, Some(ct), b"contact carol+AEA-example.com").unwrap_err();
            assert!(e.0.contains("charset"), "{ct}: {}", e.0);
        }
        for ct in [
            None,
            Some("text/plain"),
            Some("application/json"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let e = masked(&rule, ct, &utf16).unwrap_err();
            assert!(e.0.contains("NUL"), "{ct:?}: {}", e.0);
        }
        for ct in [
            "text/plain; charset=UTF-8",
            "text/plain; charset=us-ascii",
            "text/plain",
        ] {
            assert_eq!(masked(&rule, Some(ct), b"hi").unwrap(), "hi");
        }
    }

    #[test]
    fn content_type_parameters_are_the_targets_text_and_dropped() {
        assert_eq!(
            content_type_kept("text/plain; name=carol@example.com; charset=utf-8"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type_kept("multipart/mixed; boundary=XX; x=1"),
            "multipart/mixed; boundary=XX"
        );
        assert_eq!(
            content_type_kept("image/png; x=carol@example.com"),
            "image/png"
        );
        // Only the charset checked is kept (a client may read the last).
        assert_eq!(
            content_type_kept("text/plain; charset=utf-8; charset=utf-7"),
            "text/plain; charset=utf-8"
        );
        let rule = keyed();
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/carol@example.com; q=carol@example.com"),
        );
        mask_content_type(&rule, &mut h, &mut Stats::new(), None).unwrap();
        assert_eq!(h[header::CONTENT_TYPE], "text/[EMAIL]");
    }

    #[test]
    fn validators_and_digests_of_the_unmasked_body_are_dropped() {
        let mut h = http::HeaderMap::new();
        for n in [
            "etag",
            "content-md5",
            "digest",
            "content-digest",
            "repr-digest",
            "want-repr-digest",
            "x-checksum-sha1",
            "x-amz-checksum-crc32",
            "x-goog-hash",
        ] {
            h.insert(
                header::HeaderName::from_static(n),
                HeaderValue::from_static("x"),
            );
        }
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        drop_body_oracles(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[tokio::test]
    async fn trailers_of_a_passed_body_are_dropped() {
        /// A body of a few frames, as a target streams them.
        struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);
        impl http_body::Body for Frames {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
                std::task::Poll::Ready(self.0.pop_front().map(Ok))
            }
        }
        let mut t = http::HeaderMap::new();
        t.insert("x-secret", HeaderValue::from_static("carol@example.com"));
        let body = Frames(
            [
                http_body::Frame::data(Bytes::from_static(b"PNG")),
                http_body::Frame::trailers(t),
            ]
            .into(),
        );
        let got = without_trailers(body).collect().await.unwrap();
        assert!(got.trailers().is_none());
        assert_eq!(got.to_bytes(), "PNG");
    }

    #[test]
    fn a_passed_type_is_passed_only_as_bytes() {
        assert_eq!(passing("", b"\x89PNG\r\n\x1a\n"), Passing::Bytes);
        assert_eq!(passing("", b"\xff\xd8\xff\xe0"), Passing::Bytes);
        assert_eq!(passing("identity", b"GIF89a\x01\x00"), Passing::Bytes);
        assert_eq!(passing("", b""), Passing::Bytes);
        assert_eq!(
            passing("", br#"{"email":"carol@example.com"}"#),
            Passing::Text
        );
        assert_eq!(passing("", "<svg>café</svg>".as_bytes()), Passing::Text);
        assert_eq!(passing("", b"RIFF\x10\x00\x00\x00WEBPVP8 "), Passing::Bytes);
        assert_eq!(passing("", b"\x00\x00\x00\x18ftypmp42"), Passing::Bytes);
        // Code review: a DEL or a stray byte near the top made JSON pass.
        assert_eq!(
            passing("", b"{\"q\":\"\x7f\",\"e\":\"c@x.io\"}"),
            Passing::Text
        );
        assert_eq!(passing("", b"{\"q\":\"\xe9\"}"), Passing::Text);
        assert_eq!(passing("", b"\x00\x01{\"a\":1}"), Passing::Text);
        assert_eq!(passing("gzip", b"\x1f\x8b"), Passing::Encoded);
    }

    #[test]
    fn percent_round_trip() {
        assert_eq!(percent_decode("a%40b.io+x"), "a@b.io x");
        assert_eq!(percent_encode("[EMAIL] x"), "%5BEMAIL%5D+x");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
