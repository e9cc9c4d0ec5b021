use std::time::Duration;

use anyhow::Context;
use portcullis_config::Config;

use crate::Cli;

/// Load the config, log its digest, open the store.
pub(crate) async fn load(cli: &Cli) -> anyhow::Result<(Config, portcullis_store::Store)> {
    let path = cli.config_path();
    if !path.exists() {
        anyhow::bail!(
            "no config at {} (run `portcullis quickstart --data-dir {}` to create one, or pass --config FILE)",
            path.display(),
            cli.data_dir.display()
        );
    }
    let config = Config::load(&path)?;
    let digest = std::fs::read(&path)
        .map(|b| portcullis_tls::sha256_hex(&b))
        .unwrap_or_default();
    tracing::info!(file = %path.display(), sha256 = %digest, "config loaded");
    let store = portcullis_store::Store::open_sqlite(&config.store.path)
        .await
        .with_context(|| format!("opening the store {}", config.store.path.display()))?;
    Ok((config, store))
}

pub(crate) async fn run(cli: &Cli) -> anyhow::Result<()> {
    let (config, store) = load(cli).await?;
    let running = portcullis_gateway::start(&config, store).await?;
    println!("portcullis: ready url={}", running.public_url);
    crate::shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
