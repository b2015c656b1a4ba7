//! The pipeline a scenario runs: a private stack, the provider fakes, and
//! the real binaries (ingest, router, the workers) as processes, with the
//! helpers every scenario uses to wait, report and check.

use std::time::{Duration, Instant};

use herald_tests::{
    fakes::{fcm::FcmFake, smtp::SmtpFake, twilio::TwilioFake},
    faults::{
        ledger::{self, Ledger, Report},
        load::{Load, seed_push_users},
        procs::{Env, Proc},
        stack::{Stack, TENANT, fcm_env},
    },
};

/// What differs between scenarios' pipelines.
#[derive(Default, Clone)]
pub struct Setup {
    /// Extra environment of ingest.
    pub ingest: Env,
    /// Extra environment of every router.
    pub router: Env,
    /// Extra environment of every worker.
    pub worker: Env,
    /// Router replicas (at least one).
    pub routers: usize,
    /// Also run worker-email (SMTP fake) and worker-sms (Twilio fake).
    pub email_and_sms: bool,
    /// Recipients to seed (50 by default).
    pub users: u32,
}

/// The pipeline's processes, fakes and stack.
pub struct Pipeline {
    // Processes first: fields drop in order, and a process prints its log
    // (kept in the stack's directory) when a test panics.
    pub ingest: Proc,
    pub routers: Vec<Proc>,
    pub push: Proc,
    pub email: Option<Proc>,
    pub sms: Option<Proc>,
    pub fcm: FcmFake,
    pub smtp: Option<SmtpFake>,
    pub twilio: Option<TwilioFake>,
    pub users: Vec<String>,
    pub stack: Stack,
}

/// The push worker's FCM settings, pointed at `base` (the fake, or a proxy
/// in front of it).
pub fn fcm_at(fcm: &FcmFake, base: Option<String>) -> Env {
    let mut env = fcm_env(fcm);
    if let Some(base) = base {
        env.insert("FCM_BASE_URL".into(), base);
    }
    env
}

impl Pipeline {
    /// The default pipeline: ingest, one router, the push worker.
    pub async fn start() -> Self {
        Self::with(Setup::default()).await
    }

    /// A pipeline as `setup` says, every process ready.
    pub async fn with(setup: Setup) -> Self {
        Self::on(Stack::start().await, FcmFake::start().await, setup).await
    }

    /// A pipeline on a stack and FCM fake the scenario already holds.
    pub async fn on(stack: Stack, fcm: FcmFake, setup: Setup) -> Self {
        eprintln!(
            "stack up: RabbitMQ in {:?}, PostgreSQL in {:?}",
            stack.rabbit.last_start(),
            stack.postgres.last_start()
        );
        let users = seed_push_users(&stack.pool, TENANT, setup.users.max(50)).await;
        let with = |base: &Env, extra: Env| {
            let mut env = base.clone();
            env.extend(extra);
            env
        };
        let ingest = stack.spawn("ingest", setup.ingest.clone());
        let routers = (0..setup.routers.max(1))
            .map(|_| stack.spawn("router", setup.router.clone()))
            .collect();
        let mut push_env = fcm_env(&fcm);
        push_env.extend(setup.worker.clone());
        let push = stack.spawn("worker-push", push_env);
        let (mut email, mut sms, mut smtp, mut twilio) = (None, None, None, None);
        if setup.email_and_sms {
            let relay = SmtpFake::start().await;
            let env = Env::from([
                ("EMAIL_PROVIDER".to_owned(), "smtp".to_owned()),
                ("SMTP_URL".to_owned(), relay.url()),
                (
                    "EMAIL_FROM".to_owned(),
                    "Herald <noreply@example.com>".to_owned(),
                ),
                ("EMAIL_RATE_PER_SEC".to_owned(), "0".to_owned()),
            ]);
            email = Some(stack.spawn("worker-email", with(&env, setup.worker.clone())));
            smtp = Some(relay);
            let fake = TwilioFake::start().await;
            let env = Env::from([
                ("SMS_PROVIDER".to_owned(), "twilio".to_owned()),
                ("TWILIO_BASE_URL".to_owned(), fake.base_url()),
                (
                    "TWILIO_ACCOUNT_SID".to_owned(),
                    fake.account_sid().to_owned(),
                ),
                ("TWILIO_AUTH_TOKEN".to_owned(), fake.auth_token().to_owned()),
                ("TWILIO_FROM".to_owned(), "+15005550006".to_owned()),
                ("SMS_RATE_PER_SEC".to_owned(), "0".to_owned()),
            ]);
            sms = Some(stack.spawn("worker-sms", with(&env, setup.worker.clone())));
            twilio = Some(fake);
        }
        let mut p = Self {
            ingest,
            routers,
            push,
            email,
            sms,
            fcm,
            smtp,
            twilio,
            users,
            stack,
        };
        for proc in p.all() {
            proc.wait_ready(Duration::from_secs(60)).await;
        }
        p
    }

    /// Every process of the pipeline.
    pub fn all(&mut self) -> Vec<&mut Proc> {
        let mut all = vec![&mut self.ingest];
        all.extend(self.routers.iter_mut());
        all.push(&mut self.push);
        all.extend(self.email.iter_mut());
        all.extend(self.sms.iter_mut());
        all
    }

    /// The first router.
    pub fn router(&mut self) -> &mut Proc {
        &mut self.routers[0]
    }

    /// 200 one-recipient push sends at 25/s from 8 clients: about 8 s
    /// without faults.
    pub fn load(&self) -> Load {
        Load::new(self.ingest.url(""), &self.stack.key, self.users.clone())
            .rate(25.0)
            .concurrency(8)
            .count(200)
            .bound(Duration::from_secs(240))
    }

    /// The ledger's verdict once nothing is under way (push deliveries, as
    /// the FCM fake saw them), with the queues the broker still holds.
    pub async fn report(&self, scenario: &str, ledger: &Ledger) -> Report {
        self.report_with(scenario, ledger, &[]).await
    }

    /// [`Pipeline::report`] with times the scenario measured itself.
    pub async fn report_with(
        &self,
        scenario: &str,
        ledger: &Ledger,
        timings: &[(&str, Duration)],
    ) -> Report {
        let report = ledger::settle(
            scenario,
            ledger,
            &self.stack.pool,
            || ledger::fcm_sightings(&self.fcm.requests()),
            Duration::from_secs(120),
        )
        .await
        .with_queues(self.stack.settled_queues().await)
        .with_timings(timings);
        eprintln!("{report}");
        eprintln!("{}", report.to_json());
        // Kept for docs/reliability.md: target/faults/<scenario>.json.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/faults");
        let file = dir.join(format!("{}.json", scenario.replace(['/', ' '], "_")));
        if let Err(e) = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&file, format!("{:#}", report.to_json())))
        {
            eprintln!("could not write {}: {e}", file.display());
        }
        report
    }

    /// Fails the test if any process exited on its own.
    pub fn assert_all_running(&mut self) {
        for proc in self.all() {
            assert!(proc.exited().is_none(), "{} exited", proc.name());
        }
    }
}

/// Asserts the contract of every scenario on `report`: nothing lost,
/// nothing turned into a dead letter by a fault, nothing left in the
/// broker.
pub fn assert_nothing_lost(report: &Report) {
    assert_eq!(report.lost, 0, "{:#}", report.to_json());
    assert_eq!(
        report.dead,
        0,
        "faults make no dead letters: {:#}",
        report.to_json()
    );
    assert_eq!(report.broker_held, 0, "{:#}", report.to_json());
}

/// Waits until the FCM fake receives a request after `since`: deliveries
/// flow again, so the next fault's numbers are its own.
pub async fn wait_delivering(fcm: &FcmFake, since: Instant) {
    herald_tests::faults::wait_for(
        "deliveries to flow again",
        Duration::from_secs(90),
        Duration::from_millis(50),
        || async {
            fcm.requests()
                .iter()
                .any(|r| r.received > since)
                .then_some(())
        },
    )
    .await;
}

/// Waits until `n` notifications were accepted.
pub async fn wait_accepted(ledger: &Ledger, n: usize) {
    herald_tests::faults::wait_for(
        &format!("{n} accepted notifications"),
        Duration::from_secs(120),
        Duration::from_millis(50),
        || async { (ledger.accepted_count() >= n).then_some(()) },
    )
    .await;
}

/// How long after now ingest first answers 202 again: one probe send
/// every 50 ms, each one notification of its own, recorded in `ledger`
/// like any send.
pub async fn accepting_again_after(p: &Pipeline, ledger: &Ledger) -> Duration {
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let user = p.users[0].clone();
    let url = p.ingest.url("/v1/notifications");
    herald_tests::faults::wait_for(
        "ingest to accept again",
        Duration::from_secs(90),
        Duration::from_millis(50),
        || async {
            let body = serde_json::json!({
                "category": "fault.probe", "to": {"users": [user]}, "channels": ["push"],
                "content": {"push": {"title": "Probe"}},
            });
            let resp = http
                .post(&url)
                .bearer_auth(&p.stack.key)
                .json(&body)
                .send()
                .await
                .ok()?;
            if resp.status().as_u16() != 202 {
                return None;
            }
            let answer: serde_json::Value = resp.json().await.ok()?;
            let id = answer["id"].as_str()?.parse().ok()?;
            ledger.accept(id, &user, "push");
            Some(())
        },
    )
    .await;
    started.elapsed()
}

/// Waits until a notification accepted after `since` reached the FCM fake:
/// new work goes through the whole pipeline again (ingest, router, worker),
/// not only what was in flight before. Returns the time from `since`.
pub async fn wait_new_work_delivered(p: &Pipeline, ledger: &Ledger, since: Instant) -> Duration {
    herald_tests::faults::wait_for(
        "a notification accepted after the fault to be delivered",
        Duration::from_secs(180),
        Duration::from_millis(50),
        || async {
            let fresh: std::collections::HashSet<uuid::Uuid> = ledger
                .accepted()
                .into_iter()
                .filter(|a| a.at > since)
                .map(|a| a.id)
                .collect();
            ledger::fcm_sightings(&p.fcm.requests())
                .iter()
                .filter(|s| s.at > since)
                .any(|s| s.notification_id.is_some_and(|id| fresh.contains(&id)))
                .then(|| since.elapsed())
        },
    )
    .await
}

/// Waits for the load to end, asserts that every send was accepted in the
/// end, and returns how long after `killed` deliveries flowed again
/// ([`flowing_again_after`]).
pub async fn load_finished_and_flowing_again(
    load: tokio::task::JoinHandle<herald_tests::faults::load::LoadStats>,
    fcm: &FcmFake,
    killed: Instant,
) -> Duration {
    let stats = load.await.expect("load task");
    eprintln!("load: {stats:?}");
    assert!(
        stats.gave_up == 0 && stats.accepted == stats.sends,
        "every send accepted in the end: {stats:?}"
    );
    let again = flowing_again_after(fcm, killed).expect("deliveries after the kill");
    eprintln!("deliveries flowing again {again:?} after the kill (end of the longest silence)");
    again
}

/// How long after `since` deliveries flowed again: the end of the longest
/// silence between two provider requests that ends after `since`, within
/// the minute after it. What was in flight may still reach the provider
/// right after a fault; this is when the load as a whole flowed again. It
/// includes the load's clients waiting out the `Retry-After` of a 503 they
/// got during the fault (5 s), so it bounds the pipeline's recovery from
/// above; [`wait_new_work_delivered`] and [`accepting_again_after`]
/// measure the pipeline's own.
pub fn flowing_again_after(fcm: &FcmFake, since: Instant) -> Option<Duration> {
    let mut times: Vec<Instant> = ledger::fcm_sightings(&fcm.requests())
        .iter()
        .map(|s| s.at)
        .collect();
    times.sort();
    let horizon = since + Duration::from_secs(60);
    times
        .windows(2)
        .filter(|w| w[1] > since && w[0] < horizon)
        .max_by_key(|w| w[1] - w[0])
        .map(|w| w[1] - since)
}
