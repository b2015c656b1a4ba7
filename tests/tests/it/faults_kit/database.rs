//! PostgreSQL in trouble: restarted, killed, stopped for two minutes with
//! a backlog in every queue, and the processes' links to it cut and
//! delayed.

use std::time::{Duration, Instant};

use herald_tests::{
    fakes::{Scripted, fcm::FcmFake},
    faults::{ledger::Ledger, procs::Env, proxy::TcpProxy, stack::Stack},
};

use super::pipeline::{
    Pipeline, Setup, accepting_again_after, assert_nothing_lost, wait_accepted, wait_delivering,
};

/// Ingest answers again this soon after the database is back.
const ACCEPTING_AGAIN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn router_kill9_and_postgres_restart_and_kill9_lose_nothing() {
    let mut p = Pipeline::start().await;
    let ledger = Ledger::new();
    let load = p.load().count(300).spawn(&ledger);

    wait_accepted(&ledger, 60).await;
    ledger.fault_started("router-kill9");
    p.router().kill9().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.router().restart().await;
    p.router().wait_ready(Duration::from_secs(60)).await;
    ledger.fault_ended("router-kill9");
    wait_delivering(&p.fcm, Instant::now()).await;

    wait_accepted(&ledger, 120).await;
    ledger.fault_started("postgres-stop-10s");
    p.stack.postgres.stop().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    p.stack.postgres.restart().await;
    let again = accepting_again_after(&p, &ledger).await;
    ledger.fault_ended("postgres-stop-10s");
    eprintln!("ingest accepting again {again:?} after PostgreSQL restarted");
    assert!(again <= ACCEPTING_AGAIN, "{again:?}");

    wait_accepted(&ledger, 200).await;
    ledger.fault_started("postgres-kill9");
    p.stack.postgres.kill9().await;
    p.stack.postgres.restart().await;
    let again = accepting_again_after(&p, &ledger).await;
    ledger.fault_ended("postgres-kill9");
    eprintln!("ingest accepting again {again:?} after PostgreSQL was killed");
    assert!(again <= ACCEPTING_AGAIN, "{again:?}");

    let stats = load.await.expect("load task");
    eprintln!("load: {stats:?}");
    assert_eq!(stats.gave_up, 0, "{stats:?}");
    let report = p
        .report("router-kill9+postgres-restart+kill9", &ledger)
        .await;
    assert_nothing_lost(&report);
    p.assert_all_running();
}

/// The two-minute outage, with work waiting in every queue: routing
/// messages (the router was stopped), deliveries (the worker was
/// stopped), retries (the provider failed their first attempt). Nothing
/// may be lost, nothing may become a `poison` dead letter (before holding
/// through outages, every requeue spent one of a message's 20 deliveries),
/// and everything must flow within seconds of the database's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: two-minute outage; run with --run-ignored"]
async fn postgres_down_two_minutes_with_a_backlog_in_every_queue() {
    let mut p = Pipeline::start().await;
    let ledger = Ledger::new();
    // Retries: the first 60 provider calls fail.
    for _ in 0..60 {
        p.fcm.push_scripted(Scripted::new(
            503,
            herald_tests::fakes::fcm::fcm_error(503, "UNAVAILABLE", "UNAVAILABLE", "try later"),
            &[],
        ));
    }
    let first = p.load().rate(100.0).count(150).run(&ledger).await;
    assert_eq!(first.accepted, 150, "{first:?}");
    // A backlog of deliveries: the worker stops, the router goes on.
    p.push.sigterm(Duration::from_secs(30)).await;
    let second = p.load().rate(100.0).count(150).run(&ledger).await;
    assert_eq!(second.accepted, 150, "{second:?}");
    // A backlog of routing messages: the router stops too.
    p.router().sigterm(Duration::from_secs(30)).await;
    let third = p.load().rate(100.0).count(150).run(&ledger).await;
    assert_eq!(third.accepted, 150, "{third:?}");
    let queues = p.stack.settled_queues().await;
    eprintln!("before the outage: {queues:?}");

    ledger.fault_started("postgres-down-120s");
    p.stack.postgres.stop().await;
    p.router().restart().await;
    p.push.restart().await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    eprintln!("during the outage: {:?}", p.stack.queues().await);
    p.stack.postgres.restart().await;
    let again = accepting_again_after(&p, &ledger).await;
    ledger.fault_ended("postgres-down-120s");
    eprintln!("ingest accepting again {again:?} after the two-minute outage");
    assert!(again <= ACCEPTING_AGAIN, "{again:?}");
    for proc in [&mut p.routers[0], &mut p.push] {
        proc.wait_ready(Duration::from_secs(30)).await;
    }

    let report = p.report("postgres-down-120s-backlog", &ledger).await;
    assert_nothing_lost(&report);
    let poison: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&p.stack.pool)
        .await
        .expect("dead letters");
    assert_eq!(poison, 0, "the outage made dead letters");
    p.assert_all_running();
}

/// Every process reaches PostgreSQL through a proxy: the link is cut for
/// 8 s, then delayed by 200 ms for 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn postgres_link_cut_and_delayed_loses_nothing() {
    let stack = Stack::start().await;
    let addr = format!("127.0.0.1:{}", stack.postgres.port())
        .parse()
        .expect("address");
    let proxy = TcpProxy::start(addr).await;
    let url = stack.database_url().replace(
        &format!(":{}/", stack.postgres.port()),
        &format!(":{}/", proxy.addr().port()),
    );
    let through = Env::from([("DATABASE_URL".to_owned(), url)]);
    let setup = Setup {
        ingest: through.clone(),
        router: through.clone(),
        worker: through,
        ..Setup::default()
    };
    let mut p = Pipeline::on(stack, FcmFake::start().await, setup).await;
    let ledger = Ledger::new();
    let load = p.load().count(300).spawn(&ledger);

    wait_accepted(&ledger, 60).await;
    ledger.fault_started("postgres-link-cut-8s");
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.restore();
    let again = accepting_again_after(&p, &ledger).await;
    ledger.fault_ended("postgres-link-cut-8s");
    eprintln!("ingest accepting again {again:?} after the database link came back");

    wait_accepted(&ledger, 150).await;
    ledger.fault_started("postgres-link-delayed-200ms");
    proxy.delay(Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();
    ledger.fault_ended("postgres-link-delayed-200ms");

    let stats = load.await.expect("load task");
    eprintln!("load: {stats:?}");
    assert_eq!(stats.gave_up, 0, "{stats:?}");
    let report = p.report("postgres-link-cut+delay", &ledger).await;
    assert_nothing_lost(&report);
    p.assert_all_running();
}
