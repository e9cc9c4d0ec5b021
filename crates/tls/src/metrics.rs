use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub version: String,
    pub suite: String,
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct TlsMetrics {
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub plaintext_refused: Counter,
}

impl TlsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            handshakes: Family::default(),
            failures: Family::default(),
            plaintext_refused: Counter::default(),
        };
        registry.register(
            "portcullis_tls_handshakes",
            "Completed inbound TLS handshakes, by negotiated version, suite and group",
            m.handshakes.clone(),
        );
        registry.register(
            "portcullis_tls_handshake_failures",
            "Failed inbound TLS handshakes, by reason",
            m.failures.clone(),
        );
        registry.register(
            "portcullis_plaintext_refused",
            "Plaintext connections refused on a TLS listener",
            m.plaintext_refused.clone(),
        );
        m
    }
}
