//! Logs (tracing, JSON or pretty), traces ([`traces`]: W3C trace context
//! across processes, OTLP export) and metrics (a Prometheus recorder, and
//! in [`catalogue`] every metric described and exposed at zero at start).

pub mod catalogue;
pub mod traces;

use std::{io::IsTerminal, sync::OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::{CommonConfig, LogFormat};

/// Installs the global tracing subscriber: logs (`RUST_LOG` filters them,
/// default `info`) and the spans' trace context ([`traces::layer`], exported
/// over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set). `service` names the
/// process's spans unless `OTEL_SERVICE_NAME` does. Safe to call more than
/// once: later calls are ignored, which tests rely on.
pub fn init(common: &CommonConfig, service: &str) {
    let export = traces::Export {
        endpoint: common.otlp_endpoint.clone(),
        service_name: common
            .service_name
            .clone()
            .unwrap_or_else(|| service.to_owned()),
    };
    let format = common
        .log_format
        .unwrap_or(if std::io::stdout().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    // The filter is the log's own: trace context must travel whatever
    // `RUST_LOG` silences, so the span layer filters for itself.
    // lapin logs a message the broker returned as unroutable with its whole
    // body (addresses, content): the publisher reports it as
    // `PublishError::Unroutable` instead, without the body.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,lapin=warn,lapin::returned_messages=off,h2=warn,hyper=warn")
    });
    let logs = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => fmt::layer().boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces::layer(&export))
        .try_init();
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
