//! RabbitMQ in trouble: restarted cleanly, killed with SIGKILL (with
//! deliveries in flight), the consumers' link cut (once, repeatedly, then
//! the broker killed), the memory alarm raised under load.

use std::time::{Duration, Instant};

use herald_tests::faults::{
    ledger::Ledger, procs::Env, proxy::TcpProxy, rabbit::amqp_url_at, stack::Stack,
};

use super::pipeline::{
    Pipeline, Setup, accepting_again_after, assert_nothing_lost, wait_accepted, wait_delivering,
};

/// Ingest answers again this soon after the broker is back (the contract:
/// within 2 s; measured from `rabbitmqctl await_startup`).
const ACCEPTING_AGAIN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn broker_restarted_cleanly_then_killed_loses_nothing() {
    let mut p = Pipeline::start().await;
    let ledger = Ledger::new();
    let load = p.load().count(300).spawn(&ledger);

    wait_accepted(&ledger, 60).await;
    ledger.fault_started("rabbitmq-restart");
    p.stack.rabbit.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.stack.rabbit.restart().await;
    let again = accepting_again_after(&p, &ledger).await;
    ledger.fault_ended("rabbitmq-restart");
    eprintln!("ingest accepting again {again:?} after a clean broker restart");
    assert!(again <= ACCEPTING_AGAIN, "{again:?}");

    wait_accepted(&ledger, 150).await;
    ledger.fault_started("rabbitmq-kill9");
    p.stack.rabbit.kill9().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.stack.rabbit.restart().await;
    let again = accepting_again_after(&p, &ledger).await;
    ledger.fault_ended("rabbitmq-kill9");
    eprintln!("ingest accepting again {again:?} after the broker was killed");
    assert!(again <= ACCEPTING_AGAIN, "{again:?}");

    let stats = load.await.expect("load task");
    eprintln!("load: {stats:?}");
    assert_eq!(stats.gave_up, 0, "{stats:?}");
    let report = p.report("rabbitmq-restart+kill9", &ledger).await;
    assert_nothing_lost(&report);
    p.assert_all_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn broker_kill9_with_deliveries_in_flight_loses_nothing() {
    let mut p = Pipeline::start().await;
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
    assert_nothing_lost(&report);
    p.assert_all_running();
}

/// The router and the worker reach the broker through a proxy, ingest
/// directly: a cut isolates the consumers while ingest keeps accepting.
async fn behind_a_proxy() -> (Pipeline, TcpProxy) {
    let stack = Stack::start().await;
    let proxy = TcpProxy::start(stack.rabbit.amqp_addr()).await;
    let consumers = Env::from([("AMQP_URL".to_owned(), amqp_url_at(proxy.addr()))]);
    let setup = Setup {
        router: consumers.clone(),
        worker: consumers,
        ..Setup::default()
    };
    let fcm = herald_tests::fakes::fcm::FcmFake::start().await;
    (Pipeline::on(stack, fcm, setup).await, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn broker_link_cut_and_broker_kill9_lose_nothing() {
    let (mut p, proxy) = behind_a_proxy().await;
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
    wait_delivering(&p.fcm, Instant::now()).await;

    ledger.fault_started("consumers-link-delayed-300ms");
    proxy.delay(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.restore();
    ledger.fault_ended("consumers-link-delayed-300ms");

    ledger.fault_started("rabbitmq-kill9");
    p.stack.rabbit.kill9().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.stack.rabbit.restart().await;
    ledger.fault_ended("rabbitmq-kill9");

    let stats = load.await.expect("load task");
    eprintln!("load: {stats:?}");
    assert!(
        stats.gave_up == 0 && stats.accepted == stats.sends,
        "every send accepted in the end: {stats:?}"
    );
    let report = p.report("link-cut+delay+rabbitmq-kill9", &ledger).await;
    assert_nothing_lost(&report);
    p.assert_all_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn repeated_broker_link_cuts_each_recover_within_seconds() {
    let (mut p, proxy) = behind_a_proxy().await;
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
    assert_nothing_lost(&report);
    for fault in &report.faults {
        let recovery = fault.recovery_ms.expect("deliveries resumed");
        assert!(
            recovery < 5_000,
            "deliveries resume within seconds of the broker link coming back: {fault:?}"
        );
    }
    p.assert_all_running();
}

/// RabbitMQ's memory alarm blocks every publishing connection: ingest
/// cannot get a confirm. Nothing accepted may be lost, and once the alarm
/// clears everything flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn broker_memory_alarm_loses_nothing() {
    let mut p = Pipeline::start().await;
    let ledger = Ledger::new();
    let load = p.load().count(300).spawn(&ledger);
    wait_accepted(&ledger, 60).await;

    ledger.fault_started("rabbitmq-memory-alarm-10s");
    p.stack.rabbit.set_memory_watermark(0.0).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    p.stack.rabbit.restore_memory_watermark().await;
    let again = accepting_again_after(&p, &ledger).await;
    ledger.fault_ended("rabbitmq-memory-alarm-10s");
    eprintln!("ingest accepting again {again:?} after the alarm cleared");

    let stats = load.await.expect("load task");
    eprintln!("load: {stats:?}");
    assert_eq!(stats.gave_up, 0, "{stats:?}");
    let report = p.report("rabbitmq-memory-alarm", &ledger).await;
    assert_nothing_lost(&report);
    p.assert_all_running();
}
