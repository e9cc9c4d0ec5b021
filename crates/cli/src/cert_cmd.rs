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

pub(crate) fn run(cli: &Cli, cmd: &CertCommand) -> anyhow::Result<()> {
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
            eprintln!(
                "issued a client certificate for {principal}: {} and {}",
                cert.display(),
                key.display()
            );
        }
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
