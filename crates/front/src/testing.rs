//! A [`FrontContext`] on a real SQLite store, audit log and recording
//! spool in a folder, for the fronts' middle-layer tests (feature
//! `testing`; not built into the binary).

use std::path::Path;
use std::sync::Arc;

use portcullis_config::Config;
use portcullis_store::{NewTokenRow, Store};

use crate::{FrontContext, Sessions};

/// The shared context for `cfg`, its state kept in `dir`, and the store.
pub async fn context(cfg: &Config, dir: &Path) -> (FrontContext, Store) {
    let store = Store::open_sqlite(&dir.join("p.db"))
        .await
        .expect("test store");
    let audit = portcullis_audit::AuditLog::open(store.clone(), dir)
        .await
        .expect("test audit log");
    let sink = portcullis_recordings::RecordingSink::local(dir.join("rec"));
    let sessions = Sessions::new(audit.clone(), sink);
    let approvals = portcullis_approval::Approvals::new(store.clone(), audit, None);
    let masks = portcullis_mask::RuleSet::new(&cfg.masking.rules, None).expect("masking rules");
    let mut registry = prometheus_client::registry::Registry::default();
    let mask_metrics = portcullis_mask::MaskMetrics::register(&mut registry);
    let auth = portcullis_identity::Authenticator::new(Arc::new(store.clone()));
    let ctx = FrontContext::new(
        cfg,
        auth,
        Arc::new(masks),
        mask_metrics,
        sessions,
        approvals,
    );
    (ctx, store)
}

/// A gateway token for `subject` in `groups`; the secret.
pub async fn token(store: &Store, subject: &str, groups: &[String]) -> String {
    let t = portcullis_identity::token::generate().expect("random token");
    let row = NewTokenRow {
        hash: t.hash,
        subject,
        groups,
        created_at: 0,
        expires_at: None,
        on_behalf_of: None,
        audience: None,
        oauth_family: None,
    };
    store.insert_token(&row).await.expect("token stored");
    t.secret
}
