//! The chain itself, free of I/O: how an entry is hashed, and how a
//! sequence of entries (and signed checkpoints) is verified.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The hash the first entry points back to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: i64,
    pub time_ms: i64,
    pub prev_hash: String,
    pub hash: String,
    /// The event, as canonical JSON (object keys sorted, no spaces).
    pub event: serde_json::Value,
}

/// A signed statement: "entry `seq` of chain `chain` has hash `hash`".
/// Kept outside the log too, so that cutting the log's tail is seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub time_ms: i64,
    /// The chain this checkpoint belongs to: the hash of its first entry.
    /// A checkpoint of another store's chain is then reported as such
    /// rather than as a rewrite. Absent in checkpoints signed before the
    /// field existed (their message does not cover it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Ed25519 over `checkpoint_message(chain, seq, hash)`, hex.
    pub signature: String,
}

/// Canonical JSON: serde_json's map is ordered by key (no
/// `preserve_order`), and compact output has no whitespace.
pub fn canonical(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// SHA-256 over the entry's fields, each length-prefixed so that no two
/// different entries encode alike.
pub fn entry_hash(seq: i64, time_ms: i64, prev_hash: &str, event_canonical: &str) -> String {
    let mut buf = Vec::with_capacity(64 + event_canonical.len());
    for part in [
        seq.to_string().as_bytes(),
        time_ms.to_string().as_bytes(),
        prev_hash.as_bytes(),
        event_canonical.as_bytes(),
    ] {
        buf.extend_from_slice(&(part.len() as u64).to_be_bytes());
        buf.extend_from_slice(part);
    }
    hex::encode(digest(&SHA256, &buf))
}

/// What a checkpoint's signature covers. The chain is part of it when
/// known, in a message that cannot be read as the older form.
pub fn checkpoint_message(chain: Option<&str>, seq: i64, hash: &str) -> Vec<u8> {
    match chain {
        None => format!("portcullis-audit-checkpoint\n{seq}\n{hash}").into_bytes(),
        Some(c) => format!("portcullis-audit-checkpoint-v2\n{c}\n{seq}\n{hash}").into_bytes(),
    }
}

/// The first entry (or checkpoint) that breaks the chain, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("entry {seq}: expected sequence number {expected} (an entry was deleted or inserted)")]
    Gap { seq: i64, expected: i64 },
    #[error("entry {seq}: does not point to the previous entry's hash (reordered or edited)")]
    Link { seq: i64 },
    #[error("entry {seq}: its content does not match its hash (edited)")]
    Hash { seq: i64 },
    #[error("checkpoint at entry {seq}: the signature is not valid for this public key")]
    Signature { seq: i64 },
    #[error("checkpoint at entry {seq}: the log holds a different hash there (rewritten)")]
    CheckpointMismatch { seq: i64 },
    #[error("checkpoint at entry {seq}: the log ends at entry {last} (its tail was cut)")]
    Truncated { seq: i64, last: i64 },
    #[error(
        "checkpoint at entry {seq}: it was signed for another chain (a checkpoint file from another store?)"
    )]
    OtherChain { seq: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub entries: i64,
    pub last_seq: i64,
    pub last_hash: String,
    pub checkpoints: usize,
}

/// Streaming verifier: built from the checkpoints, fed entries in
/// order, then finished. Memory is bounded by the number of checkpoints,
/// whatever the length of the chain: only the hashes a checkpoint names
/// are kept.
pub struct Verifier {
    expected: i64,
    prev: String,
    /// The first entry's hash: the chain's name.
    chain: Option<String>,
    checkpoints: Vec<Checkpoint>,
    wanted: std::collections::HashMap<i64, Option<String>>,
}

impl Verifier {
    pub fn new(checkpoints: Vec<Checkpoint>) -> Self {
        let wanted = checkpoints.iter().map(|c| (c.seq, None)).collect();
        Self {
            expected: 1,
            prev: GENESIS.to_string(),
            chain: None,
            checkpoints,
            wanted,
        }
    }

    pub fn entry(&mut self, e: &Entry) -> Result<(), VerifyError> {
        if e.seq != self.expected {
            return Err(VerifyError::Gap {
                seq: e.seq,
                expected: self.expected,
            });
        }
        if e.prev_hash != self.prev {
            return Err(VerifyError::Link { seq: e.seq });
        }
        if entry_hash(e.seq, e.time_ms, &e.prev_hash, &canonical(&e.event)) != e.hash {
            return Err(VerifyError::Hash { seq: e.seq });
        }
        if let Some(slot) = self.wanted.get_mut(&e.seq) {
            *slot = Some(e.hash.clone());
        }
        if e.seq == 1 {
            self.chain = Some(e.hash.clone());
        }
        self.prev = e.hash.clone();
        self.expected += 1;
        Ok(())
    }

    /// Check the checkpoints against what was seen, and return the summary.
    pub fn finish(self, public_key: &[u8]) -> Result<Summary, VerifyError> {
        let last = self.expected - 1;
        let key = UnparsedPublicKey::new(&ED25519, public_key);
        for c in &self.checkpoints {
            let sig =
                hex::decode(&c.signature).map_err(|_| VerifyError::Signature { seq: c.seq })?;
            key.verify(
                &checkpoint_message(c.chain.as_deref(), c.seq, &c.hash),
                &sig,
            )
            .map_err(|_| VerifyError::Signature { seq: c.seq })?;
            if let Some(chain) = &c.chain
                && self.chain.as_ref().is_some_and(|ours| ours != chain)
            {
                return Err(VerifyError::OtherChain { seq: c.seq });
            }
            match self.wanted.get(&c.seq).cloned().flatten() {
                Some(h) if h == c.hash => {}
                Some(_) => return Err(VerifyError::CheckpointMismatch { seq: c.seq }),
                None => return Err(VerifyError::Truncated { seq: c.seq, last }),
            }
        }
        Ok(Summary {
            entries: last,
            last_seq: last,
            last_hash: self.prev,
            checkpoints: self.checkpoints.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

    fn chain(n: i64) -> Vec<Entry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let event = serde_json::json!({"kind": "test", "n": seq, "who": "agent:a"});
                let hash = entry_hash(seq, 1000 + seq, &prev, &canonical(&event));
                let e = Entry {
                    seq,
                    time_ms: 1000 + seq,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                    event,
                };
                prev = hash;
                e
            })
            .collect()
    }

    fn key() -> Ed25519KeyPair {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn checkpoint(k: &Ed25519KeyPair, e: &Entry) -> Checkpoint {
        signed(k, None, e)
    }

    fn signed(k: &Ed25519KeyPair, chain: Option<&str>, e: &Entry) -> Checkpoint {
        Checkpoint {
            seq: e.seq,
            hash: e.hash.clone(),
            time_ms: 0,
            chain: chain.map(str::to_owned),
            signature: hex::encode(k.sign(&checkpoint_message(chain, e.seq, &e.hash))),
        }
    }

    fn verify(
        entries: &[Entry],
        cps: &[Checkpoint],
        k: &Ed25519KeyPair,
    ) -> Result<Summary, VerifyError> {
        let mut v = Verifier::new(cps.to_vec());
        for e in entries {
            v.entry(e)?;
        }
        v.finish(k.public_key().as_ref())
    }

    #[test]
    fn a_checkpoint_names_its_chain() {
        let k = key();
        let ours = chain(6);
        let first = ours[0].hash.clone();
        // Signed for this chain: verifies.
        let good = signed(&k, Some(&first), &ours[4]);
        assert_eq!(
            verify(&ours, std::slice::from_ref(&good), &k)
                .unwrap()
                .checkpoints,
            1
        );
        // Signed for another store's chain: named as such, not as a rewrite.
        let foreign = signed(&k, Some(&"ab".repeat(32)), &ours[4]);
        assert_eq!(
            verify(&ours, &[foreign], &k),
            Err(VerifyError::OtherChain { seq: 5 })
        );
        // The chain is covered by the signature: moving a checkpoint to
        // another chain by editing the field breaks it.
        let mut moved = good;
        moved.chain = Some("cd".repeat(32));
        assert_eq!(
            verify(&ours, &[moved], &k),
            Err(VerifyError::Signature { seq: 5 })
        );
    }

    #[test]
    fn an_intact_chain_verifies() {
        let k = key();
        let c = chain(10);
        let s = verify(&c, &[checkpoint(&k, &c[4]), checkpoint(&k, &c[9])], &k).unwrap();
        assert_eq!(s.entries, 10);
    }

    #[test]
    fn edits_deletions_insertions_reorders_and_truncation_are_named() {
        let k = key();
        let c = chain(10);
        let cps = [checkpoint(&k, &c[7])];

        let mut edited = c.clone();
        edited[3].event["who"] = "agent:b".into();
        assert_eq!(verify(&edited, &cps, &k), Err(VerifyError::Hash { seq: 4 }));

        let mut deleted = c.clone();
        deleted.remove(5);
        assert_eq!(
            verify(&deleted, &cps, &k),
            Err(VerifyError::Gap {
                seq: 7,
                expected: 6
            })
        );

        let mut reordered = c.clone();
        reordered.swap(2, 3);
        assert!(matches!(
            verify(&reordered, &cps, &k),
            Err(VerifyError::Gap { seq: 4, .. })
        ));

        // Renumbered after a deletion: the link breaks instead.
        let mut renumbered = c.clone();
        renumbered.remove(5);
        for e in renumbered.iter_mut().skip(5) {
            e.seq -= 1;
        }
        assert_eq!(
            verify(&renumbered, &cps, &k),
            Err(VerifyError::Link { seq: 6 })
        );

        let truncated = &c[..6];
        assert_eq!(
            verify(truncated, &cps, &k),
            Err(VerifyError::Truncated { seq: 8, last: 6 })
        );

        let other = key();
        assert_eq!(
            verify(&c, &[checkpoint(&other, &c[7])], &k),
            Err(VerifyError::Signature { seq: 8 })
        );
    }

    #[test]
    fn hash_covers_every_field() {
        let base = entry_hash(1, 2, "p", "{}");
        assert_ne!(base, entry_hash(2, 2, "p", "{}"));
        assert_ne!(base, entry_hash(1, 3, "p", "{}"));
        assert_ne!(base, entry_hash(1, 2, "q", "{}"));
        assert_ne!(base, entry_hash(1, 2, "p", "{ }"));
        // Length prefixes: moving bytes between fields changes the hash.
        assert_ne!(entry_hash(1, 2, "ab", "c"), entry_hash(1, 2, "a", "bc"));
    }
}
