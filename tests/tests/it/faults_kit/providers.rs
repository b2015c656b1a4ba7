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

/// Every send to the FCM fake answers `answer()` for `window`, then the
/// provider is well again. A provider outage is a time, not a number of
/// failed calls: the circuit breaker tries one probe per open period, and a
/// count of failures would be spent on probes for minutes.
async fn fcm_fails_for(fcm: &FcmFake, window: Duration, answer: impl Fn() -> Scripted) {
    let until = std::time::Instant::now() + window;
    while std::time::Instant::now() < until {
        while fcm.scripted_left() < 64 {
            fcm.push_scripted(answer());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fcm.clear_script();
}

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
    ledger.fault_started("fcm-503-for-3s");
    fcm_fails_for(&p.fcm, Duration::from_secs(3), || {
        Scripted::new(
            503,
            fcm_error(503, "UNAVAILABLE", "UNAVAILABLE", "backend down"),
            &[],
        )
    })
    .await;
    ledger.fault_ended("fcm-503-for-3s");

    wait_accepted(&ledger, 150).await;
    ledger.fault_started("fcm-429-retry-after-2s-for-3s");
    fcm_fails_for(&p.fcm, Duration::from_secs(3), || {
        Scripted::new(
            429,
            fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "slow down"),
            &[("retry-after", "2")],
        )
    })
    .await;
    ledger.fault_ended("fcm-429-retry-after-2s-for-3s");

    wait_accepted(&ledger, 220).await;
    ledger.fault_started("fcm-hangs-4s-past-a-2s-timeout-for-3s");
    fcm_fails_for(&p.fcm, Duration::from_secs(3), || {
        let ok = serde_json::json!({"name": "projects/herald-test/messages/late"});
        Scripted::new(200, ok.to_string(), &[]).delayed(Duration::from_secs(4))
    })
    .await;
    ledger.fault_ended("fcm-hangs-4s-past-a-2s-timeout-for-3s");

    let stats = load.await.expect("load task");
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
