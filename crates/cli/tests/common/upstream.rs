//! A small HTTPS target for tests that records what reached it.

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    pub authority: String,
    pub version: String,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct TestUpstream {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl TestUpstream {
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Serve HTTPS on 127.0.0.1 with `cert`/`key`. `/slow` waits 5 s,
/// `/big` streams 1 MiB, anything else answers 200 with a small JSON.
pub fn start(cert: &Path, key: &Path) -> TestUpstream {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let chain = portcullis_tls::load_cert_chain(cert).unwrap();
    let key = portcullis_tls::load_private_key(key).unwrap();
    let cfg = portcullis_tls::server_config(&Default::default(), chain, key, &[b"h2", b"http/1.1"])
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        if req.uri().path().ends_with("/stream") {
                            return Ok(streamed());
                        }
                        if req.uri().path().ends_with("/echo.split") {
                            return Ok(split_echo(&req));
                        }
                        Ok::<_, Infallible>(answer(req, seen).await.map(|b| b.boxed()))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TestUpstream {
        port,
        seen,
        _rt: rt,
    }
}

/// Four chunks of 1000 bytes with no declared length (chunked on
/// HTTP/1.1), a little apart.
fn streamed() -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    let chunks = futures_util::stream::unfold(0u8, |i| async move {
        if i == 4 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let frame = hyper::body::Frame::data(Bytes::from(vec![b'a' + i; 1000]));
        Some((Ok::<_, Infallible>(frame), i + 1))
    });
    Response::builder()
        .header("content-type", "text/plain")
        .body(http_body_util::StreamBody::new(chunks).boxed())
        .unwrap()
}

/// The x-api-key in wide spellings (each character as `&#x000000NN;`,
/// as `\u00NN` and 15 blanks, in hex with blanks, and the key's halves
/// 300 spaces apart), written in two frames 2 ms apart, cut where the
/// caller's `?cut=N` says: a caller moves where the target's writes
/// break (second re-review).
fn split_echo(
    req: &Request<hyper::body::Incoming>,
) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    let key = req
        .headers()
        .get("x-api-key")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let cut: usize = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("cut="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let half = key.len() / 2;
    let body = [
        key.iter()
            .map(|b| format!("&#x{b:08x};"))
            .collect::<String>(),
        key.iter()
            .map(|b| format!("\\u{b:04x}{}", " ".repeat(15)))
            .collect(),
        key.iter().map(|b| format!("{b:02x} ")).collect(),
        format!(
            "{}{}{}",
            String::from_utf8_lossy(&key[..half]),
            " ".repeat(300),
            String::from_utf8_lossy(&key[half..])
        ),
    ]
    .join("\n");
    let body = Bytes::from(body);
    let cut = cut.min(body.len());
    let frames = [body.slice(..cut), body.slice(cut..)];
    let chunks =
        futures_util::StreamExt::then(futures_util::stream::iter(frames), |f| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, Infallible>(hyper::body::Frame::data(f))
        });
    Response::builder()
        .header("content-type", "text/plain")
        .body(http_body_util::StreamBody::new(chunks).boxed())
        .unwrap()
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Response<Full<Bytes>> {
    // Answered before the request's body is read (as an upload endpoint
    // that queues the work): the body is read on, as it arrives.
    if req.uri().path() == "/early" {
        let mut body = req.into_body();
        tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
        return Response::builder()
            .status(202)
            .body(Full::new(Bytes::from_static(b"queued")))
            .unwrap();
    }
    let method = req.method().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = req.uri().path().to_string();
    let range_start_end = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    // What `/echo` reflects: every request header, as echo services do.
    let echoed: String = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    // What `/echo.json` reflects: the x-api-key header, each character
    // as a JSON `\u` escape (as some serializers write text).
    let escaped_key: String = req
        .headers()
        .get("x-api-key")
        .map(|v| v.as_bytes().iter().map(|b| format!("\\u{b:04x}")).collect())
        .unwrap_or_default();
    // What `/echo.coding` names as its content coding: the x-api-key.
    let raw_key = req.headers().get("x-api-key").cloned();
    // What `/echo.encoded` reflects: the x-api-key header as echo and
    // debug endpoints re-encode text, one spelling per line.
    let encoded_key: String = req
        .headers()
        .get("x-api-key")
        .map(|v| {
            use base64::Engine as _;
            let v = v.as_bytes();
            let b64 = |lead: &str| {
                let mut framed = lead.as_bytes().to_vec();
                framed.extend_from_slice(v);
                base64::engine::general_purpose::STANDARD.encode(framed)
            };
            let title: String = String::from_utf8_lossy(v)
                .split('-')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_uppercase().chain(c).collect::<String>())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("-");
            [
                String::from_utf8_lossy(&v.to_ascii_uppercase()).into_owned(),
                title,
                hex::encode(v),
                b64(""),
                b64("u:"),
                b64("key="),
                // Every character escaped, as some escapers write text.
                v.iter().map(|b| format!("&#{b};")).collect(),
                v.iter().map(|b| format!("%{b:02X}")).collect(),
                v.iter().map(|b| format!("\\x{b:02x}")).collect(),
            ]
            .join("\n")
        })
        .unwrap_or_default();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body_len = body.len();
    let body = String::from_utf8_lossy(&body).into_owned();
    seen.lock().unwrap().push(Seen {
        method,
        path_and_query: path_and_query.clone(),
        headers,
        body_len,
        authority,
        version,
        body,
    });
    // Connections may add a base path; the routes below are after it.
    match path.strip_prefix("/base").unwrap_or(&path) {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Response::new(Full::new(Bytes::from_static(b"late\n")))
        }
        "/big" => Response::new(Full::new(Bytes::from(vec![b'x'; 1 << 20]))),
        "/echo.json" => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"key":"{escaped_key}"}}"#
            ))))
            .unwrap(),
        "/echo.coding" => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"x")));
            if let Some(k) = raw_key {
                r.headers_mut().insert("content-encoding", k);
            }
            r
        }
        "/echo.encoded" => Response::builder()
            .header("content-type", "text/plain")
            .header("x-echo", encoded_key.replace('\n', "; "))
            .body(Full::new(Bytes::from(encoded_key)))
            .unwrap(),
        "/echo" => Response::builder()
            .header("content-type", "text/plain")
            .header("x-echo", echoed.replace('\n', "; "))
            .body(Full::new(Bytes::from(echoed)))
            .unwrap(),
        "/huge" => Response::new(Full::new(Bytes::from(vec![b'x'; 32 << 20]))),
        "/pii.gz" => {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(br#"{"user":{"email":"carol@example.com","card":"4242 4242 4242 4242","password":"s3cr3t-pw"}}"#)
                .unwrap();
            Response::builder()
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .header("etag", "\"abc\"")
                .body(Full::new(Bytes::from(gz.finish().unwrap())))
                .unwrap()
        }
        "/compress" => Response::builder()
            .header("content-type", "text/plain")
            .header("content-encoding", "compress")
            .body(Full::new(Bytes::from_static(b"\x1f\x9d carol@example.com")))
            .unwrap(),
        "/badjson" => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                b"{not json, carol@example.com",
            )))
            .unwrap(),
        "/whoami" => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"email":"erin@example.com"}"#,
            )))
            .unwrap(),
        "/octet" => Response::builder()
            .header("content-type", "Application/Octet-Stream")
            .body(Full::new(Bytes::from_static(b"\x00\x01 carol@example.com")))
            .unwrap(),
        "/headers" => Response::builder()
            .status(302)
            .header("content-type", "text/plain")
            .header("x-user-email", "carol@example.com")
            .header("location", "https://localhost/users/carol%40example.com")
            .body(Full::new(Bytes::from_static(b"moved")))
            .unwrap(),
        "/keys" => Response::builder()
            .header("content-type", "application/json; charset=UTF-8")
            .body(Full::new(Bytes::from_static(
                br#"{"carol@example.com":{"visits":3},"dave@example.org":{"visits":4}}"#,
            )))
            .unwrap(),
        "/ranged" => {
            // Honours a Range (as a file server would).
            let text: &[u8] = b"contact carol@example.com today";
            match range_start_end {
                Some((a, b)) if a < text.len() => Response::builder()
                    .status(206)
                    .header("content-type", "text/plain")
                    .header(
                        "content-range",
                        format!("bytes {a}-{}/{}", b.min(text.len() - 1), text.len()),
                    )
                    .body(Full::new(Bytes::copy_from_slice(
                        &text[a..=b.min(text.len() - 1)],
                    )))
                    .unwrap(),
                _ => Response::builder()
                    .header("content-type", "text/plain")
                    .body(Full::new(Bytes::from_static(text)))
                    .unwrap(),
            }
        }
        "/image" => Response::builder()
            .header("content-type", "image/png")
            .body(Full::new(Bytes::from_static(
                b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR carol@example.com",
            )))
            .unwrap(),
        _ => Response::builder()
            .header("content-type", "application/json")
            .header("x-upstream", "test")
            .body(Full::new(Bytes::from(
                serde_json::json!({"ok": true, "path": path_and_query, "body_len": body_len})
                    .to_string(),
            )))
            .unwrap(),
    }
}
