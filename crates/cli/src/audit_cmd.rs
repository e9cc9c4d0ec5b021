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
    },
    /// Print the last entries.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
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
        AuditCommand::Verify { public_key } => {
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
                    println!("audit log FAILED verification: {e}");
                    store.close().await;
                    std::process::exit(1);
                }
                Err(e) => return Err(e.into()),
            }
        }
        AuditCommand::Tail { lines } => {
            let all = portcullis_audit::entries(&store).await?;
            let mut out = std::io::stdout().lock();
            for e in all.iter().skip(all.len().saturating_sub(*lines)) {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            }
        }
        AuditCommand::Export {
            format: ExportFormat::Jsonl,
        } => {
            let mut out = std::io::stdout().lock();
            for e in portcullis_audit::entries(&store).await? {
                writeln!(out, "{}", serde_json::to_string(&e)?)?;
            }
        }
    }
    store.close().await;
    Ok(())
}
