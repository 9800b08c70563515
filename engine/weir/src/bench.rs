//! `weir bench`: an HTTP load generator for the ingest path.
//!
//! Sends NDJSON batches of realistic 300–500-byte logs (with emails, card numbers,
//! phone numbers and IPs in them) from `--concurrency` connections for `--seconds`,
//! spread over `--keys` partition keys, and reports acknowledged events/s and the
//! p50/p99/max ack latency per request.
//!
//! `--protocol` picks how the same records travel: Weir's NDJSON (`/api/v1/logs`),
//! OTLP/HTTP protobuf (`/v1/logs`) or OTLP/gRPC (`LogsService/Export`), each record then
//! a `LogRecord` (time, severity text, the message as body, the other fields as
//! attributes, the trace id as bytes: [`otlp_record`]).

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
    /// Distinct partition keys (spread over partitions; NDJSON only: OTLP requests
    /// carry no key, so compare protocols with `--keys 1`).
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// How the records travel.
    #[arg(long, value_enum, default_value = "ndjson")]
    protocol: Protocol,
    /// The gRPC listener, for `--protocol otlp-grpc`.
    #[arg(long, default_value = "http://127.0.0.1:7071")]
    grpc_url: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Ndjson,
    OtlpHttp,
    OtlpGrpc,
}

/// Sample record `i` as an OTLP `LogRecord`.
pub fn otlp_record(i: u64) -> opentelemetry_proto::tonic::logs::v1::LogRecord {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    let rec: serde_json::Value =
        serde_json::from_str(&weir_core::sample::record(i)).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let kv = |k: &str, v: V| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let int = |v: &serde_json::Value| V::IntValue(v.as_i64().unwrap_or_default());
    let ms = weir_core::time::parse_text_ms(rec["timestamp"].as_str().unwrap_or("")).unwrap_or(0);
    opentelemetry_proto::tonic::logs::v1::LogRecord {
        time_unix_nano: (ms.max(0) as u64) * 1_000_000,
        severity_text: text(&rec["level"]),
        body: Some(AnyValue {
            value: Some(V::StringValue(text(&rec["message"]))),
        }),
        attributes: vec![
            kv("service", V::StringValue(text(&rec["service"]))),
            kv("host", V::StringValue(text(&rec["host"]))),
            kv("http.method", V::StringValue(text(&rec["http"]["method"]))),
            kv("http.path", V::StringValue(text(&rec["http"]["path"]))),
            kv("http.status", int(&rec["http"]["status"])),
            kv("http.duration_ms", int(&rec["http"]["duration_ms"])),
            kv("user.id", int(&rec["user"]["id"])),
            kv("user.phone", V::StringValue(text(&rec["user"]["phone"]))),
        ],
        trace_id: (0..16)
            .map(|k| {
                u8::from_str_radix(
                    rec["trace_id"]
                        .as_str()
                        .unwrap_or("")
                        .get(k * 2..k * 2 + 2)
                        .unwrap_or("0"),
                    16,
                )
                .unwrap_or(0)
            })
            .collect(),
        ..Default::default()
    }
}

/// One OTLP request of `batch` sample records starting at `first`.
fn otlp_request(
    first: u64,
    batch: usize,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: (0..batch as u64).map(|i| otlp_record(first + i)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Send request `n` once: Ok(true) acknowledged, Ok(false) throttled (retry later).
async fn send_one(
    args: &BenchArgs,
    client: &reqwest::Client,
    grpc: Option<&LogsClient>,
    bodies: &[Vec<u8>],
    requests: &[opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest],
    n: usize,
) -> Result<bool, String> {
    let req = match args.protocol {
        Protocol::OtlpGrpc => {
            let Some(grpc) = grpc else {
                return Err("no gRPC client".into());
            };
            let mut r = tonic::Request::new(requests[n % requests.len()].clone());
            if let Some(t) = &args.token {
                let v = format!("Bearer {t}").parse().map_err(|_| "bad token")?;
                r.metadata_mut().insert("authorization", v);
            }
            r.metadata_mut().insert(
                "x-weir-stream",
                args.stream.parse().map_err(|_| "bad stream")?,
            );
            return match grpc.clone().export(r).await {
                Ok(_) => Ok(true),
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                    ) =>
                {
                    Ok(false)
                }
                Err(s) => Err(format!("gRPC {:?}: {}", s.code(), s.message())),
            };
        }
        Protocol::OtlpHttp => client
            .post(format!("{}/v1/logs", args.url))
            .header("content-type", "application/x-protobuf")
            .header("x-weir-stream", &args.stream),
        Protocol::Ndjson => client.post(format!(
            "{}/api/v1/logs?stream={}&key=host-{}",
            args.url,
            args.stream,
            n % args.keys
        )),
    };
    let mut req = req.body(bodies[n % bodies.len()].clone());
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => {
            let _ = r.bytes().await;
            Ok(true)
        }
        Ok(r) if r.status().as_u16() == 429 => Ok(false),
        Ok(r) => Err(format!(
            "HTTP {}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        )),
        Err(e) => Err(format!("request failed: {e}")),
    }
}

type LogsClient =
    opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient<
        tonic::transport::Channel,
    >;

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.concurrency == 0 || args.batch == 0 || args.keys == 0 {
        bail!("--concurrency, --batch and --keys must be positive");
    }
    // Pre-build bodies so the generator measures the server, not encoding.
    let batch = args.batch as u64;
    let requests: Arc<Vec<_>> = Arc::new(if args.protocol == Protocol::Ndjson {
        Vec::new()
    } else {
        (0..64u64)
            .map(|b| otlp_request(b * batch, args.batch))
            .collect()
    });
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..64u64)
            .map(|b| match args.protocol {
                Protocol::Ndjson => {
                    let mut body = Vec::new();
                    for i in 0..batch {
                        body.extend_from_slice(weir_core::sample::record(b * batch + i).as_bytes());
                        body.push(b'\n');
                    }
                    body
                }
                Protocol::OtlpHttp => prost::Message::encode_to_vec(&requests[b as usize]),
                Protocol::OtlpGrpc => Vec::new(),
            })
            .collect(),
    );
    let avg = weir_core::sample::ndjson(args.batch).len() / args.batch;
    let grpc = if args.protocol == Protocol::OtlpGrpc {
        Some(
            LogsClient::connect(args.grpc_url.clone())
                .await?
                .max_decoding_message_size(64 << 20),
        )
    } else {
        None
    };
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
        let (client, grpc, bodies, requests, hist, events, throttled, errors, args) = (
            client.clone(),
            grpc.clone(),
            bodies.clone(),
            requests.clone(),
            hist.clone(),
            events.clone(),
            throttled.clone(),
            errors.clone(),
            args.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = c;
            while Instant::now() < end {
                let t0 = Instant::now();
                match send_one(&args, &client, grpc.as_ref(), &bodies, &requests, n).await {
                    Ok(true) => {
                        hist.lock().record(t0.elapsed().as_micros() as u64).ok();
                        events.fetch_add(args.batch as u64, Ordering::Relaxed);
                    }
                    Ok(false) => {
                        throttled.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{e}");
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
        "{{\"protocol\":\"{:?}\",\"events\":{ev},\"seconds\":{secs:.2},\"events_per_sec\":{:.0},\"avg_record_bytes\":{avg},\"batch\":{},\"concurrency\":{},\"ack_p50_ms\":{:.2},\"ack_p99_ms\":{:.2},\"ack_max_ms\":{:.2},\"throttled\":{},\"errors\":{}}}",
        args.protocol,
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
