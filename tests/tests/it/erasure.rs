//! Erasing a user reaches every copy of their addresses and content:
//! stored deliveries (held ones are not sent) and dead letters.

use std::time::Duration;

use herald::{db::dead_letters::ERASED_PAYLOAD, model::Channel};
use herald_tests::{
    fakes::twilio::TwilioFake,
    pipeline::{Pipeline, twilio},
};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn erasing_a_user_scrubs_their_deliveries_and_dead_letters() {
    let p = Pipeline::start("200ms").await;
    let fake = TwilioFake::start().await;
    let worker = p.env.spawn_worker(Channel::Sms, twilio(&fake)).await;
    p.user("u-1", json!({"name": "Ada", "phone": "+14155550100"}))
        .await;
    let sms = |extra: serde_json::Value| {
        let mut body = json!({"category": "orders", "to": {"users": ["u-1"]},
                              "content": {"sms": {"text": "Hi {{name}}"}}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let sent = p.send(sms(json!({}))).await;
    p.settled(&sent, Duration::from_secs(20)).await;
    for _ in 0..2 {
        fake.push_error(503, 20500, "Service unavailable for +14155550100", &[]);
    }
    let dead = p.send(sms(json!({}))).await;
    assert_eq!(
        p.settled(&dead, Duration::from_secs(20)).await["counts"],
        json!({"dead": 1})
    );
    let later = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339();
    let held = p.send(sms(json!({"send_at": later}))).await;
    p.env
        .eventually(Duration::from_secs(10), || async {
            let body = p.status(&held).await;
            (body["counts"] == json!({"deferred": 1})).then_some(())
        })
        .await
        .expect("held");
    p.env
        .eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, String>("SELECT user_id FROM dead_letters")
                .fetch_optional(&p.env.pool)
                .await
                .unwrap()
        })
        .await
        .expect("the dead letter is archived with its user");

    let (status, _) = p.client.json(Method::DELETE, "/v1/users/u-1", None).await;
    assert_eq!(status, 204);

    type Row = (String, String, Option<String>, bool, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT status, destination, reason, rendered IS NOT NULL, last_error FROM deliveries
         ORDER BY created_at",
    )
    .fetch_all(&p.env.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    for (status, destination, _, rendered, last_error) in &rows {
        assert!(
            destination.starts_with("erased:"),
            "{status}: {destination}"
        );
        assert!(!rendered && last_error.is_none(), "{rows:?}");
    }
    let statuses: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|r| (r.0.as_str(), r.2.as_deref()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("sent", None),
            ("dead", None),
            ("suppressed", Some("erased"))
        ]
    );
    let (payload, last_error, headers): (Vec<u8>, String, serde_json::Value) =
        sqlx::query_as("SELECT payload, last_error, headers FROM dead_letters")
            .fetch_one(&p.env.pool)
            .await
            .unwrap();
    assert_eq!(payload, ERASED_PAYLOAD);
    assert_eq!(last_error, "erased with its user");
    assert!(!headers.to_string().contains("+14155550100"), "{headers}");
    // The held delivery will not go out when it falls due.
    let (_, body) = p
        .client
        .json(Method::GET, &format!("/v1/notifications/{held}"), None)
        .await;
    assert_eq!(body["counts"], json!({"suppressed": 1}));
    worker.stop().await;
    p.stop().await;
}

/// The recipient index is built on partitions that existed before its
/// migration, and the parent index is valid once they all have it.
#[tokio::test]
async fn the_recipient_index_covers_every_partition() {
    let env = herald_tests::TestEnv::new().await;
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'deliveries_user'::regclass",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(valid);
    // A partition made later (the router makes them ahead) gets it at once.
    sqlx::query("SELECT herald_ensure_delivery_partitions(0, 30)")
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        herald::db::ensure_partition_indexes(&env.pool)
            .await
            .unwrap(),
        0
    );
}
