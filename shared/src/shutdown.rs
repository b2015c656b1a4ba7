//! One signal function (SIGTERM, ctrl-c) feeding a [`CancellationToken`].

use tokio_util::sync::CancellationToken;

/// A token cancelled on SIGTERM or ctrl-c. Every loop of a binary watches a
/// child of it: consumers stop taking work, drain in-flight messages, exit.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("install SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown signal received; draining");
        trigger.cancel();
    });
    token
}
