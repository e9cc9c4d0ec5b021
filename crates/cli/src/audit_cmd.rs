//! `portcullis audit verify|tail|export`: the audit log, offline.

use std::io::Write;

use clap::{Subcommand, ValueEnum};

use crate::Cli;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ExportFormat {
    Jsonl,
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the whole chain and its signed checkpoints; name the first bad
    /// entry. Exit status 1 when the log was tampered with.
    Verify {
        /// Hex Ed25519 public key, or a file holding it [default: the data
        /// folder's audit-signing.pub].
        #[arg(long)]
        public_key: Option<String>,
        /// Print a JSON object ({"ok", "entries", "last_seq", …} or
        /// {"ok": false, "error"}); the exit status is the same.
        #[arg(long)]
        json: bool,
    },
    /// Print the last entries (JSON lines).
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep printing entries as they are written, until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Print every entry, oldest first, for a SIEM.
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
}

pub(crate) async fn run(cli: &Cli, cmd: &AuditCommand) -> anyhow::Result<()> {
    let (config, store) = cli.load().await?;
    let dir = config.dir().to_path_buf();
    match cmd {
        AuditCommand::Verify { public_key, json } => {
            let key = match public_key {
                None => None,
                Some(k) => {
                    let text = if std::path::Path::new(k).exists() {
                        std::fs::read_to_string(k)?
                    } else {
                        k.clone()
                    };
                    Some(
                        hex::decode(text.trim())
                            .map_err(|_| anyhow::anyhow!("--public-key: expected hex"))?,
                    )
                }
            };
            match portcullis_audit::verify(&store, &dir, key.as_deref()).await {
                Ok(s) if *json => println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "entries": s.entries,
                        "last_seq": s.last_seq,
                        "last_hash": s.last_hash,
                        "checkpoints": s.checkpoints,
                    })
                ),
                Ok(s) => {
                    println!(
                        "audit log OK: {} entries, last {} ({}), {} signed checkpoint(s)",
                        s.entries,
                        s.last_seq,
                        &s.last_hash[..16.min(s.last_hash.len())],
                        s.checkpoints
                    );
                }
                Err(portcullis_audit::AuditError::Verify(e)) => {
                    if *json {
                        println!(
                            "{}",
                            serde_json::json!({"ok": false, "error": e.to_string()})
                        );
                    } else {
                        println!("audit log FAILED verification: {e}");
                    }
                    store.close().await;
                    std::process::exit(1);
                }
                Err(e) => return Err(e.into()),
            }
        }
        AuditCommand::Tail { lines, follow } => {
            // Only the last `lines` entries are read, however long the log.
            let head = store.audit_head().await?.map_or(0, |h| h.0);
            let from = head.saturating_sub(*lines as i64).max(0);
            let recent = portcullis_audit::entries_after(&store, from).await?;
            let mut last = recent.last().map_or(from, |e| e.seq);
            print_entries(recent.iter())?;
            if *follow {
                let stop = crate::shutdown_signal();
                tokio::pin!(stop);
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tick.tick() => {}
                    }
                    let new = portcullis_audit::entries_after(&store, last).await?;
                    if let Some(e) = new.last() {
                        last = e.seq;
                    }
                    print_entries(new.iter())?;
                }
            }
        }
        AuditCommand::Export {
            format: ExportFormat::Jsonl,
        } => {
            // A page at a time: memory stays bounded for any log.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            portcullis_audit::for_each_entry(&store, 0, |e| {
                let line = serde_json::to_string(&e).map_err(|e| {
                    portcullis_audit::AuditError::Corrupt {
                        seq: 0,
                        reason: e.to_string(),
                    }
                })?;
                writeln!(out, "{line}")
                    .map_err(|e| portcullis_audit::AuditError::Unavailable(e.to_string()))
            })
            .await?;
            out.flush()?;
        }
    }
    store.close().await;
    Ok(())
}

/// One JSON line per entry, flushed (a follower reads them as they come).
fn print_entries<'a>(
    entries: impl Iterator<Item = &'a portcullis_audit::Entry>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for e in entries {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
    }
    out.flush()?;
    Ok(())
}
