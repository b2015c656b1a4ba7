//! The broker's single-hop ceiling: what one quorum queue moves per second
//! with the guarantees Herald asks for (persistent 512-byte messages,
//! publisher confirms, consumer acks, one ack per message), with as many
//! publishes in flight as the pipeline has clients. Every pipeline rate is
//! quoted as a ratio to this, measured in the same run.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use herald::broker::{Broker, Headers, Outgoing, Publisher};
use herald_tests::TestEnv;
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};

/// Consumer prefetch: the workers' own for `normal`.
const PREFETCH: u16 = 512;

/// Messages/s from the first publish to the last ack.
pub async fn measure(
    env: &TestEnv,
    amqp_url: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let broker = Broker::new(amqp_url, env.names());
    let queue = format!(
        "{}.bench.ceiling.{}",
        env.prefix,
        uuid::Uuid::new_v4().simple()
    );
    let ch = broker.channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    let consumer_ch = broker.channel().await?;
    consumer_ch
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumed = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            match consumer.next().await {
                Some(Ok(d)) => {
                    d.ack(BasicAckOptions::default()).await.expect("ack");
                    got += 1;
                }
                _ => break,
            }
        }
        (got, Instant::now())
    });
    let publisher = Publisher::new(broker.clone());
    let body = vec![b'x'; 512];
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(concurrency, |_| {
            // The default exchange routes by queue name.
            let msg = Outgoing::json("", queue.clone(), body.clone(), Headers::default());
            let publisher = publisher.clone();
            async move { publisher.publish(&msg).await.expect("publish") }
        })
        .await;
    let (got, last) = tokio::time::timeout(Duration::from_secs(300), consumed).await??;
    anyhow::ensure!(got == n, "the ceiling consumer saw {got} of {n}");
    // Closing the consumer's channel first: deleting a queue under a live
    // consumer makes the broker cancel it while the channel may be
    // cancelling too, and lapin takes the second cancel-ok for a protocol
    // error that closes the whole connection.
    let _ = consumer_ch.close(200, "done".into()).await;
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    broker.close().await;
    Ok(n as f64 / (last - started).as_secs_f64())
}
