//! OTLP ingest end to end: the OpenTelemetry Python SDK (installed by
//! `scripts/setup.sh`) exports logs and metrics over gRPC and HTTP to a running
//! `weir serve`; SQL shows every record and the exact values. Malformed bodies get
//! clear answers and leave the server serving; backpressure is retried by the SDK.

mod support;

use serde_json::Value;
use support::Server;

const TENANTS: &str = r#"
[tenants.ta]
tokens = ["ta"]
[tenants.tb]
tokens = ["tb"]
"#;

/// The SDK program: logs (inside a span, so they carry trace context) and metrics
/// (counter, gauge, histogram) through the exporter named by argv[1] ("grpc" or "http").
const SDK: &str = r#"
import logging, sys
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider

proto, endpoint, token, service, batch = sys.argv[1:6]
headers = {"authorization": "Bearer " + token}
if proto == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    logs = OTLPLogExporter(endpoint=endpoint, insecure=True, headers=headers)
    metrics = OTLPMetricExporter(endpoint=endpoint, insecure=True, headers=headers)
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    logs = OTLPLogExporter(endpoint=endpoint + "/v1/logs", headers=headers)
    metrics = OTLPMetricExporter(endpoint=endpoint + "/v1/metrics", headers=headers)

resource = Resource.create({"service.name": service})
lp = LoggerProvider(resource=resource)
lp.add_log_record_processor(BatchLogRecordProcessor(logs, max_export_batch_size=int(batch)))
log = logging.getLogger(service)
log.propagate = False
log.setLevel(logging.INFO)
log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=lp))
tracer = TracerProvider(resource=resource).get_tracer("t")
with tracer.start_as_current_span("checkout") as span:
    ctx = span.get_span_context()
    for i in range(50):
        log.warning("order %d placed", i, extra={"order.id": i})
print("trace", format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))

reader = PeriodicExportingMetricReader(metrics, export_interval_millis=3600000)
mp = MeterProvider(resource=resource, metric_readers=[reader])
meter = mp.get_meter("shop")
orders = meter.create_counter("orders")
for i in range(1, 11):
    orders.add(i, {"region": "eu"})
meter.create_gauge("queue.depth").set(7.5, {"region": "eu"})
lat = meter.create_histogram("latency", unit="ms")
for v in (1, 5, 50, 500):
    lat.record(v, {"route": "/pay"})
lp.force_flush()
lp.shutdown()
mp.shutdown()  # collects and exports once (force_flush too would export a second point)
print("done")
"#;

fn run_sdk(proto: &str, endpoint: &str, token: &str, service: &str) -> (String, String) {
    run_sdk_batched(proto, endpoint, token, service, 512)
}

/// [`run_sdk`] with log exports of at most `batch` records.
fn run_sdk_batched(
    proto: &str,
    endpoint: &str,
    token: &str,
    service: &str,
    batch: usize,
) -> (String, String) {
    let batch = batch.to_string();
    let out = support::python(
        SDK,
        &[proto, endpoint, token, service, batch.as_str()].map(std::ffi::OsStr::new),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains("done"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().find(|l| l.starts_with("trace ")).unwrap();
    let mut parts = line.split(' ').skip(1);
    (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    )
}

async fn rows(s: &Server, token: &str, sql: &str) -> Vec<Value> {
    let (st, v) = s.query(token, sql).await;
    assert_eq!(st, 200, "{sql}: {v}");
    v["rows"].as_array().unwrap().clone()
}

async fn check_export(s: &Server, service: &str, trace: &str, span: &str) {
    let logs = format!("SELECT count(*) FROM logs WHERE stream = '{service}'");
    s.wait_count("ta", &logs, 50).await;
    let r = rows(
        s,
        "ta",
        &format!(
            "SELECT count(*), count(DISTINCT message), sum(json_get_int(record, 'attributes', 'order.id')), \
             min(level), min(trace_id), min(json_get_str(record, 'span_id')), \
             min(json_get_str(record, 'resource', 'service.name')), min(json_get_int(record, 'severity_number')) \
             FROM logs WHERE stream = '{service}' AND message LIKE 'order % placed'"
        ),
    )
    .await;
    assert_eq!(
        r[0],
        serde_json::json!([50, 50, 1225, "WARN", trace, span, service, 13]),
        "{service}"
    );
    // Timestamps are the SDK's own, within the last minutes.
    let fresh = s
        .count(
            "ta",
            &format!("SELECT count(*) FROM logs WHERE stream = '{service}' AND ts > now() - INTERVAL '10 minutes'"),
        )
        .await;
    assert_eq!(fresh, 50);

    let sel = |series: &str| format!("SELECT value, kind FROM metrics WHERE series = '{series}'");
    // The SDK gives its resource a `service.instance.id` (a UUID): a label too.
    let id = rows(
        s,
        "ta",
        &format!("SELECT min(json_get_str(labels, 'service_instance_id')) FROM metrics WHERE json_get_str(labels, 'service_name') = '{service}'"),
    )
    .await[0][0]
        .as_str()
        .unwrap()
        .to_owned();
    let svc = format!("service_instance_id=\"{id}\",service_name=\"{service}\"");
    let lab = format!("region=\"eu\",{svc}");
    let metric = |name: &str, labels: &str| format!("{name}{{{labels}}}");
    s.wait_count(
        "ta",
        &format!(
            "SELECT count(*) FROM metrics WHERE json_get_str(labels, 'service_name') = '{service}'"
        ),
        // orders, queue.depth; latency: 16 buckets (15 default bounds + Inf), count, sum, min, max
        2 + 16 + 4,
    )
    .await;
    assert_eq!(
        rows(s, "ta", &sel(&metric("orders", &lab))).await,
        vec![serde_json::json!([55.0, "counter"])]
    );
    assert_eq!(
        rows(s, "ta", &sel(&metric("queue.depth", &lab))).await,
        vec![serde_json::json!([7.5, "gauge"])]
    );
    let h = format!("route=\"/pay\",{svc}");
    for (name, labels, want) in [
        ("latency_count", h.clone(), 4.0),
        ("latency_sum", h.clone(), 556.0),
        ("latency_min", h.clone(), 1.0),
        ("latency_max", h.clone(), 500.0),
        ("latency_bucket", format!("le=\"5\",{h}"), 2.0),
        ("latency_bucket", format!("le=\"50\",{h}"), 3.0),
        ("latency_bucket", format!("le=\"+Inf\",{h}"), 4.0),
    ] {
        let got = rows(s, "ta", &sel(&metric(name, &labels))).await;
        assert_eq!(
            got,
            vec![serde_json::json!([want, "histogram"])],
            "{name}{{{labels}}}"
        );
    }
}

#[tokio::test]
async fn the_opentelemetry_python_sdk_exports_logs_and_metrics_over_grpc_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TENANTS);
    let grpc = s.grpc.replace("grpc://", "http://");
    let (trace, span) = run_sdk("grpc", &grpc, "ta", "shop-grpc");
    check_export(&s, "shop-grpc", &trace, &span).await;
    let (trace, span) = run_sdk("http", &s.base, "ta", "shop-http");
    check_export(&s, "shop-http", &trace, &span).await;
    // The other tenant sees none of it.
    assert_eq!(s.count("tb", "SELECT count(*) FROM logs").await, 0);
    assert_eq!(s.count("tb", "SELECT count(*) FROM metrics").await, 0);
    // A wrong token is refused on both transports (the SDK logs the failure).
    for (proto, endpoint) in [("grpc", grpc.as_str()), ("http", s.base.as_str())] {
        support::python(
            SDK,
            &[proto, endpoint, "nope", "intruder", "512"].map(std::ffi::OsStr::new),
        );
    }
    let m = s.metrics().await;
    assert!(
        support::metric(&m, "weir_http_refused_total{reason=\"unauthorized\"}") >= 4,
        "{m}"
    );
    assert_eq!(
        s.count("ta", "SELECT count(*) FROM logs WHERE stream = 'intruder'")
            .await,
        0
    );
    s.stop();
}

async fn post(
    s: &Server,
    path: &str,
    ct: &str,
    enc: Option<&str>,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut r = reqwest::Client::new()
        .post(format!("{}{path}", s.base))
        .bearer_auth("ta")
        .header("content-type", ct)
        .body(body);
    if let Some(e) = enc {
        r = r.header("content-encoding", e);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn otlp_json_gzip_partial_success_and_malformed_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TENANTS);
    // OTLP/JSON, gzip: one good record, one whose time is out of range (refused alone).
    let json = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
      "scopeLogs":[{"scope":{"name":"s"},"logRecords":[
        {"timeUnixNano":"1764432000123456789","severityText":"INFO","body":{"stringValue":"ok"},
         "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
         "attributes":[{"key":"big","value":{"intValue":"9007199254740993"}}]},
        {"timeUnixNano":"18446744073709551615","body":{"kvlistValue":{"values":[{"key":"k","value":{"boolValue":true}}]}}}
      ]}]}]}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, json).unwrap();
    let (st, body) = post(
        &s,
        "/v1/logs",
        "application/json",
        Some("gzip"),
        gz.finish().unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["partialSuccess"]["rejectedLogRecords"], 1, "{v}");
    assert!(
        v["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("ts"),
        "{v}"
    );
    s.wait_count("ta", "SELECT count(*) FROM logs WHERE stream = 'api'", 1)
        .await;
    let r = rows(
        &s,
        "ta",
        "SELECT ts, message, trace_id, json_get_str(record, 'attributes', 'big') IS NULL, \
         json_get_int(record, 'attributes', 'big') FROM logs WHERE stream = 'api'",
    )
    .await;
    assert_eq!(r[0][1], "ok");
    assert_eq!(r[0][2], "5b8efff798038103d269b633813fc60c");
    assert_eq!(
        r[0][4], 9007199254740993i64,
        "64-bit integers are exact: {r:?}"
    );

    // The stream header wins over service.name; a bad one is 400.
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/logs", s.base))
        .bearer_auth("ta")
        .header("content-type", "application/json")
        .header("x-weir-stream", "chosen")
        .body(json.to_vec());
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.wait_count("ta", "SELECT count(*) FROM logs WHERE stream = 'chosen'", 1)
        .await;
    req = reqwest::Client::new()
        .post(format!("{}/v1/logs", s.base))
        .bearer_auth("ta")
        .header("content-type", "application/json")
        .header("x-weir-stream", "_metrics")
        .body(json.to_vec());
    assert_eq!(req.send().await.unwrap().status(), 400);

    // Malformed bodies: clear 4xx, and the server keeps serving.
    for (path, ct, enc, body, want) in [
        (
            "/v1/logs",
            "application/x-protobuf",
            None,
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            400,
        ),
        (
            "/v1/metrics",
            "application/x-protobuf",
            None,
            vec![0x0a, 0x05, 0x0a],
            400,
        ),
        (
            "/v1/logs",
            "application/json",
            None,
            b"{\"resourceLogs\":[".to_vec(),
            400,
        ),
        (
            "/v1/logs",
            "application/json",
            None,
            b"[".repeat(100_000),
            400,
        ),
        (
            "/v1/logs",
            "application/json",
            None,
            b"{\"resourceLogs\":[{\"resource\":{\"attributes\":[{\"key\":\"\xff\"}]}}]}".to_vec(),
            400,
        ),
        (
            "/v1/logs",
            "application/x-protobuf",
            Some("gzip"),
            b"not gzip".to_vec(),
            400,
        ),
        ("/v1/logs", "text/plain", None, b"hello".to_vec(), 415),
    ] {
        let (st, b) = post(&s, path, ct, enc, body).await;
        assert_eq!(st, want, "{path} {ct}: {}", String::from_utf8_lossy(&b));
    }
    // Protobuf errors answer a google.rpc.Status (field 2: the message).
    let (st, b) = post(
        &s,
        "/v1/logs",
        "application/x-protobuf",
        None,
        vec![0x0a, 0xff],
    )
    .await;
    assert_eq!(st, 400);
    assert!(String::from_utf8_lossy(&b).contains("protobuf"), "{b:?}");
    assert_eq!(
        s.count("ta", "SELECT count(*) FROM logs WHERE stream = 'api'")
            .await,
        1
    );
    s.stop();
}

#[tokio::test]
async fn under_backpressure_the_sdk_retries_and_everything_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    // One partition whose log streams pass a plugin that holds each batch 300 ms, and a
    // lag bound smaller than one export: every export after the first is refused
    // (429 / RESOURCE_EXHAUSTED) until the worker has caught up.
    let wasm = support::hostile_wasm(dir.path());
    let slow = format!(
        "plugins = [{{ plugin = \"file:{}\", config = {{ mode = \"slow\", pause_ms = 300 }} }}]",
        wasm.display()
    );
    let s = Server::start(
        dir.path(),
        &format!(
            "{TENANTS}\n[tenants.ta.streams.shop-grpc]\n{slow}\n[tenants.ta.streams.shop-http]\n{slow}\n\
             [log]\npartitions = 1\nmax_lag_bytes = 2000\n"
        ),
    );
    let grpc = s.grpc.replace("grpc://", "http://");
    let (trace, span) = run_sdk_batched("grpc", &grpc, "ta", "shop-grpc", 5);
    check_export(&s, "shop-grpc", &trace, &span).await;
    let refused = |m: &str, route: &str| {
        support::metric(
            m,
            &format!("weir_http_requests_total{{route=\"{route}\",status=\"429\"}}"),
        )
    };
    let m = s.metrics().await;
    assert!(
        refused(&m, "otlp_grpc_logs") + refused(&m, "otlp_grpc_metrics") > 0,
        "{m}"
    );
    let (trace, span) = run_sdk_batched("http", &s.base, "ta", "shop-http", 5);
    check_export(&s, "shop-http", &trace, &span).await;
    let m = s.metrics().await;
    assert!(
        refused(&m, "otlp_logs") + refused(&m, "otlp_metrics") > 0,
        "{m}"
    );
    s.stop();
}
