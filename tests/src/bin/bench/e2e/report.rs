//! The phases in order, and what they come to: a Markdown table, JSON, and
//! an SVG plot of latency against offered rate.

use std::{fmt::Write as _, path::Path, time::Duration};

use herald_tests::faults::procs::Proc;

use super::{
    Args, Pipeline, ceiling,
    load::{self, Mode, Percentiles, Phase},
};

/// A figure over rounds: median and range.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.median >= 10.0 {
            write!(f, "{:.0} ({:.0}-{:.0})", self.median, self.min, self.max)
        } else {
            write!(f, "{:.3} ({:.3}-{:.3})", self.median, self.min, self.max)
        }
    }
}

/// One round: the ceiling and single sends, back to back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Round {
    pub ceiling_per_sec: f64,
    pub singles: Phase,
}

/// A point of the open loop.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpenPoint {
    /// Fraction of the closed loop's end-to-end rate offered.
    pub fraction: f64,
    pub offered_per_sec: f64,
    pub phase: Phase,
}

/// `high` sends while a `bulk` topic drains.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HighUnderBulk {
    pub topic_subscribers: usize,
    pub high_per_sec: f64,
    pub high: Phase,
    /// Topic deliveries made while the `high` sends were measured.
    pub bulk_delivered_meanwhile: usize,
}

/// CPU time and peak memory of one process over the whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Usage {
    pub process: String,
    pub cpu_secs: f64,
    pub peak_rss_mib: f64,
}

/// Everything `bench e2e` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub machine: String,
    /// `local` or `cluster of 3`.
    pub broker: String,
    /// `QUEUE_SHARDS` of the binaries.
    pub shards: u16,
    /// `INLINE_ROUTING_MAX_USERS` of ingest, when the benchmark set it.
    pub inline_routing_max_users: Option<usize>,
    pub notifications: usize,
    pub concurrency: usize,
    pub rounds: Vec<Round>,
    pub ceiling: Spread,
    pub accepted: Spread,
    pub delivered: Spread,
    pub delivered_ratio: Spread,
    pub accepted_ratio: Spread,
    pub batch: Phase,
    pub keyed: Phase,
    pub keyed_vs_single: f64,
    pub open_loop: Vec<OpenPoint>,
    pub high_under_bulk: HighUnderBulk,
    pub usage: Vec<Usage>,
}

/// Runs every phase on `p`.
pub async fn measure(p: &Pipeline, args: &Args) -> anyhow::Result<Summary> {
    let (n, c) = (args.notifications, args.concurrency);
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let ceiling_per_sec = ceiling::measure(&p.env, &p.amqp_url, n, c).await?;
        let singles = load::closed_loop(p, n, c, Mode::Single).await?;
        eprintln!(
            "round {round}: ceiling {ceiling_per_sec:.0}/s; singles accepted {:.0}/s, delivered {:.0}/s ({:.3} of the ceiling)",
            singles.accepted_per_sec,
            singles.delivered_per_sec,
            singles.delivered_per_sec / ceiling_per_sec
        );
        rounds.push(Round {
            ceiling_per_sec,
            singles,
        });
    }
    let spread = |f: &dyn Fn(&Round) -> f64| Spread::of(rounds.iter().map(f).collect());
    let delivered = spread(&|r| r.singles.delivered_per_sec);
    let batch = load::closed_loop(p, n, c, Mode::Batch(100)).await?;
    eprintln!("batch: {batch:?}");
    let keyed = load::closed_loop(p, n, c, Mode::Keyed).await?;
    eprintln!("keyed: {keyed:?}");
    let mut open_loop = Vec::new();
    for fraction in [0.25, 0.5, 0.75, 0.9] {
        let offered = delivered.median * fraction;
        let phase =
            load::open_loop(p, offered, args.open_loop_secs, "normal", Mode::Single).await?;
        eprintln!("open loop at {fraction}: {phase:?}");
        open_loop.push(OpenPoint {
            fraction,
            offered_per_sec: offered,
            phase,
        });
    }
    let high_under_bulk = high_under_bulk(p, args).await?;
    eprintln!("high under bulk: {high_under_bulk:?}");
    let usage = [&p.ingest, &p.router, &p.worker]
        .into_iter()
        .map(usage)
        .collect();
    Ok(Summary {
        machine: machine(),
        broker: if args.cluster {
            "cluster of 3"
        } else {
            "local"
        }
        .to_owned(),
        shards: args.shards,
        inline_routing_max_users: args.inline_routing_max_users,
        notifications: n,
        concurrency: c,
        ceiling: spread(&|r| r.ceiling_per_sec),
        accepted: spread(&|r| r.singles.accepted_per_sec),
        delivered,
        delivered_ratio: spread(&|r| r.singles.delivered_per_sec / r.ceiling_per_sec),
        accepted_ratio: spread(&|r| r.singles.accepted_per_sec / r.ceiling_per_sec),
        keyed_vs_single: keyed.delivered_per_sec / delivered.median,
        rounds,
        batch,
        keyed,
        open_loop,
        high_under_bulk,
        usage,
    })
}

/// Where the `high` notifications' time went, stage by stage, from the
/// database's own timestamps (each a transaction's start): accepted
/// (ingest's insert) to routed (the router's status update, after its
/// delivery publishes were confirmed), routed to claimed (the worker's
/// claim), claimed to settled (the provider call and the outcome's
/// transaction start).
pub async fn high_stages(p: &Pipeline) -> anyhow::Result<String> {
    let rows: Vec<(String, f64, f64, f64)> = sqlx::query_as(
        "WITH s AS (
           SELECT extract(epoch FROM n.routed_at - n.created_at) * 1000 AS routed,
                  extract(epoch FROM d.claimed_at - n.routed_at) * 1000 AS claimed,
                  extract(epoch FROM d.sent_at - d.claimed_at) * 1000 AS settled
           FROM notifications n JOIN deliveries d ON d.notification_id = n.id AND d.created_at = n.created_at
           WHERE n.priority = 'high' AND d.sent_at IS NOT NULL)
         SELECT q, percentile_cont(f) WITHIN GROUP (ORDER BY routed),
                   percentile_cont(f) WITHIN GROUP (ORDER BY claimed),
                   percentile_cont(f) WITHIN GROUP (ORDER BY settled)
         FROM s, (VALUES ('p50', 0.5::float8), ('p95', 0.95), ('p99', 0.99), ('max', 1.0)) AS v(q, f)
         GROUP BY q, f ORDER BY f",
    )
    .fetch_all(&p.env.pool)
    .await?;
    let mut out = String::from(
        "| `high` stage, ms | accepted to routed | routed to claimed | claimed to settled |\n|---|---|---|---|\n",
    );
    for (q, routed, claimed, settled) in rows {
        let _ = writeln!(out, "| {q} | {routed:.1} | {claimed:.1} | {settled:.1} |");
    }
    Ok(out)
}

/// Seeds a topic, sends it `bulk`, and measures `high` sends while it
/// drains.
pub async fn high_under_bulk(p: &Pipeline, args: &Args) -> anyhow::Result<HighUnderBulk> {
    for sql in [
        "INSERT INTO users (tenant_id, id) SELECT 'bench', 'bt-' || g FROM generate_series(1, $1) g",
        "INSERT INTO devices (tenant_id, user_id, token, platform)
         SELECT 'bench', 'bt-' || g, 'bench-topic-' || g, 'fcm' FROM generate_series(1, $1) g",
        "INSERT INTO topic_subscriptions (tenant_id, topic, user_id)
         SELECT 'bench', 'everyone', 'bt-' || g FROM generate_series(1, $1) g",
    ] {
        sqlx::query(sql)
            .bind(args.topic as i32)
            .execute(&p.env.pool)
            .await?;
    }
    let resp = reqwest::Client::new()
        .post(p.ingest.url("/v1/notifications"))
        .bearer_auth(&p.key)
        .json(&serde_json::json!({
            "category": "marketing", "priority": "bulk", "to": {"topic": "everyone"},
            "content": {"push": {"title": "Sale"}},
        }))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().as_u16() == 202,
        "topic send: {}",
        resp.status()
    );
    // Let the topic's deliveries get going before measuring.
    let before = p.fcm.request_count();
    let started = std::time::Instant::now();
    while p.fcm.request_count() < before + 1_000 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = p.fcm.request_count();
    let high_per_sec = 20.0;
    let high = load::open_loop(p, high_per_sec, args.open_loop_secs, "high", Mode::Single).await?;
    Ok(HighUnderBulk {
        topic_subscribers: args.topic,
        high_per_sec,
        bulk_delivered_meanwhile: p.fcm.request_count() - during - high.notifications,
        high,
    })
}

fn usage(proc: &Proc) -> Usage {
    let pid = proc.pid().unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, stime the 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    Usage {
        process: proc.name().to_owned(),
        // Clock ticks of 1/100 s (USER_HZ on Linux).
        cpu_secs: (ticks(11) + ticks(12)) / 100.0,
        peak_rss_mib: hwm / 1024.0,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn row(out: &mut String, name: &str, phase: &Phase, ceiling: f64) {
    let l = &phase.latency;
    let _ = writeln!(
        out,
        "| {name} | {:.0} | {:.0} | {:.3} | {:.0} / {:.0} / {:.0} |",
        phase.accepted_per_sec,
        phase.delivered_per_sec,
        phase.delivered_per_sec / ceiling,
        l.p50,
        l.p95,
        l.p99
    );
}

impl Summary {
    /// The figures as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Machine: {}. Broker: {}, {} shard(s) per lane. Inline routing: {}. {} notifications per measurement, {} concurrent clients, {} rounds.\n",
            self.machine,
            self.broker,
            self.shards,
            match self.inline_routing_max_users {
                Some(0) => "off".to_owned(),
                Some(n) => format!("up to {n} users"),
                None => "ingest's default".to_owned(),
            },
            self.notifications,
            self.concurrency,
            self.rounds.len()
        );
        let _ = writeln!(out, "| figure | median (range) |\n|---|---|");
        let _ = writeln!(
            out,
            "| broker single-hop ceiling, msgs/s | {} |",
            self.ceiling
        );
        let _ = writeln!(out, "| single sends accepted/s | {} |", self.accepted);
        let _ = writeln!(out, "| accepted / ceiling | {} |", self.accepted_ratio);
        let _ = writeln!(
            out,
            "| single sends delivered/s end to end | {} |",
            self.delivered
        );
        let _ = writeln!(out, "| delivered / ceiling | {} |", self.delivered_ratio);
        let _ = writeln!(
            out,
            "\n| phase | accepted/s | delivered/s | delivered / ceiling | request to provider p50 / p95 / p99 ms |\n|---|---|---|---|---|"
        );
        let ceiling = self.ceiling.median;
        for (i, r) in self.rounds.iter().enumerate() {
            row(
                &mut out,
                &format!("single sends, round {}", i + 1),
                &r.singles,
                r.ceiling_per_sec,
            );
        }
        row(&mut out, "batches of 100", &self.batch, ceiling);
        row(
            &mut out,
            "single sends with Idempotency-Key",
            &self.keyed,
            ceiling,
        );
        for point in &self.open_loop {
            row(
                &mut out,
                &format!(
                    "open loop at {:.0}% ({:.0}/s offered)",
                    point.fraction * 100.0,
                    point.offered_per_sec
                ),
                &point.phase,
                ceiling,
            );
        }
        let h = &self.high_under_bulk;
        row(
            &mut out,
            &format!(
                "`high` at {:.0}/s while a {}-subscriber `bulk` topic drains",
                h.high_per_sec, h.topic_subscribers
            ),
            &h.high,
            ceiling,
        );
        let _ = writeln!(
            out,
            "\nKeyed sends delivered at {:.2} of plain single sends. The topic delivered {} while `high` was measured.\n",
            self.keyed_vs_single, h.bulk_delivered_meanwhile
        );
        let _ = writeln!(out, "| process | CPU s | peak RSS MiB |\n|---|---|---|");
        for u in &self.usage {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.0} |",
                u.process, u.cpu_secs, u.peak_rss_mib
            );
        }
        out
    }

    /// Writes `e2e.json`, `e2e.md` and `e2e-latency.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("e2e.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("e2e.md"), self.markdown())?;
        let points: Vec<(f64, Percentiles)> = self
            .open_loop
            .iter()
            .map(|p| (p.offered_per_sec, p.phase.latency))
            .collect();
        std::fs::write(dir.join("e2e-latency.svg"), super::svg::latency(&points))?;
        eprintln!(
            "wrote {}/e2e.{{json,md}} and e2e-latency.svg",
            dir.display()
        );
        Ok(())
    }
}
