//! This gateway process's id, and the id of the run before it.
//!
//! Each run takes a fresh random id (two replicas never share one,
//! whatever their host names). The id is written to a lock file beside the
//! config, held for the life of the process: a process that takes the lock
//! knows the run named in the file is dead, so the sessions that run left
//! open can be closed at once. When the lock is held elsewhere (another
//! live process on the same config), nothing is assumed dead; peers close
//! a dead gateway's sessions once its heartbeat is stale.

use std::io::{Read, Seek, Write};

use portcullis_config::Config;

pub(crate) struct Instance {
    pub id: String,
    /// The previous run's id, known dead (this process holds the lock).
    pub previous: Option<String>,
    /// Held until the process ends.
    lock: Option<std::fs::File>,
}

impl Instance {
    pub fn claim(cfg: &Config) -> Instance {
        let id = {
            let mut b = [0u8; 8];
            let _ =
                aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b);
            format!(
                "gw_{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )
        };
        let name = cfg
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "portcullis".into());
        let path = cfg.dir().join(format!(".{name}.gateway"));
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        let mut file = match opened {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep this gateway's id; sessions it leaves open if it dies are closed by peers only");
                return Instance {
                    id,
                    previous: None,
                    lock: None,
                };
            }
        };
        if let Err(e) = file.try_lock() {
            tracing::warn!(path = %path.display(), error = %e, "another gateway runs with this config; the sessions a dead run left open are closed once its heartbeat is stale");
            return Instance {
                id,
                previous: None,
                lock: None,
            };
        }
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        let previous = previous.trim().to_owned();
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(format!("{id}\n").as_bytes()))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot record this gateway's id for its next run");
        }
        Instance {
            id,
            previous: (!previous.is_empty()).then_some(previous),
            lock: Some(file),
        }
    }

    /// Whether this process holds the lock (and so may take anything left
    /// by a run it cannot name as dead, such as sessions from before ids
    /// were kept, on a store only this gateway uses).
    pub fn holds_lock(&self) -> bool {
        self.lock.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> Config {
        let path = dir.join("portcullis.toml");
        let text = "[gateway]\nlisten = \"127.0.0.1:0\"\ncert = \"s.pem\"\nkey = \"s.key\"\n";
        std::fs::write(&path, text).unwrap();
        Config::parse(text, &path).unwrap()
    }

    #[test]
    fn each_run_names_the_last_and_a_live_one_is_never_taken_for_dead() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let first = Instance::claim(&cfg);
        assert_eq!(first.previous, None);
        assert!(first.holds_lock());
        // A second process while the first lives: nothing assumed dead.
        let second = Instance::claim(&cfg);
        assert_ne!(second.id, first.id);
        assert_eq!(second.previous, None);
        assert!(!second.holds_lock());
        let first_id = first.id.clone();
        drop(first);
        drop(second);
        // The next run knows the one before it is gone.
        let third = Instance::claim(&cfg);
        assert_eq!(third.previous.as_deref(), Some(first_id.as_str()));
    }
}
