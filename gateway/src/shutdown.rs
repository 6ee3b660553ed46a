//! When to stop: the first SIGINT or SIGTERM starts a graceful shutdown; a second one exits at once.

/// Completes on the first SIGINT or SIGTERM, and arms a second-signal hard exit.
pub async fn signal() {
    wait_one().await;
    tracing::info!("shutdown requested; send the signal again to exit at once");
    tokio::spawn(async {
        wait_one().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
}

async fn wait_one() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())
            .expect("registering the SIGTERM handler should not fail");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
