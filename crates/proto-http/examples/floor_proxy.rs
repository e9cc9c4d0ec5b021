//! The floor under Portcullis's HTTP path, for `bench/run` only: the same
//! stack (tokio's multi-threaded runtime, hyper's HTTP/1 and HTTP/2 server
//! and pooled client, rustls with the gateway's TLS policy, jemalloc) doing
//! only what nginx does in the benchmark: terminate TLS, set the target's
//! key, drop `Authorization`, forward over verified TLS and stream the
//! answer back. No caller is identified, nothing is authorised, recorded,
//! audited, scrubbed or masked. Portcullis measured against this tells our
//! own work from the cost of the libraries and the kernel (issue 20's
//! "profile that explains what is left").
//!
//! Usage: floor_proxy <listen addr> <cert.pem> <key.pem> <target url> <ca.pem> <header> <key file>

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_tls::TlsPolicy;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<bytes::Bytes, hyper::Error>;

struct Floor {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>,
    target: http::uri::Authority,
    header: http::HeaderName,
    key: http::HeaderValue,
}

impl Floor {
    async fn forward(
        &self,
        mut req: http::Request<Incoming>,
    ) -> Result<http::Response<Body>, hyper_util::client::legacy::Error> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri = http::Uri::builder()
            .scheme("https")
            .authority(self.target.clone())
            .path_and_query(path)
            .build()
            .unwrap_or_default();
        *req.uri_mut() = uri;
        // The pooled client picks the version it negotiated with the target.
        *req.version_mut() = http::Version::default();
        let headers = req.headers_mut();
        headers.remove(http::header::AUTHORIZATION);
        // Hop-by-hop, as nginx's `proxy_set_header Connection ""`: a
        // caller's `Connection: close` must not close the pooled target
        // connection (the first floor runs did, and paid a target
        // handshake per request).
        for hop in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
        ] {
            headers.remove(hop);
        }
        headers.remove(http::header::HOST);
        headers.insert(self.header.clone(), self.key.clone());
        let answer = self.client.request(req).await?;
        Ok(answer.map(BodyExt::boxed))
    }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key, target, ca, header, key_file] = args.as_slice() else {
        return Err(
            "usage: floor_proxy <listen> <cert> <key> <target url> <ca> <header> <key file>".into(),
        );
    };
    let policy = TlsPolicy::default();
    let server = portcullis_tls::server_config(
        &policy,
        portcullis_tls::load_cert_chain(cert.as_ref())?,
        portcullis_tls::load_private_key(key.as_ref())?,
        &[b"h2", b"http/1.1"],
    )?;
    let roots = portcullis_tls::load_roots(ca.as_ref(), false)?;
    let tls = portcullis_tls::client_config(&policy, roots)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let target: http::Uri = target.parse()?;
    let floor = Arc::new(Floor {
        client: Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(256)
            .build(connector),
        target: target
            .authority()
            .cloned()
            .ok_or("the target URL needs a host")?,
        header: http::HeaderName::from_bytes(header.as_bytes())?,
        key: http::HeaderValue::from_str(std::fs::read_to_string(key_file)?.trim())?,
    });
    let listen: SocketAddr = listen.parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, server, floor))
}

async fn serve(
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    floor: Arc<Floor>,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("floor: ready on {}", listener.local_addr()?);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let (acceptor, floor) = (acceptor.clone(), floor.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let floor = floor.clone();
                async move { floor.forward(req).await }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
