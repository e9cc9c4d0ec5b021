use std::time::Duration;

use crate::Cli;

pub(crate) async fn run(cli: &Cli) -> anyhow::Result<()> {
    let (config, store) = cli.load().await?;
    let digest = std::fs::read(&config.source)
        .map(|b| portcullis_tls::sha256_hex(&b))
        .unwrap_or_default();
    tracing::info!(file = %config.source.display(), sha256 = %digest, "config loaded");
    let stop = crate::shutdown_signal();
    let running = portcullis_gateway::start(&config, store).await?;
    println!("{}", crate::ready_line(&running));
    stop.await;
    tracing::info!("shutting down");
    running.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
