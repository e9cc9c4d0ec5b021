//! Connection caps per listener and per peer address: a caller opening
//! sockets without end gets a clear refusal for the new ones while every
//! connection already accepted goes on. Counted in metrics.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabel {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusedLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Default)]
pub(crate) struct ConnMetrics {
    open: Family<ListenerLabel, Gauge>,
    refused: Family<RefusedLabels, Counter>,
}

impl ConnMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "portcullis_connections_open",
            "Connections open, by listener",
            m.open.clone(),
        );
        registry.register(
            "portcullis_connections_refused",
            "Connections refused at a cap, by listener and cap (listener, peer)",
            m.refused.clone(),
        );
        m
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The listener holds its maximum.
    Listener,
    /// This peer address holds its maximum.
    Peer,
}

impl Full {
    fn label(self) -> &'static str {
        match self {
            Full::Listener => "listener",
            Full::Peer => "peer",
        }
    }

    /// What the refused caller is told.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Full::Listener => {
                "the gateway holds as many connections as it accepts; try again later"
            }
            Full::Peer => {
                "your address holds as many connections as the gateway accepts from one peer; close some or try again later"
            }
        }
    }
}

pub(crate) struct ConnLimits {
    listener: &'static str,
    max: usize,
    per_peer: usize,
    state: Mutex<State>,
    metrics: ConnMetrics,
}

#[derive(Default)]
struct State {
    open: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// A connection's place under the caps; given back when dropped.
pub(crate) struct Permit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    pub(crate) fn new(
        listener: &'static str,
        max: usize,
        per_peer: usize,
        metrics: ConnMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            listener,
            max,
            per_peer,
            state: Mutex::new(State::default()),
            metrics,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only a panic while holding it poisons it; the counts are whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a connection from `ip`, or why there is none.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Full> {
        let refused = {
            let mut s = self.state();
            let from_peer = s.by_peer.get(&ip).copied().unwrap_or(0);
            if s.open >= self.max {
                Some(Full::Listener)
            } else if from_peer >= self.per_peer {
                Some(Full::Peer)
            } else {
                s.open += 1;
                *s.by_peer.entry(ip).or_default() += 1;
                None
            }
        };
        if let Some(full) = refused {
            self.metrics
                .refused
                .get_or_create(&RefusedLabels {
                    listener: self.listener,
                    reason: full.label(),
                })
                .inc();
            return Err(full);
        }
        self.metrics
            .open
            .get_or_create(&ListenerLabel {
                listener: self.listener,
            })
            .inc();
        Ok(Permit {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let l = &self.limits;
        {
            let mut s = l.state();
            s.open = s.open.saturating_sub(1);
            if let Some(n) = s.by_peer.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    s.by_peer.remove(&self.ip);
                }
            }
        }
        l.metrics
            .open
            .get_or_create(&ListenerLabel {
                listener: l.listener,
            })
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_listener_and_per_peer_and_places_come_back() {
        let l = ConnLimits::new("test", 3, 2, ConnMetrics::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).err(), Some(Full::Peer));
        let _b1 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).err(), Some(Full::Listener));
        drop(a1);
        assert!(l.admit(b).is_ok(), "a closed connection frees its place");
        assert!(l.state().by_peer.len() <= 2);
    }
}
