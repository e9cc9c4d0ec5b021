use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The configured connection name, or "-" when none was resolved (so
    /// that a caller cannot create label values at will).
    pub connection: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabel {
    pub connection: String,
}

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_seconds: Family<ConnectionLabel, Histogram>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream_seconds = Family::<ConnectionLabel, Histogram>::new_with_constructor(|| {
            // 100 µs .. ~13 s
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        registry.register(
            "portcullis_http_requests",
            "HTTP requests answered, by connection and status",
            requests.clone(),
        );
        registry.register(
            "portcullis_upstream_response_seconds",
            "Time from sending a request to the target to its response head, in seconds",
            upstream_seconds.clone(),
        );
        Self {
            requests,
            upstream_seconds,
        }
    }
}
