//! The reversible tokens shown to each principal on each connection, so
//! a token the caller sends back can be swapped for its original. Bounded:
//! a vault not used for [`IDLE`] is forgotten, and at most [`MAX`] live at
//! once (the least recently used goes first). A forgotten token is simply
//! not reversed (the target sees the token), never revealed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_mask::Vault;

pub(crate) type SharedVault = Arc<Mutex<Vault>>;

/// Vaults kept at most (each holds at most the masker's own bound).
pub(crate) const MAX: usize = 4096;
/// A vault unused this long is forgotten.
pub(crate) const IDLE: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub(crate) struct Vaults {
    map: Mutex<HashMap<(String, String), (SharedVault, Instant)>>,
}

impl Vaults {
    /// The vault of `principal` on `connection`, made if there is none.
    pub fn get(&self, principal: &str, connection: &str) -> Option<SharedVault> {
        self.get_at(principal, connection, Instant::now())
    }

    fn get_at(&self, principal: &str, connection: &str, now: Instant) -> Option<SharedVault> {
        let mut map = self.map.lock().ok()?;
        let key = (principal.to_owned(), connection.to_owned());
        if let Some((v, used)) = map.get_mut(&key) {
            *used = now;
            return Some(v.clone());
        }
        if map.len() >= MAX {
            map.retain(|_, (_, used)| now.saturating_duration_since(*used) < IDLE);
        }
        if map.len() >= MAX
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        let v = SharedVault::default();
        map.insert(key, (v.clone(), now));
        Some(v)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_vault_per_principal_and_connection() {
        let v = Vaults::default();
        let a = v.get("p", "c").unwrap();
        assert!(Arc::ptr_eq(&a, &v.get("p", "c").unwrap()));
        assert!(!Arc::ptr_eq(&a, &v.get("p", "d").unwrap()));
        assert!(!Arc::ptr_eq(&a, &v.get("q", "c").unwrap()));
    }

    #[test]
    fn bounded_idle_first_then_least_recently_used() {
        let v = Vaults::default();
        let t0 = Instant::now();
        for i in 0..MAX {
            v.get_at(&format!("p{i}"), "c", t0).unwrap();
        }
        let fresh = t0 + IDLE / 2;
        let kept = v.get_at("p0", "c", fresh).unwrap();
        // Full: the next one pushes out one vault, not p0 (just used).
        v.get_at("new", "c", fresh).unwrap();
        assert_eq!(v.len(), MAX);
        assert!(Arc::ptr_eq(&kept, &v.get_at("p0", "c", fresh).unwrap()));
        // Much later: every idle vault goes at once.
        v.get_at("later", "c", t0 + IDLE * 2).unwrap();
        assert!(v.len() <= 3, "{}", v.len());
    }
}
