use std::time::Duration;

use crate::Cli;

pub(crate) async fn run(cli: &Cli) -> anyhow::Result<()> {
    let (config, store) = cli.load().await?;
    let digest = std::fs::read(&config.source)
        .map(|b| portcullis_tls::sha256_hex(&b))
        .unwrap_or_default();
    tracing::info!(file = %config.source.display(), sha256 = %digest, "config loaded");
    let stop = crate::shutdown_signal();
    let hangups = hangups();
    let running = portcullis_gateway::start(&config, store).await?;
    println!("{}", crate::ready_line(&running));
    serve(&running, stop, hangups).await;
    tracing::info!("shutting down");
    running.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// Run until `stop`, reloading the config at each SIGHUP.
pub(crate) async fn serve(
    running: &portcullis_gateway::RunningGateway,
    stop: impl std::future::Future<Output = ()>,
    mut hangups: tokio::sync::mpsc::Receiver<()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = hangups.recv() => {
                // Logged, counted and audited by the gateway, either way.
                tracing::info!("SIGHUP: reloading the config");
                let _ = running.reload().await;
            }
        }
    }
}

/// SIGHUP, the conventional "read your config again". Installed before
/// the gateway starts, so an early one is not the default action (exit).
pub(crate) fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        // Several while one reload runs are one more reload.
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP cannot be caught; the config still reloads when its file changes")
            }
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}
