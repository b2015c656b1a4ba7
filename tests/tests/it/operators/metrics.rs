//! docs/operations.md's metric table and the code agree: every long-running
//! binary, started as the real process with nothing done yet, shows on
//! `/metrics` each metric of the rows naming it, of the documented type, and
//! no Herald metric the table does not give it.

use std::{collections::BTreeMap, path::PathBuf, process::Stdio, time::Duration};

use herald_tests::fakes::closed_port;

use super::*;

/// One row of the table: type and the "emitted by" column.
struct Row {
    kind: String,
    emitted_by: String,
}

/// The metric table of docs/operations.md, by metric name.
fn documented() -> BTreeMap<String, Row> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let text = std::fs::read_to_string(&path).expect("docs/operations.md");
    text.lines()
        .filter(|line| line.starts_with("| `herald_"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert!(cells.len() >= 5, "a metric row has 5 cells: {line}");
            (
                cells[0].trim_matches('`').to_owned(),
                Row {
                    kind: cells[1].to_owned(),
                    emitted_by: cells[3].to_owned(),
                },
            )
        })
        .collect()
}

/// Whether a row's "emitted by" names `binary`.
fn names(emitted_by: &str, binary: &str) -> bool {
    match binary {
        "ingest" | "router" => emitted_by.contains(binary),
        worker => emitted_by.contains("workers") || emitted_by.contains(worker),
    }
}

/// The metric names and types a Prometheus text page declares.
fn declared(page: &str) -> BTreeMap<String, String> {
    page.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Starts `binary` of this environment on `port` with `extra` settings.
fn start(
    env: &TestEnv,
    binary_name: &str,
    port: u16,
    extra: &[(&str, String)],
) -> tokio::process::Child {
    let mut cmd = Command::new(binary(binary_name));
    cmd.env("DATABASE_URL", &env.database_url)
        .env("AMQP_URL", herald_tests::amqp_url())
        .env("BROKER_PREFIX", &env.prefix)
        .env("RETRY_SCHEDULE", env.schedule.to_string())
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in extra {
        cmd.env(key, value);
    }
    cmd.spawn().expect("start the binary")
}

/// The first `/metrics` page the process answers, or why there is none.
async fn first_page(name: &str, port: u16, child: &mut tokio::process::Child) -> String {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(Some(status)) = child.try_wait() {
            let out = output(child).await;
            panic!("{name} exited at start ({status}): {out}");
        }
        if let Ok(response) = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            && response.status().is_success()
        {
            return response.text().await.expect("metrics body");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} served no /metrics within 30 s");
}

/// What a process that exited wrote.
async fn output(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text).await;
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text).await;
    }
    text
}

#[tokio::test]
async fn every_documented_metric_is_on_a_fresh_metrics_page() {
    let env = TestEnv::new().await;
    let table = documented();
    assert!(table.len() > 30, "the metric table was not found");
    // The email worker with a failover: the failover counter exists only there.
    let (smtp, http) = (closed_port().await, closed_port().await);
    let email = vec![
        ("EMAIL_PROVIDER", "smtp".to_owned()),
        ("SMTP_URL", format!("smtp://127.0.0.1:{smtp}")),
        ("EMAIL_FROM", "noreply@example.com".to_owned()),
        ("EMAIL_FAILOVER_PROVIDER", "http".to_owned()),
        ("EMAIL_HTTP_URL", format!("http://127.0.0.1:{http}/send")),
    ];
    let binaries: [(&str, Vec<(&str, String)>); 5] = [
        ("ingest", Vec::new()),
        ("router", Vec::new()),
        ("worker-push", Vec::new()),
        ("worker-email", email),
        ("worker-sms", Vec::new()),
    ];
    let mut problems = Vec::new();
    for (name, extra) in binaries {
        let port = closed_port().await;
        let mut child = start(&env, name, port, &extra);
        let page = first_page(name, port, &mut child).await;
        let seen = declared(&page);
        for (metric, row) in &table {
            if !names(&row.emitted_by, name) {
                continue;
            }
            match seen.get(metric) {
                None => problems.push(format!("{name}: {metric} is not on a fresh /metrics")),
                Some(kind) if *kind != row.kind => problems.push(format!(
                    "{name}: {metric} is a {kind}, documented as a {}",
                    row.kind
                )),
                Some(_) => {}
            }
        }
        for metric in seen.keys().filter(|m| m.starts_with("herald_")) {
            if !table
                .get(metric)
                .is_some_and(|row| names(&row.emitted_by, name))
            {
                problems.push(format!(
                    "{name}: {metric} is served but docs/operations.md does not list it for {name}"
                ));
            }
        }
        let _ = child.kill().await;
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
