//! Replay of each kind of dead letter: dry run, once, never twice.

use super::*;

#[tokio::test]
async fn replaying_a_dead_delivery_puts_it_back_on_its_queue_once() {
    let env = TestEnv::new().await;
    let broker = env.broker().await;
    let publisher = Publisher::new(broker.clone());
    let queue = env.names().delivery_queue(Channel::Sms, Lane::High);
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
    let got = drain(&env, &queue).await;
    assert_eq!(got.len(), 1);
    let delivered: DeliveryMessage = serde_json::from_slice(&got[0].delivery.data).unwrap();
    assert_eq!(delivered, msg);
    let headers = got[0].delivery.properties.headers().as_ref();
    assert_eq!(header_i64(headers, Headers::ATTEMPTS), Some(0));
    assert_eq!(header_i64(headers, Headers::REPLAY), Some(1));
    assert_eq!(
        header_str(headers, Headers::DELIVERY),
        Some(msg.delivery_id.to_string())
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
