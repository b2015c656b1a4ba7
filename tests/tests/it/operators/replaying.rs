//! Replay of each kind of dead letter: dry run, once, never twice.

use super::*;

#[tokio::test]
async fn replaying_a_dead_delivery_routes_it_again_once() {
    let env = TestEnv::new().await;
    let broker = env.broker().await;
    let publisher = Publisher::new(broker.clone());
    let queue = env.names().route_queue(Lane::High);
    let (msg, id) = dead_delivery(&env, "acme", "dead").await;

    // A dry run reports and changes nothing.
    let report = replay::replay(
        &env.pool,
        &publisher,
        &ReplayRequest {
            dry_run: true,
            ..request(by_id(id))
        },
    )
    .await
    .unwrap();
    assert_eq!((report.selected, report.replayed, report.failed), (1, 1, 0));
    assert_eq!(report.results[0].outcome, Outcome::WouldReplay);
    assert_eq!(env.queue_depth(&queue).await, 0);
    assert_eq!(delivery_row(&env, &msg).await, ("dead".into(), 8));
    assert_eq!(replayed_at(&env, id).await, None);

    let report = replay::replay(&env.pool, &publisher, &request(by_id(id)))
        .await
        .unwrap();
    assert_eq!(
        (report.selected, report.replayed, report.failed),
        (1, 1, 0),
        "{report:?}"
    );
    assert_eq!(delivery_row(&env, &msg).await, ("pending".into(), 0));
    assert!(replayed_at(&env, id).await.is_some());
    // Back through the router, for this user only, as replay number 1.
    let got = drain(&env, &queue).await;
    assert_eq!(got.len(), 1);
    let routed: RouteMessage = serde_json::from_slice(&got[0].delivery.data).unwrap();
    assert_eq!(
        routed,
        RouteMessage {
            notification_id: msg.notification_id,
            tenant_id: "acme".into(),
            page: None,
            replay: Some(Replay {
                users: vec!["u-1".into()],
                number: 1
            }),
        }
    );
    let headers = got[0].delivery.properties.headers().as_ref();
    assert_eq!(header_i64(headers, Headers::REPLAY), Some(1));
    assert_eq!(
        header_str(headers, Headers::NOTIFICATION),
        Some(msg.notification_id.to_string())
    );
    for gone in [
        Headers::ERROR,
        Headers::ERROR_CLASS,
        Headers::SOURCE,
        "x-death",
    ] {
        assert!(headers.unwrap().inner().get(gone).is_none(), "{gone} kept");
    }

    // Safe to run twice: the second run selects nothing, publishes nothing.
    let report = replay::replay(&env.pool, &publisher, &request(by_id(id)))
        .await
        .unwrap();
    assert_eq!((report.selected, report.replayed), (0, 0));
    assert_eq!(env.queue_depth(&queue).await, 0);

    // A delivery that was sent meanwhile is never sent again, even with --again.
    sqlx::query("UPDATE deliveries SET status = 'sent' WHERE id = $1")
        .bind(msg.delivery_id)
        .execute(&env.pool)
        .await
        .unwrap();
    let report = replay::replay(
        &env.pool,
        &publisher,
        &ReplayRequest {
            again: true,
            ..request(by_id(id))
        },
    )
    .await
    .unwrap();
    assert_eq!(report.results[0].outcome, Outcome::Skipped, "{report:?}");
    assert_eq!(env.queue_depth(&queue).await, 0);
    assert_eq!(delivery_row(&env, &msg).await.0, "sent");
    broker.close().await;
}

#[tokio::test]
async fn replay_puts_ingest_router_and_poison_dead_letters_back_where_they_came_from() {
    let env = TestEnv::new().await;
    let broker = env.broker().await;
    let publisher = Publisher::new(broker.clone());
    let names = env.names();
    let (ingest_exchange, route_exchange, deliveries) = (
        names.ingest_exchange(),
        names.notifications_exchange(),
        names.deliveries_exchange(),
    );
    let ingest = seed(&env, |r| {
        (r.exchange, r.routing_key) = (ingest_exchange, "acme".into());
        r.headers = json!({"idempotency-key": "evt-1", "x-herald-error": "bad", "x-herald-error-class": "invalid"});
    })
    .await;
    let router = seed(&env, |r| {
        (r.source, r.error_class, r.exchange, r.routing_key) = (
            "router".into(),
            "unroutable".into(),
            route_exchange,
            "normal".into(),
        );
    })
    .await;
    let poison = seed(&env, |r| {
        (r.source, r.error_class, r.exchange, r.routing_key) = (
            "broker".into(),
            "poison".into(),
            deliveries,
            "push.bulk".into(),
        );
        r.tenant_id = None;
        r.payload = b"not a delivery".to_vec();
    })
    .await;
    let nowhere = seed(&env, |r| r.error_class = "mystery".into()).await;

    let report = replay::replay(&env.pool, &publisher, &request(Filter::default()))
        .await
        .unwrap();
    assert_eq!(
        (report.selected, report.replayed, report.failed),
        (4, 3, 1),
        "{report:?}"
    );
    let failed = report.results.iter().find(|r| r.id == nowhere).unwrap();
    assert_eq!(failed.outcome, Outcome::Failed);
    assert_eq!(replayed_at(&env, nowhere).await, None);

    let on_ingest = drain(&env, &names.ingest_queue()).await;
    assert_eq!(on_ingest.len(), 1);
    assert_eq!(on_ingest[0].delivery.routing_key.as_str(), "acme");
    let headers = on_ingest[0].delivery.properties.headers().as_ref();
    assert_eq!(
        header_str(headers, Headers::IDEMPOTENCY_KEY).as_deref(),
        Some("evt-1")
    );
    assert_eq!(header_str(headers, Headers::ERROR), None);
    assert_eq!(drain(&env, &names.route_queue(Lane::Normal)).await.len(), 1);
    let poisoned = drain(&env, &names.delivery_queue(Channel::Push, Lane::Bulk)).await;
    assert_eq!(poisoned[0].delivery.data, b"not a delivery");
    for id in [ingest, router, poison] {
        assert!(replayed_at(&env, id).await.is_some());
    }
    broker.close().await;
}

/// A replayed delivery takes the normal path: sent when nothing stands in
/// its way, suppressed when its user opted out since; the dead letter of a
/// user erased since holds nothing to send and is skipped.
#[tokio::test]
async fn a_replayed_delivery_goes_through_preferences_and_erasure() {
    use herald_tests::{
        fakes::twilio::TwilioFake,
        pipeline::{Pipeline, twilio},
    };
    use reqwest::Method;

    let p = Pipeline::start("200ms").await;
    let fake = TwilioFake::start().await;
    let worker = p.env.spawn_worker(Channel::Sms, twilio(&fake)).await;
    let publisher = Publisher::new(p.env.broker().await);
    let mut dead = Vec::new();
    for (i, user) in ["u-1", "u-2", "u-3"].iter().enumerate() {
        p.user(user, json!({"phone": format!("+1415555010{i}")}))
            .await;
        for _ in 0..2 {
            fake.push_error(503, 20500, "Service unavailable", &[]);
        }
        let id = p
            .send(json!({"category": "orders", "to": {"users": [user]},
                         "content": {"sms": {"text": "Order shipped"}}}))
            .await;
        let body = p.settled(&id, Duration::from_secs(20)).await;
        assert_eq!(body["counts"], json!({"dead": 1}));
        dead.push(id);
    }
    let archived = p
        .env
        .eventually(Duration::from_secs(10), || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
                .fetch_one(&p.env.pool)
                .await
                .unwrap();
            (n == 3).then_some(())
        })
        .await;
    assert!(archived.is_some(), "three dead letters");
    let (status, _) = p
        .client
        .json(
            Method::PUT,
            "/v1/users/u-2/preferences",
            Some(json!({"channels": {"sms": false}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = p.client.json(Method::DELETE, "/v1/users/u-3", None).await;
    assert_eq!(status, 204);
    let requests_before = fake.requests().len();

    let report = replay::replay(&p.env.pool, &publisher, &request(Filter::default()))
        .await
        .unwrap();
    assert_eq!(
        (report.replayed, report.skipped, report.failed),
        (2, 1, 0),
        "{report:?}"
    );
    let outcomes = [
        json!({"sent": 1}),
        json!({"suppressed": 1}),
        json!({"dead": 1}),
    ];
    for (id, want) in dead.iter().zip(outcomes) {
        let body = p
            .env
            .eventually(Duration::from_secs(20), || async {
                let body = p.status(id).await;
                (body["counts"] == want).then_some(body)
            })
            .await
            .unwrap_or_else(|| panic!("{id} never became {want}"));
        let reason = &body["deliveries"][0]["reason"];
        match want.as_object().unwrap().keys().next().unwrap().as_str() {
            "sent" => assert_eq!(body["deliveries"][0]["attempts"], 1),
            "suppressed" => assert_eq!(reason, "opted_out", "{body}"),
            _ => assert!(
                body["deliveries"][0]["destination"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("eras")),
                "the address is erased: {body}"
            ),
        }
    }
    assert_eq!(
        fake.requests().len(),
        requests_before + 1,
        "only the replay that may go out was sent"
    );
    worker.stop().await;
    p.stop().await;
}
