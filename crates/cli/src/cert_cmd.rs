//! `portcullis cert issue|rotate-server`: certificates from the internal CA.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use portcullis_tls::{CertificateAuthority, LeafKind};

use crate::Cli;

#[derive(Subcommand)]
pub(crate) enum CertCommand {
    /// Issue a client certificate for a principal (for mTLS).
    Issue {
        /// e.g. agent:build-bot; the certificate's name is what follows `kind:`.
        #[arg(long)]
        principal: String,
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Write PREFIX.pem and PREFIX.key (0600) [default: ./<name>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print a JSON object ({"principal", "cert", "key", "expires_at"}).
        #[arg(long)]
        json: bool,
    },
    /// Revoke a client certificate (a caller's or an agent's): refused from
    /// the next request, and an agent's live link is cut within seconds.
    Revoke {
        /// The certificate (PEM) to revoke.
        #[arg(
            long,
            conflicts_with = "fingerprint",
            required_unless_present = "fingerprint"
        )]
        cert: Option<PathBuf>,
        /// Its SHA-256 fingerprint (hex), as logged at the handshake.
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Issue a new server certificate for localhost, 127.0.0.1 and ::1 (and
    /// --name …), replacing the data folder's server.pem/server.key.
    RotateServer {
        /// More DNS names or IP addresses (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

pub(crate) async fn run(cli: &Cli, cmd: &CertCommand) -> anyhow::Result<()> {
    if let CertCommand::Revoke { cert, fingerprint } = cmd {
        let (fp, subject) = match (cert, fingerprint) {
            (Some(path), _) => {
                let chain = portcullis_tls::load_cert_chain(path)?;
                let leaf = chain
                    .first()
                    .ok_or_else(|| anyhow::anyhow!("no certificate"))?;
                let subject = portcullis_tls::client_cert::principal_name(
                    leaf,
                    &[
                        portcullis_tls::CertName::Spiffe,
                        portcullis_tls::CertName::Dns,
                        portcullis_tls::CertName::CommonName,
                    ],
                )
                .ok();
                (portcullis_tls::sha256_hex(leaf), subject)
            }
            (None, Some(f)) => {
                let f = f.to_ascii_lowercase();
                if f.len() != 64 || !f.chars().all(|c| c.is_ascii_hexdigit()) {
                    anyhow::bail!("--fingerprint: 64 hex digits (SHA-256 of the certificate)");
                }
                (f, None)
            }
            (None, None) => anyhow::bail!("give --cert FILE or --fingerprint HEX"),
        };
        let (config, store) = cli.load().await?;
        let now = portcullis_identity::unix_now();
        store.revoke_cert(&fp, subject.as_deref(), now).await?;
        crate::token_cmd::audit_admin(
            &store,
            config.dir(),
            "certificate_revoked",
            serde_json::json!({"fingerprint": fp, "subject": subject}),
        )
        .await?;
        eprintln!(
            "revoked certificate {fp}{}",
            subject.map(|s| format!(" ({s})")).unwrap_or_default()
        );
        return Ok(());
    }
    let dir = &cli.data_dir;
    if !dir.join("ca.pem").exists() {
        anyhow::bail!(
            "no internal CA in {} (run `portcullis quickstart` first)",
            dir.display()
        );
    }
    let (ca, _) = CertificateAuthority::load_or_create(dir)?;
    match cmd {
        CertCommand::Issue {
            principal,
            ttl,
            out,
            json,
        } => {
            portcullis_identity::validate_subject(principal).map_err(anyhow::Error::msg)?;
            let name = principal
                .split_once(':')
                .map(|(_, n)| n)
                .unwrap_or(principal);
            let prefix = out.clone().unwrap_or_else(|| PathBuf::from(name));
            let (cert, key) = ca.write_leaf(
                LeafKind::Client,
                &prefix,
                std::slice::from_ref(principal),
                *ttl,
            )?;
            if *json {
                let expires = portcullis_identity::unix_now()
                    .saturating_add(ttl.as_secs().min(i64::MAX as u64) as i64);
                println!(
                    "{}",
                    serde_json::json!({
                        "principal": principal,
                        "cert": cert.display().to_string(),
                        "key": key.display().to_string(),
                        "expires_at": crate::token_cmd::rfc3339(expires),
                    })
                );
            } else {
                eprintln!(
                    "issued a client certificate for {principal}: {} and {}",
                    cert.display(),
                    key.display()
                );
            }
        }
        CertCommand::Revoke { .. } => unreachable!("handled above"),
        CertCommand::RotateServer { names, ttl } => {
            let mut all: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
            all.extend(names.iter().cloned());
            let (cert, _) = ca.write_leaf(LeafKind::Server, &dir.join("server"), &all, *ttl)?;
            eprintln!(
                "wrote a new server certificate to {} (a running gateway serves it within seconds, no restart)",
                cert.display()
            );
        }
    }
    Ok(())
}
