//! Dead letters reach the store once, and the store's filters select right.

use super::*;

#[tokio::test]
async fn dead_letters_of_each_kind_are_archived_exactly_once() {
    let env = TestEnv::new().await;
    env.key("acme", &[]).await;
    let broker = env.broker().await;
    let publisher = Publisher::new(broker.clone());
    let names = env.names();

    // One Herald dead-lettered itself, with its reason in headers.
    let delivery_id = Uuid::now_v7();
    let mut exhausted = Outgoing::json(
        names.dead_exchange(),
        "",
        br#"{"delivery_id": "x"}"#.to_vec(),
        Headers::default()
            .str(Headers::SOURCE, "worker-sms")
            .str(Headers::ERROR_CLASS, "exhausted")
            .str(Headers::ERROR, "gave up after 8 attempts")
            .str(Headers::TENANT, "acme")
            .str(Headers::CHANNEL, "sms")
            .str(Headers::DELIVERY, delivery_id.to_string())
            .int(Headers::ATTEMPTS, 8)
            .str(Headers::ORIGINAL_EXCHANGE, names.deliveries_exchange())
            .str(Headers::ORIGINAL_ROUTING_KEY, "sms.high"),
    );
    exhausted.message_id = format!("{delivery_id}:dead");
    // One the broker dead-lettered (delivery limit), with only x-death.
    let mut death = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    death.insert("count".into(), AMQPValue::LongLongInt(21));
    death.insert("reason".into(), s("delivery_limit"));
    death.insert(
        "queue".into(),
        s(&names.delivery_queue(Channel::Push, Lane::High)),
    );
    death.insert("exchange".into(), s(&names.deliveries_exchange()));
    death.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![s("push.high")])),
    );
    let mut table = FieldTable::default();
    table.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    let mut poison = Outgoing::json(
        names.dead_exchange(),
        "",
        b"{\"crashes\": \"every worker\"}".to_vec(),
        Headers::from_table(Some(&table)),
    );
    poison.message_id = "poison-1".into();
    publisher.publish(&exhausted).await.unwrap();
    publisher.publish(&poison).await.unwrap();
    // And an invalid event, dead-lettered by ingest itself.
    let ingest = env.spawn_ingest().await;
    publisher
        .publish(&Outgoing::json(
            names.ingest_exchange(),
            "acme",
            b"not json".to_vec(),
            Headers::default(),
        ))
        .await
        .unwrap();

    let cancel = CancellationToken::new();
    let archiver = tokio::spawn(herald::dlq::archive::run(
        broker.clone(),
        env.pool.clone(),
        cancel.clone(),
    ));
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dead_letters")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    env.eventually(Duration::from_secs(20), || async {
        (count().await == 3).then_some(())
    })
    .await
    .expect("three dead letters archived");
    // The broker redelivers the same messages (as after a crash between
    // commit and ack): nothing new is stored.
    publisher.publish(&exhausted).await.unwrap();
    publisher.publish(&poison).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    archiver.await.unwrap();
    // Stopping requeues anything unacked: an empty queue means every
    // message was handled and acked.
    assert_eq!(env.queue_depth(&names.dead_queue()).await, 0);
    assert_eq!(count().await, 3);

    let rows: Vec<(String, String, String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT source, error_class, exchange, routing_key, tenant_id, message_key FROM dead_letters ORDER BY source",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let (broker_row, ingest_row, worker_row) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(
        (broker_row.0.as_str(), broker_row.1.as_str()),
        ("broker", "poison")
    );
    assert_eq!(broker_row.2, names.deliveries_exchange());
    assert_eq!(broker_row.3, "push.high");
    assert_eq!(
        (ingest_row.0.as_str(), ingest_row.1.as_str()),
        ("ingest", "invalid")
    );
    assert_eq!(ingest_row.2, names.ingest_exchange());
    assert_eq!(ingest_row.3, "acme");
    assert_eq!(
        (worker_row.0.as_str(), worker_row.1.as_str()),
        ("worker-sms", "exhausted")
    );
    assert_eq!(worker_row.4.as_deref(), Some("acme"));

    // The archiver's insert itself, run twice for one message, stores once.
    let mut again = record(&worker_row.5);
    again.error_class = "exhausted".into();
    assert!(!dead_letters::insert(&env.pool, &again).await.unwrap());
    assert_eq!(count().await, 3);
    ingest.stop().await;
    broker.close().await;
}

#[tokio::test]
async fn filters_select_by_tenant_channel_class_time_and_notification() {
    let env = TestEnv::new().await;
    let n1 = Uuid::now_v7();
    let ago = |mins: i64| now() - chrono::Duration::minutes(mins);
    let r1 = seed(&env, |r| {
        (r.channel, r.error_class, r.failed_at, r.notification_id) =
            (Some("sms".into()), "timeout".into(), ago(60), Some(n1));
    })
    .await;
    let r2 = seed(&env, |r| {
        (r.channel, r.error_class, r.failed_at) =
            (Some("email".into()), "permanent".into(), ago(180));
    })
    .await;
    let r3 = seed(&env, |r| {
        (r.tenant_id, r.channel, r.error_class, r.failed_at) = (
            Some("beta".into()),
            Some("sms".into()),
            "timeout".into(),
            ago(30 * 60),
        );
    })
    .await;
    let r4 = seed(&env, |r| r.failed_at = ago(10)).await;
    let r5 = seed(&env, |r| {
        (
            r.tenant_id,
            r.channel,
            r.error_class,
            r.failed_at,
            r.notification_id,
        ) = (
            Some("beta".into()),
            Some("push".into()),
            "poison".into(),
            ago(48 * 60),
            Some(n1),
        );
    })
    .await;

    let check = |filter: Filter, want: Vec<Uuid>| {
        let pool = env.pool.clone();
        async move {
            let rows = dead_letters::list(&pool, &filter, 100).await.unwrap();
            let got: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
            assert_eq!(got, want, "{filter:?}");
            assert_eq!(
                dead_letters::count(&pool, &filter).await.unwrap(),
                want.len() as i64
            );
        }
    };
    let f = Filter::default;
    check(
        Filter {
            tenant: Some("acme".into()),
            ..f()
        },
        vec![r4, r1, r2],
    )
    .await;
    check(
        Filter {
            channel: Some("sms".into()),
            ..f()
        },
        vec![r1, r3],
    )
    .await;
    check(
        Filter {
            error_class: Some("timeout".into()),
            ..f()
        },
        vec![r1, r3],
    )
    .await;
    check(
        Filter {
            since: Some(ago(120)),
            ..f()
        },
        vec![r4, r1],
    )
    .await;
    check(
        Filter {
            since: Some(ago(36 * 60)),
            until: Some(ago(120)),
            ..f()
        },
        vec![r2, r3],
    )
    .await;
    check(
        Filter {
            notification_id: Some(n1),
            ..f()
        },
        vec![r1, r5],
    )
    .await;
    check(
        Filter {
            tenant: Some("acme".into()),
            error_class: Some("timeout".into()),
            ..f()
        },
        vec![r1],
    )
    .await;
    check(by_id(r2), vec![r2]).await;
    dead_letters::mark_replayed(&env.pool, r1).await.unwrap();
    check(
        Filter {
            notification_id: Some(n1),
            only_unreplayed: true,
            ..f()
        },
        vec![r5],
    )
    .await;
}
