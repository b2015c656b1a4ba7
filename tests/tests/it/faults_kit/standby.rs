//! PostgreSQL failing over: the primary killed under load, its synchronous
//! standby promoted, and the binaries either restarted on the promoted node
//! or reaching it through an address that moves to it (a Service).

use std::time::{Duration, Instant};

use herald_tests::{
    fakes::fcm::FcmFake,
    faults::{
        ledger::Ledger,
        procs::Env,
        proxy::TcpProxy,
        stack::{Stack, Topology},
    },
};

use super::pipeline::{
    Pipeline, Setup, accepting_again_after, assert_nothing_lost, load_finished_and_flowing_again,
    wait_accepted, wait_new_work_delivered,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts a private PostgreSQL primary and standby; run with --run-ignored"]
async fn primary_killed_and_standby_promoted_loses_nothing() {
    let stack = Stack::start_with(Topology {
        standby: true,
        ..Topology::default()
    })
    .await;
    let standby_url = stack.standby_url().expect("a standby");
    // Ingest's status reads go to the standby.
    let setup = Setup {
        ingest: Env::from([("DATABASE_READ_URL".to_owned(), standby_url)]),
        ..Setup::default()
    };
    let mut p = Pipeline::on(stack, FcmFake::start().await, setup).await;
    let ledger = Ledger::new();
    let load = p.load().rate(25.0).count(500).spawn(&ledger);
    wait_accepted(&ledger, 100).await;

    // A status read served by the standby: the synchronous commit of the
    // 202 was flushed there, and it is replayed within moments.
    let first = ledger.accepted()[0].id;
    let status = reqwest::Client::new()
        .get(p.ingest.url(&format!("/v1/notifications/{first}")))
        .bearer_auth(&p.stack.key)
        .send()
        .await
        .expect("status request");
    assert_eq!(status.status().as_u16(), 200, "status of {first}");

    ledger.fault_started("postgres-primary-kill9+promote");
    let killed = Instant::now();
    p.stack.postgres.kill9().await;
    p.stack.fail_over().await;
    let promoted = killed.elapsed();
    // What an operator does without a Service that follows the primary:
    // point every Deployment at the new primary, and they all roll at once
    // (each binary stopped with SIGTERM, then started again).
    let url = p.stack.database_url();
    let stops = futures::future::join_all(p.all().into_iter().map(|proc| {
        proc.set_env("DATABASE_URL", &url);
        proc.set_env("DATABASE_READ_URL", &url);
        async move {
            let started = Instant::now();
            proc.restart().await;
            (proc.name().to_owned(), started.elapsed())
        }
    }))
    .await;
    eprintln!("stop and start of each binary: {stops:?}");
    for proc in p.all() {
        proc.wait_ready(Duration::from_secs(60)).await;
    }
    let restarted = killed.elapsed();
    let again = accepting_again_after(&p, &ledger).await;
    let flowing = wait_new_work_delivered(&p, &ledger, killed).await;
    ledger.fault_ended("postgres-primary-kill9+promote");
    eprintln!(
        "primary killed: standby promoted after {promoted:?}, binaries restarted and ready after {restarted:?}, \
         ingest accepting {again:?} later, new work delivered {flowing:?} after the kill"
    );

    let again = load_finished_and_flowing_again(load, &p.fcm, killed).await;
    let report = p
        .report_with(
            "postgres-failover-to-standby",
            &ledger,
            &[
                ("standby_promoted_after_kill", promoted),
                ("binaries_restarted_and_ready_after_kill", restarted),
                ("deliveries_flowing_again_after_kill", again),
                ("new_work_delivered_after_kill", flowing),
            ],
        )
        .await;
    assert_nothing_lost(&report);
    p.assert_all_running();
}

/// The same failover with the binaries configured once, on an address that
/// follows the primary (what CloudNativePG's `herald-db-rw` Service does; a
/// proxy here): no restart, the pools reconnect to the promoted node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts a private PostgreSQL primary and standby; run with --run-ignored"]
async fn primary_killed_and_standby_promoted_behind_a_moving_address_loses_nothing() {
    let stack = Stack::start_with(Topology {
        standby: true,
        ..Topology::default()
    })
    .await;
    let at = |port: u16| format!("127.0.0.1:{port}").parse().expect("address");
    let service = TcpProxy::start(at(stack.postgres.port())).await;
    let url = stack.database_url().replace(
        &format!(":{}/", stack.postgres.port()),
        &format!(":{}/", service.addr().port()),
    );
    let through = Env::from([("DATABASE_URL".to_owned(), url)]);
    let mut ingest = through.clone();
    ingest.insert(
        "DATABASE_READ_URL".to_owned(),
        stack.standby_url().expect("a standby"),
    );
    let setup = Setup {
        ingest,
        router: through.clone(),
        worker: through,
        ..Setup::default()
    };
    let mut p = Pipeline::on(stack, FcmFake::start().await, setup).await;
    let ledger = Ledger::new();
    let load = p.load().rate(25.0).count(500).spawn(&ledger);
    wait_accepted(&ledger, 100).await;

    ledger.fault_started("postgres-primary-kill9+promote-behind-service");
    let killed = Instant::now();
    p.stack.postgres.kill9().await;
    p.stack.fail_over().await;
    service.retarget(at(p.stack.postgres.port()));
    let promoted = killed.elapsed();
    let again = accepting_again_after(&p, &ledger).await;
    let flowing = wait_new_work_delivered(&p, &ledger, killed).await;
    ledger.fault_ended("postgres-primary-kill9+promote-behind-service");
    eprintln!(
        "primary killed: standby promoted and the address moved after {promoted:?}, \
         ingest accepting {again:?} later, new work delivered {flowing:?} after the kill"
    );

    let again = load_finished_and_flowing_again(load, &p.fcm, killed).await;
    let report = p
        .report_with(
            "postgres-failover-behind-service",
            &ledger,
            &[
                ("standby_promoted_after_kill", promoted),
                ("deliveries_flowing_again_after_kill", again),
                ("new_work_delivered_after_kill", flowing),
            ],
        )
        .await;
    assert_nothing_lost(&report);
    p.assert_all_running();
}
