//! The baseline of `cargo xtask bench stream`: a plain rdkafka producer (idempotent, acks=all —
//! the settings keylink's sink uses) sending `N` messages of `BYTES` bytes, `C` at a time, each
//! awaited until the broker acknowledged it. Prints one JSON line: messages/s and ack latency
//! percentiles.
//!
//! ```text
//! produce_baseline BOOTSTRAP TOPIC N C BYTES
//! ```
#![allow(clippy::disallowed_macros)] // a measuring tool prints its result

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, topic, n, c, bytes] = args.as_slice() else {
        eprintln!("usage: produce_baseline BOOTSTRAP TOPIC N C BYTES");
        std::process::exit(2)
    };
    let (n, c, bytes): (usize, usize, usize) = (
        n.parse().unwrap(),
        c.parse().unwrap(),
        bytes.parse().unwrap(),
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let payload = vec![b'x'; bytes];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..c {
        let producer = producer.clone();
        let topic = topic.clone();
        let payload = payload.clone();
        let count = n / c + usize::from(w < n % c);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(count);
            for i in 0..count {
                let key = format!("k{w}-{i}");
                let t = Instant::now();
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload[..]),
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("delivered");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    println!(
        "{{\"messages\":{},\"seconds\":{wall:.3},\"per_second\":{:.1},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
        lat.len(),
        lat.len() as f64 / wall,
        pct(0.5),
        pct(0.99)
    );
}
