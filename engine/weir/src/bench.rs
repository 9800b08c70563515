//! `weir bench`: an HTTP load generator for the ingest path.
//!
//! Sends NDJSON batches of realistic 300–500-byte logs (with emails, card numbers,
//! phone numbers and IPs in them) from `--concurrency` connections for `--seconds`,
//! spread over `--keys` partition keys, and reports acknowledged events/s and the
//! p50/p99/max ack latency per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    url: String,
    #[arg(long)]
    token: Option<String>,
    #[arg(long, default_value = "app")]
    stream: String,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Records per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Distinct partition keys (spread over partitions).
    #[arg(long, default_value_t = 8)]
    keys: usize,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.concurrency == 0 || args.batch == 0 || args.keys == 0 {
        bail!("--concurrency, --batch and --keys must be positive");
    }
    // Pre-build bodies so the generator measures the server, not JSON formatting.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..64u64)
            .map(|b| {
                let mut body = Vec::new();
                for i in 0..args.batch as u64 {
                    body.extend_from_slice(
                        weir_core::sample::record(b * args.batch as u64 + i).as_bytes(),
                    );
                    body.push(b'\n');
                }
                body
            })
            .collect(),
    );
    let avg = bodies[0].len() / args.batch;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let events = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.concurrency {
        let (client, bodies, hist, events, throttled, errors, args) = (
            client.clone(),
            bodies.clone(),
            hist.clone(),
            events.clone(),
            throttled.clone(),
            errors.clone(),
            args.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = c;
            while Instant::now() < end {
                let key = format!("host-{}", n % args.keys);
                let url = format!(
                    "{}/api/v1/logs?stream={}&key={}",
                    args.url, args.stream, key
                );
                let mut req = client.post(url).body(bodies[n % bodies.len()].clone());
                if let Some(t) = &args.token {
                    req = req.bearer_auth(t);
                }
                let t0 = Instant::now();
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        hist.lock().record(t0.elapsed().as_micros() as u64).ok();
                        events.fetch_add(args.batch as u64, Ordering::Relaxed);
                    }
                    Ok(r) if r.status().as_u16() == 429 => {
                        throttled.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(r) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "HTTP {}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("request failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                n += args.concurrency;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let h = hist.lock();
    let ev = events.load(Ordering::Relaxed);
    println!(
        "{{\"events\":{ev},\"seconds\":{secs:.2},\"events_per_sec\":{:.0},\"avg_record_bytes\":{avg},\"batch\":{},\"concurrency\":{},\"ack_p50_ms\":{:.2},\"ack_p99_ms\":{:.2},\"ack_max_ms\":{:.2},\"throttled\":{},\"errors\":{}}}",
        ev as f64 / secs,
        args.batch,
        args.concurrency,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        throttled.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
    );
    Ok(())
}
