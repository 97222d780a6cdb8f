//! How long a write acknowledged by one instance takes to be visible on another (both on one
//! database, `--store`): writes a fresh value on A, then reads B until it returns it.
//!
//! `visibility A_ADDR B_ADDR [SAMPLES]` prints p50, p99 and max of the delay from A's
//! acknowledgement to the first read on B that returned the value.

use std::time::{Duration, Instant};

use credshard_protocol::{Client, Expiry, Kind, Labels, PutRequest, EMPTY_LABELS};

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [a, b] = [&arguments[0], &arguments[1]];
    let samples: usize = arguments.get(2).map_or(500, |count| count.parse().expect("SAMPLES is a number"));
    let token = std::env::var("CREDSHARD_TOKEN").unwrap_or_default();
    let connect = |address: &str| {
        let mut client = Client::connect(address).expect("connect");
        client.hello(token.as_bytes()).expect("hello");
        client
    };
    let (mut writer, mut reader) = (connect(a), connect(b));
    let mut delays = Vec::with_capacity(samples);
    for sample in 0..samples {
        let id = format!("visibility/{}", sample % 64);
        let value = format!("value {sample} {:?}", Instant::now());
        let request = PutRequest {
            id: &id,
            owner: "bench",
            scope: "visibility",
            kind: Kind::Generic,
            expected_version: None,
            expiry: Expiry::Never,
            labels: Labels::from_validated(EMPTY_LABELS),
            secret: value.as_bytes(),
        };
        writer.put(&request).expect("put on A");
        let acked = Instant::now();
        loop {
            if reader.get(&id).is_ok_and(|reply| reply.secret.expose() == value.as_bytes()) {
                break;
            }
            assert!(acked.elapsed() < Duration::from_secs(10), "{id} not visible on B after 10 s");
            std::thread::sleep(Duration::from_micros(200));
        }
        delays.push(acked.elapsed());
    }
    delays.sort();
    let at = |quantile: f64| delays[((delays.len() - 1) as f64 * quantile).round() as usize];
    println!(
        "A->B visibility over {samples} writes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
}
