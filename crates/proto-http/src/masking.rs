//! Masking responses on their way back to the caller. A body that cannot
//! be inspected is never passed raw: it is refused, or masked as text when
//! the rule says so.

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
    Text,
    Form,
    /// Images, archives, octet streams: not text the masker can read.
    /// Refused unless the rule lists the type to pass.
    Opaque,
}

/// A content type's essence: lower-case, without parameters.
fn essence(content_type: Option<&HeaderValue>) -> Option<String> {
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
    if essence == "application/json"
        || essence.ends_with("+json")
        || essence == "application/x-ndjson"
    {
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
) -> Result<Response<Body>, ResponseError> {
    let (mut parts, body) = resp.into_parts();
    mask_headers(rule, &mut parts.headers, stats, vault)?;
    let no_body = method == Method::HEAD
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
        || parts.status.is_informational();
    let ct = parts.headers.get(header::CONTENT_TYPE);
    let k = kind(ct);
    let passed = k == Kind::Opaque && essence(ct).is_some_and(|e| rule.passes_content_type(&e));
    if no_body || passed {
        return Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed(),
        ));
    }
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
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
        mask_body(rule, k, &encoding, &raw, stats, vault.map(|v| &**v))?
    } else {
        let (rule, vault) = (rule.clone(), vault.cloned());
        let mut taken = std::mem::take(stats);
        let (masked, taken) = tokio::task::spawn_blocking(move || {
            let masked = mask_body(&rule, k, &encoding, &raw, &mut taken, vault.as_deref());
            (masked, taken)
        })
        .await
        .map_err(|e| MaskFailure(format!("masking failed: {e}")))?;
        *stats = taken;
        masked?
    };

    // The body is now identity-encoded and of a new length; validators of
    // the old bytes no longer hold.
    for h in [
        header::CONTENT_ENCODING,
        header::CONTENT_LENGTH,
        header::ETAG,
        header::CONTENT_RANGE,
    ] {
        parts.headers.remove(h);
    }
    parts.headers.remove("content-md5");
    parts.headers.remove("digest");
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(masked.len()));
    Ok(Response::from_parts(parts, full(Bytes::from(masked))))
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
) -> Result<Vec<u8>, MaskFailure> {
    let plain = decode(encoding, raw, rule.max_body_bytes)?;
    let mut guard = vault.and_then(|v| v.lock().ok());
    let vault = &mut guard.as_deref_mut();
    let masked: Vec<u8> = match k {
        Kind::Json => match rule.masker.mask_json_bytes_in(&plain, stats, vault) {
            Ok(b) => b,
            Err(e) => match rule.on_error {
                OnError::Refuse => {
                    return Err(MaskFailure(format!(
                        "the response declares JSON but {e}; refused by rule {:?} (on_error = \"refuse\")",
                        rule.name
                    )));
                }
                OnError::MaskAsText => mask_text(rule, &plain, stats, vault)?,
            },
        },
        Kind::Form => mask_form(rule, &plain, stats, vault)?,
        Kind::Text => mask_text(rule, &plain, stats, vault)?,
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

fn mask_text(
    rule: &Rule,
    plain: &[u8],
    stats: &mut Stats,
    vault: &mut Option<&mut Vault>,
) -> Result<Vec<u8>, MaskFailure> {
    let text = std::str::from_utf8(plain).map_err(|_| {
        MaskFailure(format!(
            "the response body is not UTF-8 text; refused by rule {:?}",
            rule.name
        ))
    })?;
    Ok(rule
        .masker
        .mask_str_in(text, stats, vault)
        .into_owned()
        .into_bytes())
}

/// `a=b&c=d`: each value decoded, masked, encoded again.
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
        out.extend_from_slice(k.as_bytes());
        if pair.contains('=') {
            out.push(b'=');
            let decoded = percent_decode(v);
            let masked = rule.masker.mask_str_in(&decoded, stats, vault);
            out.extend_from_slice(percent_encode(&masked).as_bytes());
        }
    }
    Ok(out)
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
        Kind::Json => vault
            .reverse(text, |o| {
                // Inside a JSON string: escape as JSON does, without quotes.
                let q = serde_json::to_string(o).unwrap_or_default();
                q[1..q.len().saturating_sub(1)].to_string()
            })
            .map(String::into_bytes),
        Kind::Form => reverse_query(text, vault).map(String::into_bytes),
        Kind::Text => vault.reverse(text, str::to_string).map(String::into_bytes),
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

    #[test]
    fn percent_round_trip() {
        assert_eq!(percent_decode("a%40b.io+x"), "a@b.io x");
        assert_eq!(percent_encode("[EMAIL] x"), "%5BEMAIL%5D+x");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
