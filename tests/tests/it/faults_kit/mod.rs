//! The fault toolkit (`herald_tests::faults`) proven end to end: private
//! RabbitMQ and PostgreSQL survive what the scenarios will do to them
//! (here), and small scenarios run the real binaries through kills,
//! outages and cut links and check the ledger ([`scenarios`]).
//!
//! These start private brokers and databases (seconds each), so they are
//! ignored by default and run on purpose:
//! `cargo nextest run -p herald-tests --run-ignored only -E 'test(faults_kit)'`
//! (or `cargo test -p herald-tests --test it faults_kit -- --ignored --test-threads 1`).
//! The binaries must be built first (`cargo build --bins`).

mod broker;
mod cluster;
mod database;
mod pipeline;
mod processes;
mod providers;
mod standby;

use std::time::{Duration, Instant};

use herald::{
    broker::{Broker, Headers, Names, Outgoing, Publisher},
    config::RetrySchedule,
    model::Lane,
};
use herald_tests::faults::{
    orphans, pids,
    postgres::PrivatePostgres,
    procs::{Env, Proc},
    rabbit::PrivateRabbit,
    shared_services,
};
use sqlx::{Connection, Executor, PgConnection};

#[tokio::test]
async fn shared_services_are_found_up_and_left_alone() {
    // Only the "already up" path: the shared services run for every test.
    let status = shared_services::ensure_up_async().await;
    assert!(status.postgres_was_up && status.rabbitmq_was_up);
    let guard = shared_services::Guard::new().await;
    drop(guard);
    assert!(shared_services::accepts(shared_services::RABBITMQ));
}

async fn publish(url: &str, names: &Names, n: usize) -> Result<(), String> {
    let broker = Broker::new(url, names.clone());
    let publisher = Publisher::new(broker.clone());
    let queue = names.route_queue(Lane::Normal);
    for i in 0..n {
        let msg = Outgoing::json(
            "",
            &queue,
            format!("{{\"n\": {i}}}").into_bytes(),
            Headers::default(),
        );
        publisher.publish(&msg).await.map_err(|e| e.to_string())?;
    }
    broker.close().await;
    Ok(())
}

/// Messages ready in `queue` once `ok` accepts the count (statistics lag
/// behind by up to a second); at most 15 s.
async fn ready_in(rabbit: &PrivateRabbit, queue: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let mut last = 0;
    for _ in 0..60 {
        last = rabbit
            .queue_messages("kit")
            .await
            .iter()
            .find(|(q, _, _)| q == queue)
            .map_or(0, |(_, ready, _)| *ready);
        if ok(last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{queue} holds {last} messages")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn private_rabbit_keeps_quorum_messages_through_kill9_and_restart() {
    // The shared node's VM, to check it is not the one that gets killed.
    let shared_pid = pids::read_pid_file(std::path::Path::new(
        "/var/lib/rabbitmq/mnesia/rabbit@localhost.pid",
    ));
    let mut rabbit = PrivateRabbit::start().await;
    eprintln!(
        "private RabbitMQ {} started in {:?}",
        rabbit.node(),
        rabbit.last_start()
    );
    let names = Names::new("kit");
    let schedule: RetrySchedule = "1s".parse().unwrap();
    let broker = Broker::new(rabbit.amqp_url(), names.clone());
    broker.declare_topology(&schedule).await.expect("topology");
    broker.close().await;
    publish(&rabbit.amqp_url(), &names, 10)
        .await
        .expect("publish");
    let queue = names.route_queue(Lane::Normal);
    ready_in(&rabbit, &queue, |n| n == 10).await;

    // Memory alarm: publishers are blocked (no confirm) until it clears.
    rabbit.set_memory_watermark(0.0).await;
    let blocked = tokio::time::timeout(
        Duration::from_secs(2),
        publish(&rabbit.amqp_url(), &names, 1),
    )
    .await;
    assert!(
        blocked.is_err(),
        "a publish during the alarm is held: {blocked:?}"
    );
    rabbit.restore_memory_watermark().await;
    publish(&rabbit.amqp_url(), &names, 1)
        .await
        .expect("publish after the alarm");

    let pid = rabbit.pid().expect("running");
    rabbit.kill9().await;
    assert!(rabbit.pid().is_none() && !pids::exists(pid));
    if let Some(shared) = shared_pid {
        assert_ne!(shared, pid);
        assert!(pids::exists(shared), "the shared node is untouched");
    }
    assert!(shared_services::accepts(shared_services::RABBITMQ));
    rabbit.restart().await;
    eprintln!("restart after kill -9 took {:?}", rabbit.last_start());
    // 10, plus the one confirmed after the alarm; the one held by the alarm
    // may or may not have been taken in before its connection closed.
    let after = ready_in(&rabbit, &queue, |n| (11..=12).contains(&n)).await;

    let started = Instant::now();
    rabbit.stop().await;
    eprintln!("clean stop took {:?}", started.elapsed());
    rabbit.restart().await;
    eprintln!("restart after a clean stop took {:?}", rabbit.last_start());
    ready_in(&rabbit, &queue, |n| n == after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn leftovers_of_a_killed_test_process_are_reaped() {
    // As if the test process that owned these had been killed: an owner
    // pid that cannot exist (above any pid_max).
    let dead_owner = "999999999 1\n";
    let pg = PrivatePostgres::start().await;
    let postmaster = pg.pid().expect("running");
    std::fs::write(pg.dir().join("owner"), dead_owner).unwrap();

    let logs = std::env::temp_dir().join(format!("herald-fault-logs-reap-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("owner"), dead_owner).unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("300")
        .env(orphans::MARKER_VAR, logs.display().to_string())
        .spawn()
        .unwrap();
    let sleeper_pid = sleeper.id();
    std::fs::write(logs.join("worker-push.pid"), format!("{sleeper_pid}\n")).unwrap();

    assert!(orphans::reap() >= 2);
    let status = herald_tests::faults::wait_for(
        "the marked process to be killed",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || std::future::ready(sleeper.try_wait().unwrap()),
    )
    .await;
    assert!(!status.success());
    assert!(pids::wait_gone(postmaster, Duration::from_secs(30)).await);
    assert!(!pg.dir().exists() && !logs.exists());
    // The handle of a reaped cluster drops quietly.
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: starts private RabbitMQ/PostgreSQL; run with --run-ignored"]
async fn private_postgres_keeps_commits_through_kill9_and_restart() {
    let started = Instant::now();
    let mut pg = PrivatePostgres::start().await;
    eprintln!("initdb and first start took {:?}", started.elapsed());
    eprintln!(
        "private PostgreSQL :{} started in {:?}",
        pg.port(),
        pg.last_start()
    );
    pg.create_database("kit").await;
    let url = pg.database_url("kit");
    let mut conn = PgConnection::connect(&url).await.unwrap();
    conn.execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    drop(conn);

    pg.kill9().await;
    assert!(
        PgConnection::connect(&url).await.is_err(),
        "down after kill -9"
    );
    pg.restart().await;
    eprintln!(
        "restart after kill -9 (crash recovery) took {:?}",
        pg.last_start()
    );
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 2, "committed rows survive kill -9");
    drop(conn);

    let started = Instant::now();
    pg.stop().await;
    eprintln!("fast stop took {:?}", started.elapsed());
    assert!(
        PgConnection::connect(&url).await.is_err(),
        "down after stop"
    );
    pg.restart().await;
    eprintln!("start after a stop took {:?}", pg.last_start());
    assert!(PgConnection::connect(&url).await.is_ok());
}

#[tokio::test]
async fn a_real_process_drains_on_sigterm_and_dies_on_kill9() {
    // Ingest with its dependencies down: it serves /healthz, not /readyz.
    let closed = herald_tests::faults::free_port();
    let logs = tempfile::tempdir().unwrap();
    let env = Env::from([
        (
            "DATABASE_URL".to_owned(),
            format!("postgres://postgres@127.0.0.1:{closed}/x"),
        ),
        (
            "AMQP_URL".to_owned(),
            format!("amqp://guest:guest@127.0.0.1:{closed}/%2f"),
        ),
        ("LOG_FORMAT".to_owned(), "json".to_owned()),
    ]);
    let mut ingest = Proc::spawn("ingest", env, logs.path());
    let port = ingest.port();
    herald_tests::faults::wait_for(
        "ingest to answer /healthz",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        },
    )
    .await;
    assert!(
        !ingest.is_ready().await,
        "not ready without its dependencies"
    );
    let status = ingest.sigterm(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", ingest.log_tail(20));

    ingest.restart().await;
    herald_tests::faults::wait_for(
        "ingest to answer /healthz again",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        },
    )
    .await;
    let status = ingest.kill9().await;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(
        std::fs::read_to_string(ingest.stdout_path())
            .unwrap()
            .contains("=== start #2 ==="),
        "one log across restarts"
    );
}
