//! Configuration shared by every binary: environment variables, each mirrored
//! by a flag (`DATABASE_URL` / `--database-url`). Binary-specific settings live
//! next to the code that uses them and flatten [`CommonConfig`] in.

use std::{fmt, str::FromStr, time::Duration};

/// Settings every process needs: where the broker and database are, how to log.
///
/// The URLs may carry passwords: clap is told not to print their values in
/// `--help` (`hide_env_values`), and `Debug` shows them redacted.
#[derive(clap::Args, Clone)]
pub struct CommonConfig {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/herald"
    )]
    pub database_url: String,

    /// PostgreSQL for reads that tolerate bounded staleness (a streaming
    /// replica): the status API, the admin overview, `heraldctl stats`.
    /// Default: `DATABASE_URL`.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,

    /// Most PostgreSQL connections this process opens (per pool: a
    /// separate `DATABASE_READ_URL` gets a pool of its own).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// RabbitMQ connection URL, or the URLs of a cluster's nodes separated
    /// by commas (`amqp://u:p@mq-0:5672/%2f,amqp://u:p@mq-1:5672/%2f`): a
    /// connect tries them in turn, starting after the one that failed last.
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_parser = parse_amqp_urls
    )]
    pub amqp_url: String,

    /// Prefix of every exchange and queue name. Lets several deployments
    /// (or tests) share one vhost without touching each other.
    #[arg(long, env = "BROKER_PREFIX", default_value = "herald")]
    pub broker_prefix: String,

    /// How many queues each lane queue is split into (the router's and each
    /// channel's): one quorum queue has one leader, and so one node's
    /// throughput. Publishers pick a shard by user (deliveries) or by
    /// notification (routing), consumers read every shard. Every binary of
    /// a deployment must use the same value; docs/topology.md says how to
    /// change it.
    #[arg(long, env = "QUEUE_SHARDS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queue_shards: u16,

    /// Delays between delivery attempts, one retry tier each.
    #[arg(long, env = "RETRY_SCHEDULE", default_value = RetrySchedule::DEFAULT)]
    pub retry_schedule: RetrySchedule,

    /// `json` or `pretty`; default: pretty on a terminal, JSON otherwise.
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// OTLP/HTTP collector to export spans to (its base URL, e.g.
    /// `http://otel-collector:4318`); unset: spans are not exported, but
    /// trace context is still carried across processes.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Service name of exported spans; default: the binary's name.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
}

impl fmt::Debug for CommonConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommonConfig")
            .field("database_url", &redact_url(&self.database_url))
            .field(
                "database_read_url",
                &self.database_read_url.as_deref().map(redact_url),
            )
            .field("amqp_url", &redact_urls(&self.amqp_url))
            .field("broker_prefix", &self.broker_prefix)
            .field("queue_shards", &self.queue_shards)
            .field("retry_schedule", &self.retry_schedule)
            .finish_non_exhaustive()
    }
}

impl CommonConfig {
    /// The exchange and queue names of this deployment.
    pub fn names(&self) -> crate::broker::Names {
        crate::broker::Names::new(&self.broker_prefix).with_shards(self.queue_shards)
    }

    /// Where reads that tolerate bounded staleness go: `DATABASE_READ_URL`,
    /// or `DATABASE_URL` when it is unset.
    pub fn read_database_url(&self) -> &str {
        self.database_read_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or(&self.database_url)
    }

    /// The pool for reads that tolerate bounded staleness: `primary` itself
    /// when `DATABASE_READ_URL` is unset or the same, so a deployment
    /// without a replica opens no second pool.
    pub fn read_pool(&self, primary: &sqlx::PgPool) -> Result<sqlx::PgPool, sqlx::Error> {
        if self.read_database_url() == self.database_url {
            return Ok(primary.clone());
        }
        crate::db::connect_lazy(self.read_database_url(), self.database_max_connections)
    }
}

/// Checks `AMQP_URL`: one `amqp://` or `amqps://` URL, or several separated
/// by commas.
fn parse_amqp_urls(value: &str) -> Result<String, String> {
    crate::broker::addresses::parse(value).map(|_| value.to_owned())
}

/// [`redact_url`] for each URL of a comma-separated list (`AMQP_URL`).
pub fn redact_urls(list: &str) -> String {
    match crate::broker::addresses::parse(list) {
        Ok(urls) => urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(","),
        Err(_) => redact_url(list),
    }
}

/// Hides the password of a URL so configuration can be logged.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable, for terminals.
    Pretty,
}

/// The delays between delivery attempts: one retry tier per entry, so its
/// length is the number of retries and attempts are `len + 1`.
#[derive(Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// Eight attempts over about two hours: quick retries catch blips, the
    /// long tail rides out a provider outage.
    pub const DEFAULT: &'static str = "10s,1m,5m,10m,20m,30m,55m";

    /// The delays, in order.
    pub fn delays(&self) -> &[Duration] {
        &self.0
    }

    /// Jitter steps: each tier exists as four queues at 1.0, 1.1, 1.2 and 1.3
    /// times its delay, and a retry picks one at random, so the retries of a
    /// provider outage come back spread over 30% of the tier, not as a herd.
    pub const JITTER_STEPS: [f64; 4] = [1.0, 1.1, 1.2, 1.3];

    /// Every delay a retry queue exists for: each tier at each jitter step.
    pub fn queue_delays(&self) -> Vec<Duration> {
        let mut delays: Vec<Duration> = self
            .0
            .iter()
            .flat_map(|d| {
                Self::JITTER_STEPS
                    .iter()
                    .map(move |s| Duration::from_millis((d.as_millis() as f64 * s).round() as u64))
            })
            .collect();
        delays.sort();
        delays.dedup();
        delays
    }

    /// Builds a schedule from delays (tests use sub-second ones).
    pub fn from_delays(delays: Vec<Duration>) -> Self {
        Self(delays)
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::DEFAULT.parse().expect("default schedule parses")
    }
}

impl fmt::Debug for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for RetrySchedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let delays = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| humantime::parse_duration(p).map_err(|e| format!("`{p}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.iter().any(|d| d.is_zero()) {
            return Err("retry delays must be greater than zero".into());
        }
        // RabbitMQ's x-message-ttl is a 32-bit count of milliseconds.
        if delays.iter().any(|d| d.as_millis() > u32::MAX as u128) {
            return Err("retry delays must be under 49 days".into());
        }
        Ok(Self(delays))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_parses_and_prints() {
        let s: RetrySchedule = "5s, 30s,2m".parse().unwrap();
        assert_eq!(s.delays().len(), 3);
        assert_eq!(s.to_string(), "5s,30s,2m");
        assert!("5s,0s".parse::<RetrySchedule>().is_err());
        assert!("soon".parse::<RetrySchedule>().is_err());
        let total: Duration = RetrySchedule::default().delays().iter().sum();
        assert!(total > Duration::from_secs(7000) && total < Duration::from_secs(7500));
    }

    #[test]
    fn debug_hides_the_urls_passwords() {
        let config = CommonConfig {
            database_url: "postgres://herald:pg-s3cret@db:5432/herald".into(),
            database_read_url: Some("postgres://herald:ro-s3cret@db-ro:5432/herald".into()),
            database_max_connections: 4,
            amqp_url: "amqps://herald:mq-s3cret@mq-0/%2f,amqps://herald:mq-s3cret@mq-1/%2f".into(),
            broker_prefix: "herald".into(),
            queue_shards: 1,
            retry_schedule: RetrySchedule::default(),
            log_format: None,
            otlp_endpoint: None,
            service_name: None,
        };
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("pg-s3cret")
                && !debug.contains("mq-s3cret")
                && !debug.contains("ro-s3cret"),
            "{debug}"
        );
        assert!(
            debug.contains("amqps://herald:***@mq-0/%2f,amqps://herald:***@mq-1/%2f"),
            "{debug}"
        );
        assert!(
            debug.contains("postgres://herald:***@db:5432/herald"),
            "{debug}"
        );
    }

    #[test]
    fn reads_go_to_database_read_url_or_else_to_database_url() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            common: CommonConfig,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("bin").chain(args.iter().copied()))
                .map(|c| c.common)
        };
        let c = parse(&["--database-url", "postgres://db/h"]).unwrap();
        assert_eq!(c.read_database_url(), "postgres://db/h");
        let c = parse(&[
            "--database-url",
            "postgres://db/h",
            "--database-read-url",
            "postgres://replica/h",
        ])
        .unwrap();
        assert_eq!(c.read_database_url(), "postgres://replica/h");
        // A single URL and a list of a cluster's nodes; anything else is
        // refused at start.
        assert!(parse(&["--amqp-url", "amqp://mq-0/%2f,amqp://mq-1/%2f"]).is_ok());
        assert!(parse(&["--amqp-url", "mq-0:5672"]).is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/herald"),
            "postgres://postgres@127.0.0.1/herald"
        );
    }
}
