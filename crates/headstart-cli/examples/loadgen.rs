//! A bounded HTTP load generator for `bench/serve`: POSTs one JSON body over and over.
//!
//! `loadgen URL BODY_FILE closed CONCURRENCY SECONDS`: each of CONCURRENCY clients sends its
//! next request as soon as the last is answered (saturation throughput).
//! `loadgen URL BODY_FILE open RATE SECONDS`: requests are scheduled at RATE per second
//! whatever the answers; latency counts from the scheduled time, so a server that falls behind
//! is charged for the wait (no coordinated omission).
//!
//! Prints one JSON line: requests, errors, throughput and latency percentiles (ms).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn send(agent: &ureq::Agent, url: &str, body: &str) -> bool {
    match agent.post(url).set("Content-Type", "application/json").send_string(body) {
        Ok(r) => r.status() == 200 && r.into_string().is_ok(),
        Err(_) => false,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        eprintln!("usage: loadgen URL BODY_FILE closed|open CONCURRENCY|RATE SECONDS");
        std::process::exit(2);
    }
    let (url, body) = (a[1].clone(), std::fs::read_to_string(&a[2]).expect("reading the body file"));
    let open = a[3] == "open";
    let level: f64 = a[4].parse().expect("a number");
    let secs: f64 = a[5].parse().expect("seconds");
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).max_idle_connections_per_host(256).build();
    // Warm the connection pool and the server.
    for _ in 0..3 {
        send(&agent, &url, &body);
    }
    let lat = Arc::new(Mutex::new(Vec::<f64>::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let clients = if open { 128 } else { level as usize };
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (agent, url, body, lat, errors, next) = (agent.clone(), url.clone(), body.clone(), lat.clone(), errors.clone(), next.clone());
            std::thread::spawn(move || {
                let mut mine = vec![];
                loop {
                    let began = if open {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let at = start + Duration::from_secs_f64(i as f64 / level);
                        if at >= end {
                            break;
                        }
                        if let Some(d) = at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(d);
                        }
                        at
                    } else {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        now
                    };
                    if send(&agent, &url, &body) {
                        mine.push(began.elapsed().as_secs_f64() * 1e3);
                    } else {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let wall = start.elapsed().as_secs_f64();
    let mut l = lat.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    let errors = errors.load(Ordering::SeqCst);
    println!(
        "{{\"mode\": \"{}\", \"level\": {level}, \"seconds\": {wall:.2}, \"ok\": {}, \"errors\": {errors}, \"throughput_rps\": {:.2}, \"p50_ms\": {:.2}, \"p90_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
        a[3],
        l.len(),
        l.len() as f64 / wall,
        percentile(&l, 0.5),
        percentile(&l, 0.9),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(f64::NAN)
    );
}
