//! Proof scenarios: the real ingest, router and push worker against a
//! private stack, 200+ one-recipient push sends, faults in the middle, and
//! the ledger's verdict. The numbers (recovery, stall, refusals) are
//! printed for the record.

use std::time::{Duration, Instant};

use herald_tests::{
    fakes::fcm::FcmFake,
    faults::{
        ledger::{self, Ledger, Report},
        load::{Load, seed_push_users},
        procs::{Env, Proc},
        proxy::TcpProxy,
        rabbit::amqp_url_at,
        stack::{Stack, TENANT, fcm_env},
    },
};

/// The pipeline of a push scenario: stack, FCM fake, ingest, router and
/// push worker as real processes, and 50 recipients with a device each.
struct PushPipeline {
    // Processes first: fields drop in order, and a process prints its log
    // (kept in the stack's directory) when a test panics.
    ingest: Proc,
    router: Proc,
    worker: Proc,
    fcm: FcmFake,
    users: Vec<String>,
    stack: Stack,
}

/// Starts the pipeline on `stack`; `consumers` is extra environment for
/// the router and the worker (an `AMQP_URL` through a proxy).
async fn push_pipeline(stack: Stack, consumers: Env) -> PushPipeline {
    eprintln!(
        "stack up: RabbitMQ in {:?}, PostgreSQL in {:?}",
        stack.rabbit.last_start(),
        stack.postgres.last_start()
    );
    let users = seed_push_users(&stack.pool, TENANT, 50).await;
    let fcm = FcmFake::start().await;
    let mut ingest = stack.spawn("ingest", Env::new());
    let mut router = stack.spawn("router", consumers.clone());
    let mut worker_env = fcm_env(&fcm);
    worker_env.extend(consumers);
    let mut worker = stack.spawn("worker-push", worker_env);
    for p in [&mut ingest, &mut router, &mut worker] {
        p.wait_ready(Duration::from_secs(60)).await;
    }
    PushPipeline {
        ingest,
        router,
        worker,
        fcm,
        users,
        stack,
    }
}

impl PushPipeline {
    /// 200 sends at 25/s from 8 clients: about 8 s without faults.
    fn load(&self) -> Load {
        Load::new(self.ingest.url(""), &self.stack.key, self.users.clone())
            .rate(25.0)
            .concurrency(8)
            .count(200)
            .bound(Duration::from_secs(150))
    }

    async fn report(&self, scenario: &str, ledger: &Ledger) -> Report {
        let report = ledger::settle(
            scenario,
            ledger,
            &self.stack.pool,
            || ledger::fcm_sightings(&self.fcm.requests()),
            Duration::from_secs(90),
        )
        .await
        .with_queues(self.stack.settled_queues().await);
        eprintln!("{report}");
        eprintln!("{}", report.to_json());
        report
    }

    fn assert_all_running(&mut self) {
        for proc in [&mut self.ingest, &mut self.router, &mut self.worker] {
            assert!(proc.exited().is_none(), "{} exited", proc.name());
        }
    }
}

/// Waits until the FCM fake receives a request after `since`: deliveries
/// flow again, so the next fault's numbers are its own.
async fn wait_delivering(fcm: &FcmFake, since: Instant) {
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

async fn wait_accepted(ledger: &Ledger, n: usize) {
    herald_tests::faults::wait_for(
        &format!("{n} accepted notifications"),
        Duration::from_secs(90),
        Duration::from_millis(50),
        || async { (ledger.accepted_count() >= n).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn router_kill9_and_postgres_outage_lose_nothing() {
    let mut p = push_pipeline(Stack::start().await, Env::new()).await;
    let ledger = Ledger::new();
    let load = p.load().spawn(&ledger);

    wait_accepted(&ledger, 60).await;
    ledger.fault_started("router-kill9");
    p.router.kill9().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.router.restart().await;
    p.router.wait_ready(Duration::from_secs(60)).await;
    ledger.fault_ended("router-kill9");
    wait_delivering(&p.fcm, Instant::now()).await;

    wait_accepted(&ledger, 120).await;
    ledger.fault_started("postgres-stop-10s");
    p.stack.postgres.stop().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    p.stack.postgres.restart().await;
    ledger.fault_ended("postgres-stop-10s");

    let stats = load.await.expect("load task");
    eprintln!("load: {stats:?}");
    let report = p.report("router-kill9+postgres-stop", &ledger).await;
    assert_eq!(
        stats.accepted, 200,
        "every send accepted in the end: {stats:?}"
    );
    assert_eq!(report.lost, 0, "{:#}", report.to_json());
    assert_eq!(
        report.dead,
        0,
        "outages make no dead letters: {:#}",
        report.to_json()
    );
    assert_eq!(report.broker_held, 0, "{:#}", report.to_json());
    p.assert_all_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn broker_link_cut_and_broker_kill9_lose_nothing() {
    // The consumers reach the broker through a proxy, ingest directly: a
    // cut isolates the router and the worker while ingest keeps accepting.
    let stack = Stack::start().await;
    let proxy = TcpProxy::start(stack.rabbit.amqp_addr()).await;
    let consumers = Env::from([("AMQP_URL".to_owned(), amqp_url_at(proxy.addr()))]);
    let mut p = push_pipeline(stack, consumers).await;
    let ledger = Ledger::new();
    // Sends for 25 s, so the load still runs when the broker dies after
    // the consumers recovered from the cut.
    let load = p
        .load()
        .rate(20.0)
        .duration(Duration::from_secs(25))
        .spawn(&ledger);

    wait_accepted(&ledger, 60).await;
    ledger.fault_started("consumers-link-cut-5s");
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();
    ledger.fault_ended("consumers-link-cut-5s");
    eprintln!("proxy after the cut: {:?}", proxy.counters());
    wait_delivering(&p.fcm, Instant::now()).await;

    ledger.fault_started("rabbitmq-kill9");
    p.stack.rabbit.kill9().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.stack.rabbit.restart().await;
    ledger.fault_ended("rabbitmq-kill9");
    eprintln!("RabbitMQ back after {:?}", p.stack.rabbit.last_start());

    let stats = load.await.expect("load task");
    eprintln!("load: {stats:?}");
    let report = p.report("link-cut+rabbitmq-kill9", &ledger).await;
    assert!(
        stats.gave_up == 0 && stats.accepted == stats.sends,
        "every send accepted in the end: {stats:?}"
    );
    assert!(
        stats.refused.contains_key(&503),
        "ingest refused while the broker was down: {stats:?}"
    );
    assert_eq!(report.lost, 0, "{:#}", report.to_json());
    assert_eq!(
        report.dead,
        0,
        "outages make no dead letters: {:#}",
        report.to_json()
    );
    p.assert_all_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn repeated_broker_link_cuts_each_recover_within_seconds() {
    let stack = Stack::start().await;
    let proxy = TcpProxy::start(stack.rabbit.amqp_addr()).await;
    let consumers = Env::from([("AMQP_URL".to_owned(), amqp_url_at(proxy.addr()))]);
    let mut p = push_pipeline(stack, consumers).await;
    let ledger = Ledger::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let load = p
        .load()
        .rate(10.0)
        .duration(Duration::from_secs(150))
        .stop_on(stop.clone())
        .spawn(&ledger);

    wait_accepted(&ledger, 20).await;
    for n in 1..=4 {
        let name = format!("consumers-link-cut-3s-#{n}");
        ledger.fault_started(&name);
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.restore();
        ledger.fault_ended(&name);
        wait_delivering(&p.fcm, Instant::now()).await;
        // Let the pipeline run normally for a moment between blips.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.cancel();

    let stats = load.await.expect("load task");
    let report = p.report("repeated-link-cuts", &ledger).await;
    assert!(
        stats.gave_up == 0 && stats.accepted == stats.sends,
        "{stats:?}"
    );
    assert_eq!(report.lost, 0, "{:#}", report.to_json());
    for fault in &report.faults {
        let recovery = fault.recovery_ms.expect("deliveries resumed");
        assert!(
            recovery < 5_000,
            "deliveries resume within seconds of the broker link coming back: {fault:?}"
        );
    }
    p.assert_all_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn broker_kill9_with_deliveries_in_flight_loses_nothing() {
    let mut p = push_pipeline(Stack::start().await, Env::new()).await;
    // A slow provider: the first 100 sends take 3 s each, so the broker
    // dies while the worker holds them unacked.
    for n in 0..100 {
        let body = serde_json::json!({"name": format!("projects/herald-test/messages/slow-{n}")});
        p.fcm.push_scripted(
            herald_tests::fakes::Scripted::new(200, body.to_string(), &[])
                .delayed(Duration::from_secs(3)),
        );
    }
    let ledger = Ledger::new();
    let first = p.load().rate(200.0).count(100).run(&ledger).await;
    assert_eq!(first.accepted, 100, "{first:?}");
    herald_tests::faults::wait_for(
        "50 sends in flight at the provider",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { (p.fcm.requests().len() >= 50).then_some(()) },
    )
    .await;

    ledger.fault_started("rabbitmq-kill9-in-flight");
    p.stack.rabbit.kill9().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.stack.rabbit.restart().await;
    ledger.fault_ended("rabbitmq-kill9-in-flight");

    // Fresh work after the broker is back must flow too.
    let second = p.load().rate(50.0).count(100).run(&ledger).await;
    assert_eq!(second.gave_up, 0, "{second:?}");
    let report = p.report("rabbitmq-kill9-in-flight", &ledger).await;
    assert_eq!(report.lost, 0, "{:#}", report.to_json());
    assert_eq!(report.dead, 0, "{:#}", report.to_json());
    p.assert_all_running();
}
