//! Token records kept in memory, exactly as strict as the store.
//!
//! Every request presents a token, and looking it up in SQLite goes
//! through sqlx's worker thread (a channel hand-off and a thread wake-up
//! each way): the largest single cost left on a keep-alive HTTP request.
//! A stored token never changes but for its revocation, so a copy may be
//! used for as long as no revocation can have been committed since it was
//! read. Every revocation of [`Store`] that changes a token row moves the
//! store's change mark ([`Changes`]) *after* its commit (one that changes
//! none, such as a replayed refresh token's, leaves every cache as it is); an entry is used only while the mark
//! reads as it did before the entry's lookup began. A request that starts
//! after a revocation returned (in this process, in another gateway on the
//! same file, or in `portcullis token revoke`) therefore misses and reads
//! the revoked row: revocation holds from the next request, as without
//! the cache.
//!
//! Bounded: at most [`MAX_ENTRIES`] records (the map is emptied when it is
//! full: a flood of distinct valid tokens costs lookups, never memory),
//! each reused for at most [`MAX_AGE`], which bounds how late a
//! revocation written around the store's API (by hand with `sqlite3`, or
//! by a process killed between its commit and the mark) is noticed.
//! Unknown tokens are never kept: a token minted a moment ago works at
//! once, and a caller guessing tokens fills nothing.
//!
//! A store without a mark it can read (PostgreSQL, where other gateways
//! write: see [`Changes`]) is not cached at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use portcullis_identity::{TokenHash, TokenRecord};

use crate::{Store, StoreError};

/// The most records kept.
pub const MAX_ENTRIES: usize = 10_000;
/// The longest a record is reused without reading the store again.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// Where a store says that it revoked something: a file beside the
/// SQLite database that each revocation appends one byte to, after its
/// commit. Its identity and length are the mark: appending only ever
/// grows it, so no two revocations leave the same mark (a rewrite would
/// not do: timestamps are coarser than two revocations can be apart, and
/// a replaced file's inode number can be reused).
#[derive(Clone, Debug)]
pub(crate) enum Changes {
    File(Arc<MarkFile>),
    /// No mark: nothing may be cached.
    Unmarked,
}

/// One reading of the change mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    dev: u64,
    ino: u64,
    len: u64,
}

impl Changes {
    /// The mark beside a SQLite store at `url` (`sqlite://PATH?…`); an
    /// in-memory database has none.
    pub(crate) fn for_sqlite_url(url: &str) -> Self {
        let rest = url.strip_prefix("sqlite:").unwrap_or(url);
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() || path.starts_with(':') {
            return Changes::Unmarked;
        }
        let mut file = Path::new(path).as_os_str().to_owned();
        file.push(".revocations");
        Changes::File(Arc::new(MarkFile {
            path: PathBuf::from(file),
            held: RwLock::new(None),
        }))
    }

    /// Create the file if there is none yet, so that readers find a mark.
    pub(crate) async fn ensure(&self) {
        if let Changes::File(mark) = self {
            let path = &mark.path;
            let opened = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await;
            if let Err(e) = opened {
                tracing::warn!(path = %path.display(), error = %e, "cannot create the store's revocation mark: token lookups will not be cached");
            }
        }
    }

    /// The mark now.
    pub(crate) fn read(&self) -> Option<Mark> {
        match self {
            Changes::File(mark) => mark.read(),
            Changes::Unmarked => None,
        }
    }

    /// Move the mark after a revocation committed, if it changed a token
    /// row (`changed`). A failure is logged: the revocation stands, and
    /// caches notice it within [`MAX_AGE`].
    pub(crate) async fn moved_if(&self, changed: bool) {
        use tokio::io::AsyncWriteExt;
        let Changes::File(mark) = self else {
            return;
        };
        if !changed {
            return;
        }
        let path = &mark.path;
        let appended = async {
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await?;
            f.write_all(b".").await?;
            f.flush().await
        }
        .await;
        if let Err(e) = appended {
            tracing::error!(path = %path.display(), error = %e, max_age_s = MAX_AGE.as_secs(), "a revocation was committed but its mark could not be written: running gateways may accept the token until their cached copy ages out");
        }
    }
}

/// The mark's file, held open: an `fstat` of a held descriptor is one
/// system call without a path walk, cheap enough for the runtime thread
/// on every request (a `stat` by name cost a third more).
#[derive(Debug)]
pub(crate) struct MarkFile {
    path: PathBuf,
    held: RwLock<Option<std::fs::File>>,
}

impl MarkFile {
    fn read(&self) -> Option<Mark> {
        if let Some(f) = self.held.read().unwrap_or_else(|p| p.into_inner()).as_ref()
            && let Some(m) = mark_of(f)
        {
            return Some(m);
        }
        // Not open yet, or the file was removed or replaced (a held
        // descriptor would then never move again): open it by name. Read
        // only where it exists (a revoking CLI run as another user may
        // have created it); created where it does not.
        let f = std::fs::File::open(&self.path)
            .or_else(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
            })
            .ok()?;
        let m = mark_of(&f)?;
        *self.held.write().unwrap_or_else(|p| p.into_inner()) = Some(f);
        Some(m)
    }
}

/// The mark of an open file, none once it has no name left.
#[cfg(unix)]
fn mark_of(f: &std::fs::File) -> Option<Mark> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata().ok()?;
    (m.nlink() > 0).then(|| Mark {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
    })
}

#[cfg(not(unix))]
fn mark_of(_: &std::fs::File) -> Option<Mark> {
    None
}

struct Entry {
    record: TokenRecord,
    read_at: Instant,
}

#[derive(Default)]
struct Kept {
    /// The mark every entry was read under.
    mark: Option<Mark>,
    entries: HashMap<TokenHash, Entry>,
}

/// The store's token lookup behind a cache (what the gateway
/// authenticates through).
pub struct CachedTokens {
    store: Store,
    kept: Mutex<Kept>,
}

impl CachedTokens {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            kept: Mutex::new(Kept::default()),
        }
    }

    /// The record of `hash`, from memory when no revocation can have
    /// happened since it was read.
    pub async fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        // Read before the lookup: a revocation committed after this read
        // moves the mark, and the entry stored below is then never used.
        let Some(before) = self.store.changes.read() else {
            return self.store.token_by_hash(hash).await;
        };
        if let Some(record) = self.hit(hash, before) {
            return Ok(Some(record));
        }
        let found = self.store.token_by_hash(hash).await?;
        if let Some(record) = &found {
            self.keep(*hash, record.clone(), before);
        }
        Ok(found)
    }

    fn hit(&self, hash: &TokenHash, now: Mark) -> Option<TokenRecord> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.mark != Some(now) {
            kept.entries.clear();
            kept.mark = Some(now);
            return None;
        }
        let e = kept.entries.get(hash)?;
        (e.read_at.elapsed() < MAX_AGE).then(|| e.record.clone())
    }

    fn keep(&self, hash: TokenHash, record: TokenRecord, read_under: Mark) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        // Read under an older mark than the map's: already stale. Under a
        // newer one: the map is, and starts again.
        if kept.mark != Some(read_under) {
            if self.store.changes.read() != Some(read_under) {
                return;
            }
            kept.entries.clear();
            kept.mark = Some(read_under);
        }
        if kept.entries.len() >= MAX_ENTRIES {
            kept.entries.clear();
        }
        kept.entries.insert(
            hash,
            Entry {
                record,
                read_at: Instant::now(),
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept.lock().map(|k| k.entries.len()).unwrap_or(0)
    }
}

impl portcullis_identity::TokenStore for CachedTokens {
    fn token_by_hash<'a>(&'a self, hash: &'a TokenHash) -> portcullis_identity::LookupFuture<'a> {
        Box::pin(async move {
            self.token_by_hash(hash)
                .await
                .map_err(crate::unavailable("token lookup"))
        })
    }

    fn mint<'a>(
        &'a self,
        m: &'a portcullis_identity::Mint<'a>,
    ) -> portcullis_identity::MintFuture<'a> {
        portcullis_identity::TokenStore::mint(&self.store, m)
    }

    fn cert_revoked<'a>(&'a self, fingerprint: &'a str) -> portcullis_identity::RevokedFuture<'a> {
        portcullis_identity::TokenStore::cert_revoked(&self.store, fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewTokenRow;
    use portcullis_identity::token;

    async fn minted(store: &Store, subject: &str) -> (TokenHash, String) {
        let t = token::generate().unwrap();
        let id = store
            .insert_token(&NewTokenRow {
                hash: t.hash,
                subject,
                groups: &[],
                created_at: 1,
                expires_at: None,
                on_behalf_of: None,
                audience: None,
                oauth_family: None,
            })
            .await
            .unwrap();
        (t.hash, id)
    }

    #[test]
    fn the_mark_lives_beside_the_database_file() {
        for (url, want) in [
            ("sqlite:///var/p.db?mode=rwc", Some("/var/p.db.revocations")),
            ("sqlite://rel/p.db", Some("rel/p.db.revocations")),
            ("sqlite::memory:", None),
        ] {
            let got = match Changes::for_sqlite_url(url) {
                Changes::File(m) => Some(m.path.display().to_string()),
                Changes::Unmarked => None,
            };
            assert_eq!(got.as_deref(), want, "{url}");
        }
    }

    /// Another process's revocation (a second handle on the same file, as
    /// `portcullis token revoke` opens) is seen by the very next lookup.
    #[tokio::test]
    async fn a_revocation_elsewhere_holds_from_the_next_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let gateway = Store::open_sqlite(&path).await.unwrap();
        let cli = Store::open_sqlite(&path).await.unwrap();
        let cache = CachedTokens::new(gateway.clone());
        let (hash, id) = minted(&cli, "agent:a").await;
        let (other, _) = minted(&cli, "agent:b").await;

        for _ in 0..3 {
            let r = cache.token_by_hash(&hash).await.unwrap().unwrap();
            assert_eq!(r.revoked_at, None);
        }
        cache.token_by_hash(&other).await.unwrap().unwrap();
        assert_eq!(cache.len(), 2, "both records are kept");

        assert!(cli.revoke_token(&id, 42).await.unwrap());
        let r = cache.token_by_hash(&hash).await.unwrap().unwrap();
        assert_eq!(
            r.revoked_at,
            Some(42),
            "the next lookup reads the revocation"
        );
        assert_eq!(
            cache.len(),
            1,
            "a move of the mark drops every record read before it"
        );
    }

    /// A lookup that read the row before a revocation committed must not
    /// be kept: it began under the old mark.
    #[tokio::test]
    async fn a_lookup_that_raced_a_revocation_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("p.db")).await.unwrap();
        let cache = CachedTokens::new(store.clone());
        let (hash, id) = minted(&store, "agent:a").await;
        let before = store.changes.read().unwrap();
        let stale = store.token_by_hash(&hash).await.unwrap().unwrap();
        assert!(store.revoke_token(&id, 7).await.unwrap());
        cache.keep(hash, stale, before);
        assert_eq!(cache.len(), 0);
        let r = cache.token_by_hash(&hash).await.unwrap().unwrap();
        assert_eq!(r.revoked_at, Some(7));
    }

    /// Removing or replacing the mark's file does not freeze the mark a
    /// held descriptor would read.
    #[tokio::test]
    async fn a_removed_or_replaced_mark_file_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let store = Store::open_sqlite(&path).await.unwrap();
        let cache = CachedTokens::new(store.clone());
        let (hash, id) = minted(&store, "agent:a").await;
        cache.token_by_hash(&hash).await.unwrap().unwrap();
        let file = dir.path().join("p.db.revocations");
        std::fs::remove_file(&file).unwrap();
        std::fs::write(dir.path().join("new"), "").unwrap();
        std::fs::rename(dir.path().join("new"), &file).unwrap();
        let other = Store::open_sqlite(&path).await.unwrap();
        assert!(other.revoke_token(&id, 9).await.unwrap());
        let r = cache.token_by_hash(&hash).await.unwrap().unwrap();
        assert_eq!(r.revoked_at, Some(9));
    }

    /// An OAuth token of `family`, issued under `client`.
    async fn oauth_token(store: &Store, client: &str, family: &str) {
        let t = token::generate().unwrap();
        store
            .insert_token(&NewTokenRow {
                hash: t.hash,
                subject: "agent:a",
                groups: &[],
                created_at: 1,
                expires_at: None,
                on_behalf_of: None,
                audience: None,
                oauth_family: Some(family),
            })
            .await
            .unwrap();
        store
            .insert_oauth_grant(&crate::OAuthGrantRow {
                hash: token::generate().unwrap().hash.0,
                kind: crate::GrantKind::Refresh,
                client_id: client.into(),
                family: family.into(),
                data: "{}".into(),
                created_at: 1,
                expires_at: i64::MAX / 2,
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn oauth_revocations_move_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("p.db")).await.unwrap();
        oauth_token(&store, "c1", "fam").await;
        oauth_token(&store, "c2", "fam2").await;
        let a = store.changes.read().unwrap();
        store.revoke_oauth_family("fam", 1).await.unwrap();
        let b = store.changes.read().unwrap();
        store.revoke_oauth_client("c2", 1).await.unwrap();
        let c = store.changes.read().unwrap();
        assert!(a != b && b != c && a != c);
    }

    /// A revocation that changes no token (a spent refresh token replayed
    /// again and again, an unknown id) leaves the caches alone: a caller
    /// cannot empty every gateway's cache, or grow the mark, at will.
    #[tokio::test]
    async fn a_revocation_that_changes_no_token_leaves_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("p.db")).await.unwrap();
        oauth_token(&store, "c1", "fam").await;
        store.revoke_oauth_family("fam", 1).await.unwrap();
        let a = store.changes.read().unwrap();
        for _ in 0..3 {
            store.revoke_oauth_family("fam", 2).await.unwrap();
            store.revoke_oauth_client("c1", 2).await.unwrap();
            assert!(!store.revoke_token("000000000000", 2).await.unwrap());
        }
        assert_eq!(store.changes.read().unwrap(), a);
    }

    #[tokio::test]
    async fn unknown_tokens_are_never_kept_and_the_map_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("p.db")).await.unwrap();
        let cache = CachedTokens::new(store.clone());
        for _ in 0..50 {
            let t = token::generate().unwrap();
            assert!(cache.token_by_hash(&t.hash).await.unwrap().is_none());
        }
        assert_eq!(cache.len(), 0);
        let (hash, _) = minted(&store, "agent:a").await;
        let record = store.token_by_hash(&hash).await.unwrap().unwrap();
        let mark = store.changes.read().unwrap();
        for i in 0..MAX_ENTRIES + 5 {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.keep(TokenHash(h), record.clone(), mark);
            assert!(cache.len() <= MAX_ENTRIES);
        }
    }
}
