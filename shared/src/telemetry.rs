//! Logs (tracing, JSON or pretty) and metrics (a Prometheus recorder, and
//! in [`catalogue`] every metric described and exposed at zero at start).

pub mod catalogue;

use std::{io::IsTerminal, sync::OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global tracing subscriber. `RUST_LOG` filters (default `info`).
/// Safe to call more than once: later calls are ignored, which tests rely on.
pub fn init_logging(format: Option<LogFormat>) {
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn,h2=warn,hyper=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer()).try_init(),
    };
}

/// The process-wide Prometheus handle, installing the recorder on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Latency buckets from 1 ms to 2 min: provider calls and end-to-end
        // delivery both live in this range.
        let buckets = [
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ];
        // Rows per group-committed ledger statement: up to the prefetch of
        // a lane (512). Without buckets of its own it would be exported as
        // a summary, which cannot be aggregated across replicas.
        let rows = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("static buckets are valid")
            .set_buckets_for_metric(
                Matcher::Full(catalogue::delivery::LEDGER_BATCH_ROWS.name.into()),
                &rows,
            )
            .expect("static buckets are valid")
            .install_recorder()
            .expect("the metrics recorder is installed once per process")
    })
}
