//! Counting masked values for the metrics endpoint (detector names and
//! connection names only: never a value).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::Stats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MaskLabels {
    connection: String,
    detector: String,
}

/// Masked values by connection and detector (never the values).
#[derive(Clone)]
pub struct MaskMetrics(Family<MaskLabels, Counter>);

impl MaskMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let f = Family::default();
        registry.register(
            "portcullis_masked_values",
            "Values masked in responses, by connection and detector",
            f.clone(),
        );
        Self(f)
    }

    pub fn record(&self, connection: &str, stats: &Stats) {
        for (detector, n) in stats {
            self.0
                .get_or_create(&MaskLabels {
                    connection: connection.to_string(),
                    detector: detector.clone(),
                })
                .inc_by(*n);
        }
    }
}
