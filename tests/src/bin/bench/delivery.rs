//! The delivery benchmark: for each channel, the raw consume-and-ack rate of
//! its lane queue (the ceiling), then the worker's deliveries/s through a
//! fake provider speaking the real protocol on loopback.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use herald::{
    broker::Publisher,
    model::{
        Channel, Lane,
        message::{DeliveryMessage, Destination, EmailMessage, PushMessage, Rendered, SmsMessage},
        user::Platform,
    },
    providers::{
        Outcome, SendContext,
        config::{EmailProviderKind, ProviderConfig, PushProviderKind, SmsProviderKind},
    },
};
use herald_tests::{
    TestEnv,
    fakes::{fcm::FcmFake, smtp::SmtpFake, twilio::TwilioFake},
};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};

/// Seeds `n` pending deliveries and returns their messages.
async fn seed(env: &TestEnv, channel: Channel, n: usize) -> Vec<DeliveryMessage> {
    let notification = uuid::Uuid::now_v7();
    let created_at = chrono::Utc::now();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ('bench', 'bench') ON CONFLICT DO NOTHING")
        .execute(&env.pool)
        .await
        .expect("tenant");
    let msgs: Vec<DeliveryMessage> = (0..n)
        .map(|i| {
            let (destination, rendered) = match channel {
                Channel::Push => (
                    Destination {
                        address: format!("token-{i:08}"),
                        platform: Some(Platform::Fcm),
                    },
                    Rendered::Push(PushMessage {
                        title: Some("Hello".into()),
                        body: Some("World".into()),
                        data: Default::default(),
                    }),
                ),
                Channel::Email => (
                    Destination {
                        address: format!("user{i}@example.com"),
                        platform: None,
                    },
                    Rendered::Email(EmailMessage {
                        subject: "Hello".into(),
                        text: Some("World".into()),
                        html: None,
                    }),
                ),
                Channel::Sms => (
                    Destination {
                        address: format!("+1415{i:07}"),
                        platform: None,
                    },
                    Rendered::Sms(SmsMessage {
                        text: "Hello".into(),
                    }),
                ),
            };
            DeliveryMessage {
                delivery_id: uuid::Uuid::now_v7(),
                created_at,
                notification_id: notification,
                tenant_id: "bench".into(),
                user_id: format!("user-{i}"),
                channel,
                lane: Lane::Normal,
                destination,
                rendered,
                expires_at: None,
            }
        })
        .collect();
    let ids: Vec<uuid::Uuid> = msgs.iter().map(|m| m.delivery_id).collect();
    let users: Vec<String> = msgs.iter().map(|m| m.user_id.clone()).collect();
    let dests: Vec<String> = msgs.iter().map(|m| m.destination.address.clone()).collect();
    sqlx::query(
        "INSERT INTO deliveries (id, created_at, notification_id, tenant_id, user_id, channel, lane, destination, status)
         SELECT u.id, $1, $2, 'bench', u.user_id, $3, 'normal', u.dest, 'pending'
         FROM UNNEST($4::uuid[], $5::text[], $6::text[]) AS u(id, user_id, dest)",
    )
    .bind(created_at)
    .bind(notification)
    .bind(channel.as_str())
    .bind(&ids)
    .bind(&users)
    .bind(&dests)
    .execute(&env.pool)
    .await
    .expect("seed deliveries");
    msgs
}

async fn publish(env: &TestEnv, msgs: &[DeliveryMessage]) {
    let publisher = Publisher::new(env.broker().await);
    let names = env.names();
    stream::iter(msgs.chunks(500))
        .for_each(|chunk| {
            let out: Vec<_> = chunk.iter().map(|m| m.outgoing(&names)).collect();
            let publisher = publisher.clone();
            async move {
                for r in publisher.publish_all(&out).await {
                    r.expect("publish");
                }
            }
        })
        .await;
}

/// Consumes and acks `n` messages one by one with the worker's prefetch.
async fn raw_consume(env: &TestEnv, queue: &str, n: usize) -> f64 {
    let broker = env.broker().await;
    let ch = broker.channel().await.expect("channel");
    ch.basic_qos(
        herald::delivery::prefetch(Lane::Normal),
        BasicQosOptions::default(),
    )
    .await
    .expect("qos");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .expect("consume");
    let started = Instant::now();
    for _ in 0..n {
        let d = consumer.next().await.expect("message").expect("delivery");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    broker.close().await;
    rate
}

/// Waits until `n` deliveries are sent and returns the worker's busy time:
/// from its first claim to its last recorded send, both by the database's
/// clock, so neither worker start-up nor this poll's interval is counted.
/// The poll is slow on purpose: it shares the machine with what it measures.
async fn wait_sent(env: &TestEnv, n: usize) -> Duration {
    let started = Instant::now();
    loop {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'sent'")
            .fetch_one(&env.pool)
            .await
            .expect("count");
        if sent as usize >= n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {sent} of {n} sent"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let busy: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM max(sent_at) - min(claimed_at))::float8 FROM deliveries",
    )
    .fetch_one(&env.pool)
    .await
    .expect("busy time");
    Duration::from_secs_f64(busy)
}

/// SMTP sessions the email worker keeps open in the benchmark. Each email is
/// a session of five round trips; 16 (the default) is a conservative
/// relay limit, and a fast relay's throughput is sessions / round-trip time.
const SMTP_SESSIONS: u32 = 64;

fn provider_name(row: Option<Channel>) -> &'static str {
    match row {
        Some(Channel::Push) => "fcm",
        Some(Channel::Email) => "smtp",
        Some(Channel::Sms) => "twilio",
        None => "log",
    }
}

/// One measurement of a row, each per second.
#[derive(Clone, Copy)]
struct Measured {
    /// Raw consume-and-ack of the lane queue.
    ceiling: f64,
    /// The provider client against its fake, nothing else (NaN: no provider).
    alone: f64,
    /// The worker, end to end.
    worker: f64,
    /// The machine's CPU time per delivery, in microseconds, while each of
    /// the three ran: (ceiling, provider alone, worker).
    cpu: (f64, f64, f64),
}

/// The machine's busy and total CPU time so far, in clock ticks, from
/// `/proc/stat` (every process: broker, database, fakes and this one).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let idle = at(3) + at(4);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    (busy, busy + idle)
}

/// Microseconds of busy CPU per item since `from`, counting every core.
fn cpu_per(from: (u64, u64), items: usize) -> f64 {
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let busy = cpu_ticks().0.saturating_sub(from.0) as f64;
    busy / ticks_per_sec * 1e6 / items as f64
}

/// Runs `rounds` rounds of every wanted row and prints each row's medians:
/// on a shared machine one round can land on a busy moment, so every round
/// measures its ceiling and its worker back to back, and the ratio quoted is
/// the median of the rounds' ratios.
pub async fn run(n: usize, only: &[String], rounds: usize) -> anyhow::Result<()> {
    let mut rows: Vec<(Option<Channel>, Vec<Measured>)> = Vec::new();
    for round in 1..=rounds.max(1) {
        eprintln!("round {round} of {rounds}");
        for (channel, m) in run_round(n, only).await? {
            match rows.iter_mut().find(|(c, _)| *c == channel) {
                Some((_, runs)) => runs.push(m),
                None => rows.push((channel, vec![m])),
            }
        }
    }
    println!(
        "delivery benchmark: {n} deliveries per channel, normal lane, unlimited budget, median of {rounds} rounds"
    );
    println!(
        "{:<34} {:>20} {:>20} {:>22} {:>8} {:>14}",
        "channel",
        "raw consume+ack /s",
        "provider alone /s",
        "worker delivered /s",
        "ratio",
        "ratio range"
    );
    for (channel, runs) in &rows {
        let name = channel.map_or("sms, log provider (engine alone)", |c| c.as_str());
        let ceiling = median(runs.iter().map(|r| r.ceiling).collect());
        let alone = median(runs.iter().map(|r| r.alone).collect());
        let rate = median(runs.iter().map(|r| r.worker).collect());
        let ratios: Vec<f64> = runs.iter().map(|r| r.worker / r.ceiling).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        println!(
            "{name:<34} {ceiling:>20.0} {:>20} {rate:>22.0} {:>8.2} {:>14}",
            or_dash(alone),
            median(ratios),
            format!("{lo:.2}-{hi:.2}")
        );
    }
    println!();
    println!("machine CPU time per delivery, microseconds (every process, every core; medians)");
    println!(
        "{:<34} {:>20} {:>20} {:>22}",
        "channel", "raw consume+ack", "provider alone", "worker"
    );
    for (channel, runs) in &rows {
        let name = channel.map_or("sms, log provider (engine alone)", |c| c.as_str());
        let cpu = |pick: fn(&Measured) -> f64| median(runs.iter().map(pick).collect());
        println!(
            "{name:<34} {:>20.0} {:>20} {:>22.0}",
            cpu(|m| m.cpu.0),
            or_dash(cpu(|m| m.cpu.1)),
            cpu(|m| m.cpu.2)
        );
    }
    Ok(())
}

fn or_dash(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else {
        format!("{value:.0}")
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The fake providers of one row.
#[derive(Default)]
struct Fakes {
    fcm: Option<FcmFake>,
    smtp: Option<SmtpFake>,
    twilio: Option<TwilioFake>,
}

impl Fakes {
    async fn start(row: Option<Channel>) -> Self {
        let mut fakes = Self::default();
        match row {
            Some(Channel::Push) => fakes.fcm = Some(FcmFake::start().await),
            Some(Channel::Email) => fakes.smtp = Some(SmtpFake::start().await),
            Some(Channel::Sms) => fakes.twilio = Some(TwilioFake::start().await),
            None => {}
        }
        fakes
    }

    /// Points the row's provider at its fake (no fake: the `log` provider).
    fn configure(&self, p: &mut ProviderConfig) {
        if let Some(fcm) = &self.fcm {
            p.push_provider = vec![PushProviderKind::Fcm];
            p.fcm_base_url = fcm.base_url();
            p.fcm_token_url = Some(fcm.token_url());
            p.fcm_project_id = Some(fcm.project_id().to_owned());
            p.fcm_credentials_file = Some(fcm.credentials_file());
        }
        if let Some(smtp) = &self.smtp {
            p.email_provider = EmailProviderKind::Smtp;
            p.smtp_url = Some(smtp.url().into());
            p.smtp_pool_size = SMTP_SESSIONS;
            p.email_from = Some("bench@example.com".into());
        }
        if let Some(twilio) = &self.twilio {
            p.sms_provider = SmsProviderKind::Twilio;
            p.twilio_base_url = twilio.base_url();
            p.twilio_account_sid = Some(twilio.account_sid().to_owned());
            p.twilio_auth_token = Some(twilio.auth_token().to_owned().into());
            p.twilio_from = Some("+15005550006".into());
        }
    }
}

/// The provider alone: its client sending every message to the fake with
/// the worker's prefetch in flight, no broker and no database.
async fn provider_alone(channel: Channel, fakes: &Fakes, msgs: &[DeliveryMessage]) -> f64 {
    let mut cfg = ProviderConfig::default();
    fakes.configure(&mut cfg);
    let set = herald::providers::config::build(channel, &cfg).expect("providers");
    let started = Instant::now();
    stream::iter(msgs)
        .for_each_concurrent(herald::delivery::prefetch(Lane::Normal) as usize, |m| {
            let set = &set;
            async move {
                let ctx = SendContext {
                    delivery_id: m.delivery_id,
                    created_at: m.created_at,
                    notification_id: m.notification_id,
                    lane: m.lane,
                    expires_at: None,
                };
                let provider = set.for_destination(&m.destination);
                let outcome = provider.send(&m.rendered, &m.destination, &ctx).await;
                assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
            }
        })
        .await;
    msgs.len() as f64 / started.elapsed().as_secs_f64()
}

/// One round: each wanted row's ceiling, provider-alone and worker rates.
/// A row is a channel with its fake provider, or `None`: SMS through the
/// `log` provider, the engine alone with no provider traffic.
async fn run_round(n: usize, only: &[String]) -> anyhow::Result<Vec<(Option<Channel>, Measured)>> {
    let rows = [
        Some(Channel::Push),
        Some(Channel::Email),
        Some(Channel::Sms),
        None,
    ];
    let mut measured = Vec::new();
    for row in rows {
        let name = row.map_or("log", Channel::as_str);
        if !(only.is_empty() || only.iter().any(|o| o == name)) {
            continue;
        }
        let channel = row.unwrap_or(Channel::Sms);
        let env = TestEnv::new().await;
        let queue = env.names().delivery_queue(channel, Lane::Normal);
        let msgs = seed(&env, channel, n).await;
        publish(&env, &msgs).await;
        let cpu = cpu_ticks();
        let ceiling = raw_consume(&env, &queue, n).await;
        let cpu_ceiling = cpu_per(cpu, n);

        let fakes = Fakes::start(row).await;
        let cpu = cpu_ticks();
        let (alone, cpu_alone) = match row {
            Some(_) => (
                provider_alone(channel, &fakes, &msgs).await,
                cpu_per(cpu, n),
            ),
            None => (f64::NAN, f64::NAN),
        };

        // The worker meets a fresh fake: the provider-alone run's journal
        // and connections do not carry over.
        let fakes = Fakes::start(row).await;
        publish(&env, &msgs).await;
        let cpu = cpu_ticks();
        let worker = env
            .spawn_worker(channel, |c| fakes.configure(&mut c.providers))
            .await;
        let rate = n as f64 / wait_sent(&env, n).await.as_secs_f64();
        let cpu_worker = cpu_per(cpu, n);
        let metrics = reqwest::get(worker.url("/metrics")).await?.text().await?;
        eprintln!(
            "{name}: {}",
            where_time_went(&metrics, channel, provider_name(row))
        );
        if let Some(smtp) = &fakes.smtp {
            eprintln!(
                "email: {} SMTP connections for {n} emails",
                smtp.connections()
            );
        }
        worker.stop().await;
        measured.push((
            row,
            Measured {
                ceiling,
                alone,
                worker: rate,
                cpu: (cpu_ceiling, cpu_alone, cpu_worker),
            },
        ));
    }
    Ok(measured)
}

/// The mean provider call and the ledger statements' size and time, from a
/// worker's Prometheus text.
fn where_time_went(metrics: &str, channel: Channel, provider: &str) -> String {
    let pick = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mean = |name: &str, labels: String| {
        pick(&format!("{name}_sum{{{labels}}}"))
            / pick(&format!("{name}_count{{{labels}}}")).max(1.0)
    };
    let write = |kind: &str| {
        let labels = format!("channel=\"{channel}\",write=\"{kind}\"");
        (
            mean("herald_ledger_batch_rows", labels.clone()),
            mean("herald_ledger_write_seconds", labels) * 1000.0,
        )
    };
    let call = mean(
        "herald_provider_duration_seconds",
        format!("channel=\"{channel}\",provider=\"{provider}\""),
    ) * 1000.0;
    let (claim_rows, claim_ms) = write("claim");
    let (outcome_rows, outcome_ms) = write("outcome");
    format!(
        "mean provider call {call:.1} ms; per claim statement {claim_rows:.1} rows in {claim_ms:.1} ms, \
         per outcome statement {outcome_rows:.1} rows in {outcome_ms:.1} ms"
    )
}
