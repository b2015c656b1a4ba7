//! The provider in trouble: answering 5xx, throttling with 429 and
//! Retry-After, hanging past `PROVIDER_TIMEOUT`, and its link cut and
//! delayed. Retries follow the schedule and nothing is lost; what the
//! provider received twice (a call that timed out on Herald's side but
//! went through on the provider's) is counted.

use std::time::Duration;

use herald_tests::{
    fakes::{Scripted, fcm::FcmFake, fcm::fcm_error},
    faults::{ledger::Ledger, proxy::TcpProxy, stack::Stack},
};

use super::pipeline::{Pipeline, Setup, assert_nothing_lost, fcm_at, wait_accepted};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn provider_errors_throttles_and_hangs_lose_nothing() {
    let mut p = Pipeline::with(Setup {
        worker: [("PROVIDER_TIMEOUT".to_owned(), "2s".to_owned())].into(),
        ..Setup::default()
    })
    .await;
    let ledger = Ledger::new();
    let load = p.load().count(300).spawn(&ledger);

    wait_accepted(&ledger, 50).await;
    ledger.fault_started("fcm-5xx-x20");
    for _ in 0..20 {
        p.fcm.push_scripted(Scripted::new(
            503,
            fcm_error(503, "UNAVAILABLE", "UNAVAILABLE", "backend down"),
            &[],
        ));
    }
    wait_accepted(&ledger, 120).await;
    ledger.fault_ended("fcm-5xx-x20");
    ledger.fault_started("fcm-429-retry-after-2s");
    for _ in 0..5 {
        p.fcm.push_scripted(Scripted::new(
            429,
            fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "slow down"),
            &[("retry-after", "2")],
        ));
    }
    wait_accepted(&ledger, 190).await;
    ledger.fault_ended("fcm-429-retry-after-2s");
    ledger.fault_started("fcm-hangs-past-timeout");
    for n in 0..10 {
        let ok = serde_json::json!({"name": format!("projects/herald-test/messages/late-{n}")});
        p.fcm
            .push_scripted(Scripted::new(200, ok.to_string(), &[]).delayed(Duration::from_secs(4)));
    }
    let stats = load.await.expect("load task");
    ledger.fault_ended("fcm-hangs-past-timeout");
    eprintln!("load: {stats:?}");
    assert_eq!(stats.gave_up, 0, "{stats:?}");
    let report = p.report("provider-5xx+429+hang", &ledger).await;
    assert_nothing_lost(&report);
    p.assert_all_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn provider_link_cut_and_delayed_loses_nothing() {
    let stack = Stack::start().await;
    let fcm = FcmFake::start().await;
    let upstream = fcm
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .expect("fake address");
    let proxy = TcpProxy::start(upstream).await;
    let mut worker = fcm_at(&fcm, Some(format!("http://{}", proxy.addr())));
    worker.insert("PROVIDER_TIMEOUT".into(), "2s".into());
    let mut p = Pipeline::on(
        stack,
        fcm,
        Setup {
            worker,
            ..Setup::default()
        },
    )
    .await;
    let ledger = Ledger::new();
    let load = p.load().count(300).spawn(&ledger);

    wait_accepted(&ledger, 60).await;
    ledger.fault_started("fcm-link-cut-5s");
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();
    ledger.fault_ended("fcm-link-cut-5s");

    wait_accepted(&ledger, 150).await;
    ledger.fault_started("fcm-link-delayed-500ms");
    proxy.delay(Duration::from_millis(500));
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();
    ledger.fault_ended("fcm-link-delayed-500ms");

    wait_accepted(&ledger, 220).await;
    ledger.fault_started("fcm-blackholed-4s");
    proxy.blackhole();
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.restore();
    ledger.fault_ended("fcm-blackholed-4s");

    let stats = load.await.expect("load task");
    eprintln!("load: {stats:?}");
    assert_eq!(stats.gave_up, 0, "{stats:?}");
    let report = p.report("provider-link-cut+delay+blackhole", &ledger).await;
    assert_nothing_lost(&report);
    p.assert_all_running();
}
