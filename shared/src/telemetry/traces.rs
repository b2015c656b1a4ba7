//! Traces: W3C trace context (`traceparent`, `tracestate`) carried from the
//! HTTP request (or the `herald.ingest` message) through the routing and
//! delivery messages to the provider's HTTP request, with a span at each hop
//! (docs/operations.md, "Tracing").
//!
//! Spans are `tracing` spans; the [`layer`] gives Herald's own ones an
//! OpenTelemetry context, so their ids can be written into message headers
//! and read back in the next process. It is always installed, since ids must
//! travel whether or not spans are exported. Without an OTLP endpoint the
//! tracer provider has no exporter and samples a new trace out (flags `00`):
//! such spans record nothing and end as no-ops, and only a trace an upstream
//! caller marked sampled is recorded (then dropped). With an endpoint, spans
//! are batched and exported over OTLP/HTTP on a thread of their own.

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue};
use lapin::types::FieldTable;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::{Layer, filter, registry::LookupSpan};

use crate::broker::{Headers, header_str};

/// The W3C header naming the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendors' trace state.
pub const TRACESTATE: &str = "tracestate";

/// The process's tracer provider, made by the first [`layer`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Where spans go: an OTLP/HTTP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, the
/// collector's base URL; spans are posted to `/v1/traces` under it), or
/// nowhere; and the service name they are exported under.
#[derive(Debug, Clone, Default)]
pub struct Export {
    pub endpoint: Option<String>,
    pub service_name: String,
}

/// The layer that gives Herald's spans (target `herald`, level info and
/// above; never events, never other crates' spans) an OpenTelemetry
/// context. The first call makes the process's tracer provider; later calls
/// share it.
pub fn layer<S>(export: &Export) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let provider = PROVIDER.get_or_init(|| provider(export));
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("herald"))
        // Attributes only a reader of the code needs, at a cost per span.
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(filter::filter_fn(herald_span).with_max_level_hint(Level::INFO))
}

/// Spans of Herald's code at info and above: the hops and what they
/// already instrument. Decided once per callsite.
fn herald_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("herald") && *meta.level() <= Level::INFO
}

fn provider(export: &Export) -> SdkTracerProvider {
    let resource = Resource::builder()
        .with_service_name(export.service_name.clone())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = export.endpoint.as_deref().filter(|e| !e.is_empty()) else {
        // Nothing to export to: a new trace is not sampled, so its spans
        // record nothing; an upstream sampled decision is still honoured
        // and passed on.
        return builder
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build();
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(endpoint))
        .build();
    match exporter {
        Ok(exporter) => builder.with_batch_exporter(exporter).build(),
        Err(e) => {
            // Export is an aid, not a reason to refuse to start: say so loudly
            // and carry on propagating.
            eprintln!("OTLP span export is off: {e}");
            builder
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
                .build()
        }
    }
}

/// OTLP/HTTP's traces path under a collector's base URL, as the OTLP
/// exporter specification builds it from `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn traces_url(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

/// Exports the spans still buffered and stops the exporter: the last thing
/// a process does. Quick when export is off.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// A span's W3C trace context as it travels in headers: the `traceparent`
/// and `tracestate` values, read from a message or written from a span.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl TraceContext {
    /// The context of the current span (the innermost entered one of
    /// Herald's); empty outside any.
    pub fn current() -> Self {
        Self::of(&Context::current())
    }

    /// The context of `cx`'s span; empty when it has none.
    pub fn of(cx: &Context) -> Self {
        let mut out = Self::default();
        if cx.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(cx, &mut out);
        }
        out
    }

    /// What an AMQP message carries (nothing when it has no `traceparent`).
    pub fn from_amqp(headers: Option<&FieldTable>) -> Self {
        Self {
            traceparent: header_str(headers, TRACEPARENT),
            tracestate: header_str(headers, TRACESTATE),
        }
    }

    /// What an HTTP request carries.
    pub fn from_http(headers: &HeaderMap) -> Self {
        let get = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            traceparent: get(TRACEPARENT),
            tracestate: get(TRACESTATE),
        }
    }

    /// The `traceparent` value, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// The remote parent it names, for a span's `set_parent`: an empty
    /// context (a new trace) when it names none or is malformed.
    pub fn parent(&self) -> Context {
        TraceContextPropagator::new().extract(self)
    }

    /// `headers` with this context's headers added (none when empty).
    pub fn apply(&self, mut headers: Headers) -> Headers {
        if let Some(value) = &self.traceparent {
            headers = headers.str(TRACEPARENT, value);
        }
        if let Some(value) = &self.tracestate {
            headers = headers.str(TRACESTATE, value);
        }
        headers
    }

    /// The HTTP headers of this context, for an outgoing request.
    pub fn http_headers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in [
            (TRACEPARENT, &self.traceparent),
            (TRACESTATE, &self.tracestate),
        ] {
            if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                map.insert(name, value);
            }
        }
        map
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

impl Injector for TraceContext {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips_through_a_context() {
        let carried = TraceContext {
            traceparent: Some(PARENT.into()),
            tracestate: Some("congo=t61rcWkgMzE".into()),
        };
        let cx = carried.parent();
        assert!(cx.span().span_context().is_remote());
        assert_eq!(TraceContext::of(&cx), carried);
    }

    #[test]
    fn a_malformed_traceparent_names_no_parent() {
        let carried = TraceContext {
            traceparent: Some("00-not-a-trace-01".into()),
            tracestate: None,
        };
        assert!(!carried.parent().span().span_context().is_valid());
        assert_eq!(TraceContext::of(&carried.parent()), TraceContext::default());
    }

    #[test]
    fn headers_carry_it_both_ways() {
        let carried = TraceContext {
            traceparent: Some(PARENT.into()),
            tracestate: None,
        };
        let table = carried.apply(Headers::default()).into_table();
        assert_eq!(TraceContext::from_amqp(Some(&table)), carried);
        assert_eq!(TraceContext::from_http(&carried.http_headers()), carried);
    }

    #[test]
    fn the_traces_path_is_under_the_base_url() {
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
    }
}
