//! Logs on stderr, and, when asked (`--otlp-endpoint` or the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), traces exported over OTLP/HTTP:
//! one span per session and per HTTP request or SQL statement, from the
//! `portcullis::trace` spans the fronts make (principal, connection,
//! decision; never a credential, a path or a statement's text).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::LogFormat;

use portcullis_front::TRACE_TARGET;

/// Set up logging (and the exporter, with `otlp`). The provider returned
/// must be shut down at exit, so that the last spans are sent.
pub(crate) fn init(
    format: LogFormat,
    filter: &str,
    otlp: Option<&str>,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info")));
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let Some(endpoint) = otlp else {
        tracing_subscriber::registry().with(fmt).init();
        return Ok(None);
    };
    let provider = provider(endpoint)?;
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("portcullis"))
        .with_filter(Targets::new().with_target(TRACE_TARGET, LevelFilter::DEBUG));
    tracing_subscriber::registry().with(fmt).with(spans).init();
    Ok(Some(provider))
}

/// An OTLP/HTTP (protobuf) exporter to `endpoint`, batched.
fn provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        anyhow::bail!(
            "--otlp-endpoint: expected an http:// or https:// URL of an OTLP/HTTP receiver (…/v1/traces)"
        );
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(endpoint)
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "portcullis".into());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
