//! Prometheus remote-write (`POST /api/v1/write`) end to end: hand-made requests land in
//! the `metrics` table exactly, malformed ones get a clear 4xx while the server keeps
//! serving, and a real Prometheus (Debian's `prometheus`, installed by
//! `scripts/setup.sh`) remote-writes what it scraped: the same series and values as its
//! own query API returns, also when Weir pushes back for a while.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::{json, Value};
use support::Server;

// The remote-write 1.0 messages (prompb/remote.proto, prompb/types.proto), to encode
// requests the way Prometheus does.
#[derive(Clone, PartialEq, Message)]
struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    metadata: Vec<MetricMetadata>,
}

#[derive(Clone, PartialEq, Message)]
struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    exemplars: Vec<Exemplar>,
    #[prost(message, repeated, tag = "4")]
    histograms: Vec<Histogram>,
}

#[derive(Clone, PartialEq, Message)]
struct Label {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(double, tag = "1")]
    value: f64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(double, tag = "2")]
    value: f64,
    #[prost(int64, tag = "3")]
    timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Histogram {
    #[prost(double, tag = "3")]
    sum: f64,
    #[prost(int64, tag = "15")]
    timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
struct MetricMetadata {
    #[prost(int32, tag = "1")]
    r#type: i32,
    #[prost(string, tag = "2")]
    metric_family_name: String,
    #[prost(string, tag = "4")]
    help: String,
    #[prost(string, tag = "5")]
    unit: String,
}

// The remote-write 2.0 messages (prompb/io/prometheus/write/v2/types.proto).
#[derive(Clone, PartialEq, Message)]
struct RequestV2 {
    #[prost(string, repeated, tag = "4")]
    symbols: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    timeseries: Vec<TimeSeriesV2>,
}

#[derive(Clone, PartialEq, Message)]
struct TimeSeriesV2 {
    #[prost(uint32, repeated, tag = "1")]
    labels_refs: Vec<u32>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    histograms: Vec<Histogram>,
    #[prost(message, optional, tag = "5")]
    metadata: Option<MetadataV2>,
    #[prost(int64, tag = "6")]
    created_timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
struct MetadataV2 {
    #[prost(int32, tag = "1")]
    r#type: i32,
    #[prost(uint32, tag = "3")]
    help_ref: u32,
    #[prost(uint32, tag = "4")]
    unit_ref: u32,
}

/// Request headers instead of Prometheus' own.
type Headers<'a> = &'a [(&'a str, &'a str)];
/// A malformed request: what it is, its body and headers, the status and words of the answer.
type Case<'a> = (&'a str, Vec<u8>, Option<Headers<'a>>, u16, &'a str);

const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;
const T0: i64 = 1_795_000_000_000;

const TENANTS: &str = r#"
[tenants.acme]
tokens = ["acme-token"]
[tenants.globex]
tokens = ["globex-token"]
"#;

fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
    TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| Label {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|&(value, timestamp)| Sample { value, timestamp })
            .collect(),
        ..Default::default()
    }
}

fn snappy(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(raw).unwrap()
}

/// Post a remote-write body with Prometheus' headers, or `headers` instead.
async fn post(
    s: &Server,
    token: &str,
    body: Vec<u8>,
    headers: Option<&[(&str, &str)]>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/v1/write", s.base))
        .bearer_auth(token)
        .body(body);
    let prometheus = [
        ("content-type", "application/x-protobuf"),
        ("content-encoding", "snappy"),
        ("x-prometheus-remote-write-version", "0.1.0"),
    ];
    for (k, v) in headers.unwrap_or(&prometheus) {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn write(s: &Server, token: &str, req: &WriteRequest) -> (u16, Value) {
    post(s, token, snappy(&req.encode_to_vec()), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_samples_land_in_metrics_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TENANTS);
    let mut hist = series(&[("__name__", "latency")], &[]);
    hist.histograms = vec![Histogram {
        sum: 3.0,
        timestamp: T0,
    }];
    hist.exemplars = vec![Exemplar {
        labels: vec![],
        value: 1.0,
        timestamp: T0,
    }];
    let req = WriteRequest {
        timeseries: vec![
            series(
                &[("__name__", "up"), ("job", "node"), ("instance", "h1:9100")],
                &[
                    (1.0, T0),
                    (0.0, T0 + 15_000),
                    (f64::from_bits(STALE_NAN), T0 + 30_000),
                ],
            ),
            series(
                &[
                    ("__name__", "http_requests_total"),
                    ("code", "200"),
                    ("path", "/a \"b\"\né"),
                ],
                &[(3.5, T0), (1e300, T0 + 1)],
            ),
            series(&[("job", "nameless")], &[(1.0, T0), (2.0, T0)]),
            series(&[("__name__", "m"), ("_private", "x")], &[(1.0, T0)]),
            series(&[("__name__", "bad name")], &[(1.0, T0)]),
            series(
                &[("__name__", "temp")],
                &[(f64::NAN, T0), (f64::NEG_INFINITY, T0), (-273.15, T0)],
            ),
            hist,
        ],
        metadata: vec![MetricMetadata {
            r#type: 1,
            metric_family_name: "http_requests".into(),
            help: "Requests.".into(),
            unit: String::new(),
        }],
    };
    let (st, v) = write(&s, "acme-token", &req).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["accepted"].as_u64(),
            v["rejected"].as_u64(),
            v["stale_markers_dropped"].as_u64(),
            v["histograms_skipped"].as_u64(),
            v["exemplars_skipped"].as_u64(),
            v["metadata"].as_u64(),
        ),
        (Some(5), Some(6), Some(1), Some(1), Some(1), Some(1)),
        "{v}"
    );
    let mut why: Vec<(u64, Option<u64>, String)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["series"].as_u64().unwrap(),
                e["sample"].as_u64(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    why.sort_by_key(|w| (w.0, w.1));
    let at: Vec<(u64, Option<u64>)> = why.iter().map(|w| (w.0, w.1)).collect();
    assert_eq!(
        at,
        vec![
            (2, None),
            (3, Some(0)),
            (4, Some(0)),
            (5, Some(0)),
            (5, Some(1))
        ],
        "{v}"
    );
    assert!(why[0].2.contains("no __name__"), "{why:?}");
    assert!(why[1].2.contains("\"_private\" is reserved"), "{why:?}");
    assert!(why[2].2.contains("must match"), "{why:?}");
    assert!(why[3].2.contains("NaN is not a finite number"), "{why:?}");

    s.wait_count("acme-token", "SELECT count(*) FROM metrics", 5)
        .await;
    let (st, rows) = s
        .query(
            "acme-token",
            "SELECT series, CAST(ts AS BIGINT) AS t, value, kind FROM metrics ORDER BY series, t",
        )
        .await;
    assert_eq!(st, 200, "{rows}");
    assert_eq!(
        rows["rows"],
        json!([
            [
                "http_requests_total{code=\"200\",path=\"/a \\\"b\\\"\\né\"}",
                T0,
                3.5,
                "counter"
            ],
            [
                "http_requests_total{code=\"200\",path=\"/a \\\"b\\\"\\né\"}",
                T0 + 1,
                1e300,
                "counter"
            ],
            ["temp{}", T0, -273.15, null],
            ["up{instance=\"h1:9100\",job=\"node\"}", T0, 1.0, null],
            [
                "up{instance=\"h1:9100\",job=\"node\"}",
                T0 + 15_000,
                0.0,
                null
            ],
        ]),
        "{rows}"
    );
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM metrics")
            .await,
        0
    );

    // Metadata alone: accepted, nothing appended.
    let meta_only = WriteRequest {
        timeseries: vec![],
        metadata: req.metadata.clone(),
    };
    let (st, v) = write(&s, "acme-token", &meta_only).await;
    assert_eq!(
        (st, v["accepted"].as_u64(), v["metadata"].as_u64()),
        (200, Some(0), Some(1)),
        "{v}"
    );
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM metrics").await,
        5
    );

    let m = s.metrics().await;
    assert_eq!(
        support::metric(&m, "weir_ingest_records_rejected_total{tenant=\"acme\"}"),
        6,
        "{m}"
    );
    for (what, n) in [("stale_marker", 1), ("histogram", 1), ("exemplar", 1)] {
        let series = format!("weir_remote_write_skipped_total{{tenant=\"acme\",what=\"{what}\"}}");
        assert_eq!(support::metric(&m, &series), n, "{series}\n{m}");
    }
    s.stop();
}

/// Post a 2.0 request as Prometheus 3 does: status, the three written counts, answer.
async fn write_v2(s: &Server, req: &RequestV2) -> (u16, [u64; 3], Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/write", s.base))
        .bearer_auth("acme-token")
        .header(
            "content-type",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        )
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "2.0.0")
        .body(snappy(&req.encode_to_vec()))
        .send()
        .await
        .unwrap();
    let written = ["samples", "histograms", "exemplars"].map(|w| {
        r.headers()
            .get(format!("x-prometheus-remote-write-{w}-written"))
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(u64::MAX)
    });
    let status = r.status().as_u16();
    (status, written, r.json().await.unwrap_or(Value::Null))
}

fn series_v2(refs: &[u32], samples: &[(f64, i64)], kind: i32) -> TimeSeriesV2 {
    TimeSeriesV2 {
        labels_refs: refs.to_vec(),
        samples: samples
            .iter()
            .map(|&(value, timestamp)| Sample { value, timestamp })
            .collect(),
        histograms: vec![],
        metadata: Some(MetadataV2 {
            r#type: kind,
            help_ref: 0,
            unit_ref: 0,
        }),
        created_timestamp: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_2_0_resolves_symbols_and_reports_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TENANTS);
    let symbols: Vec<String> = [
        "",
        "__name__",
        "up",
        "job",
        "node",
        "temp",
        "requests_total",
        "code",
        "200",
    ]
    .map(String::from)
    .to_vec();
    let stale = f64::from_bits(STALE_NAN);
    let req = RequestV2 {
        symbols: symbols.clone(),
        timeseries: vec![
            series_v2(&[1, 2, 3, 4], &[(1.0, T0), (stale, T0 + 1000)], 2),
            series_v2(&[1, 5], &[(-1.5, T0)], 2),
            series_v2(&[1, 6, 7, 8], &[(7.0, T0), (8.0, T0 + 1000)], 1),
        ],
    };
    let (st, written, v) = write_v2(&s, &req).await;
    assert_eq!((st, written), (204, [5, 0, 0]), "{v}");
    s.wait_count("acme-token", "SELECT count(*) FROM metrics", 4)
        .await;
    let (_, rows) = s
        .query(
            "acme-token",
            "SELECT series, CAST(ts AS BIGINT) AS t, value, kind FROM metrics ORDER BY series, t",
        )
        .await;
    assert_eq!(
        rows["rows"],
        json!([
            ["requests_total{code=\"200\"}", T0, 7.0, "counter"],
            ["requests_total{code=\"200\"}", T0 + 1000, 8.0, "counter"],
            ["temp{}", T0, -1.5, "gauge"],
            ["up{job=\"node\"}", T0, 1.0, "gauge"],
        ]),
        "{rows}"
    );

    // A partial write: the good sample is stored, the answer is 400 with the reasons.
    let mut hist = series_v2(&[1, 5], &[], 2);
    hist.histograms = vec![Histogram {
        sum: 1.0,
        timestamp: T0,
    }];
    let partial = RequestV2 {
        symbols: symbols.clone(),
        timeseries: vec![
            series_v2(&[3, 4], &[(1.0, T0)], 0),
            series_v2(&[1, 5], &[(2.5, T0 + 5000)], 2),
            hist,
        ],
    };
    let (st, written, v) = write_v2(&s, &partial).await;
    assert_eq!((st, written), (400, [1, 0, 0]), "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("1 samples refused and 1 native histograms"),
        "{v}"
    );
    assert!(
        v["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("no __name__"),
        "{v}"
    );
    s.wait_count("acme-token", "SELECT count(*) FROM metrics", 5)
        .await;

    // References outside the symbols, or an odd number of them: the body is invalid.
    for (refs, says) in [
        (&[1u32, 99][..], "outside the 9 symbols"),
        (&[1, 2, 3][..], "odd number"),
    ] {
        let bad = RequestV2 {
            symbols: symbols.clone(),
            timeseries: vec![series_v2(refs, &[(1.0, T0)], 2)],
        };
        let (st, _, v) = write_v2(&s, &bad).await;
        assert_eq!(st, 400, "{v}");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(says),
            "{v}"
        );
    }
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM metrics").await,
        5
    );
    s.stop();
}

/// A tiny xorshift generator: the same "random" bodies on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_remote_write_gets_a_clear_4xx_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &format!("{TENANTS}\n[ingest]\nmax_decoded_bytes = 1048576\n"),
    );
    let good = WriteRequest {
        timeseries: vec![series(
            &[("__name__", "ok"), ("host", "h1")],
            &[(1.0, T0), (2.0, T0 + 1000)],
        )],
        metadata: vec![],
    }
    .encode_to_vec();
    let mut bad_utf8 = good.clone();
    let at = bad_utf8.windows(2).position(|w| w == b"h1").unwrap();
    bad_utf8[at] = 0xc3;
    bad_utf8[at + 1] = 0x28;
    let deep: Vec<u8> = std::iter::repeat_n(0x2bu8, 5000)
        .chain(std::iter::repeat_n(0x2c, 5000))
        .collect();
    let protobuf_only = [("content-type", "application/x-protobuf")];
    let cases: Vec<Case> = vec![
        (
            "truncated protobuf",
            snappy(&good[..good.len() - 3]),
            None,
            400,
            "invalid protobuf",
        ),
        (
            "bad snappy",
            b"this is not snappy at all".to_vec(),
            None,
            400,
            "snappy",
        ),
        // A header declaring 4 GiB - 1 decompressed, then nothing.
        (
            "huge declared length",
            vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x00],
            None,
            413,
            "declares 4294967295 bytes",
        ),
        // Within snappy's range, over max_decoded_bytes.
        (
            "over max_decoded_bytes",
            vec![0x80, 0x80, 0x80, 0x01, 0x00],
            None,
            413,
            "max_decoded_bytes",
        ),
        (
            "a varint that never ends",
            vec![0x80; 12],
            None,
            400,
            "snappy",
        ),
        ("empty body", vec![], None, 400, "snappy"),
        (
            "invalid UTF-8 in a label",
            snappy(&bad_utf8),
            None,
            400,
            "UTF-8",
        ),
        ("deep nesting", snappy(&deep), None, 400, "invalid protobuf"),
        (
            "a huge length inside",
            snappy(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x07]),
            None,
            400,
            "past the end",
        ),
        (
            "gzip",
            snappy(&good),
            Some(&[("content-encoding", "gzip")]),
            415,
            "snappy-compressed",
        ),
        (
            "json",
            snappy(&good),
            Some(&[("content-type", "application/json")]),
            415,
            "protobuf",
        ),
        (
            "an unknown message",
            snappy(&good),
            Some(&[("content-type", "application/x-protobuf;proto=foo.Bar")]),
            415,
            "unknown remote-write message",
        ),
        (
            "raw protobuf",
            good.clone(),
            Some(&protobuf_only),
            400,
            "snappy",
        ),
    ];
    for (what, body, headers, want, says) in cases {
        let (st, v) = post(&s, "acme-token", body, headers).await;
        assert_eq!(st, want, "{what}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{what}: {v}");
    }
    let (st, _) = post(&s, "nope", snappy(&good), None).await;
    assert_eq!(st, 401);

    // Random and mutated bodies: a 2xx or a 4xx every time, never a 5xx or a hang.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut statuses = BTreeMap::new();
    for i in 0..300 {
        let raw = if i % 3 == 0 {
            (0..rng.next() % 200).map(|_| rng.next() as u8).collect()
        } else {
            let mut b = good.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % b.len();
                b[at] = rng.next() as u8;
            }
            b.truncate(1 + (rng.next() as usize) % b.len());
            b
        };
        let body = if i % 2 == 0 { snappy(&raw) } else { raw };
        let (st, v) = post(&s, "acme-token", body, None).await;
        assert!(st == 200 || (400..500).contains(&st), "body {i}: {st} {v}");
        *statuses.entry(st).or_insert(0) += 1;
    }
    assert!(statuses.len() > 1, "{statuses:?}");

    // Still serving, and a good request after all that is stored.
    let (st, v) = post(&s, "globex-token", snappy(&good), None).await;
    assert_eq!((st, v["accepted"].as_u64()), (200, Some(2)), "{v}");
    s.wait_count("globex-token", "SELECT count(*) FROM metrics", 2)
        .await;
    s.stop();
}

/// Debian's `prometheus` (scripts/setup.sh installs it).
fn prometheus_bin() -> String {
    let bin = std::env::var("WEIR_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{bin} not found: run scripts/setup.sh (it installs Debian's prometheus)"
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The exporter Prometheus scrapes: fixed values, a counter that grows by 3 a scrape,
/// a series that vanishes after 3 scrapes (Prometheus then writes a staleness marker)
/// and label values that need escaping.
const EXPORTER: &str = r#"
import http.server, sys
scrapes = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global scrapes
        scrapes += 1
        lines = [
            '# TYPE rw_fixed gauge',
            'rw_fixed{kind="a"} 1.5',
            'rw_fixed{kind="b"} -2e-3',
            '# TYPE rw_requests_total counter',
            'rw_requests_total{code="200"} %d' % (3 * scrapes),
            '# TYPE rw_odd gauge',
            'rw_odd{path="/a b\\"c\\\\d",word="\u00e9t\u00e9"} 0.1',
        ]
        if scrapes <= 3:
            lines += ['# TYPE rw_vanishing gauge', 'rw_vanishing 7']
        body = ('\n'.join(lines) + '\n').encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain; version=0.0.4')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

fn start_exporter() -> (Proc, u16) {
    let tools = std::env::var("WEIR_TOOLS").unwrap_or_else(|_| "/var/tmp/weir-tools".into());
    let mut child = Command::new(format!("{tools}/venv/bin/python"))
        .args(["-c", EXPORTER])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("exporter: {line:?}"));
    (Proc(child), port)
}

struct Prometheus {
    _proc: Proc,
    url: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    /// Scrape `127.0.0.1:exporter` every second and remote-write to `weir` as `token`.
    async fn start(dir: &Path, exporter: u16, weir: &str, token: &str) -> Prometheus {
        let bin = prometheus_bin();
        let port = free_port();
        let config = format!(
            r#"
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: exporter
    static_configs:
      - targets: ['127.0.0.1:{exporter}']
remote_write:
  - url: {weir}/api/v1/write
    authorization:
      credentials: {token}
    queue_config:
      batch_send_deadline: 500ms
      max_samples_per_send: 20
      min_backoff: 50ms
      max_backoff: 1s
    metadata_config:
      send: true
      send_interval: 2s
"#
        );
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus {
            _proc: Proc(child),
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/-/ready", p.url)).await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not start:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query`: the `data.result` of an instant query at `time_s`.
    async fn query(&self, q: &str, time_s: f64) -> Vec<Value> {
        let r: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q), ("time", &format!("{time_s:.3}"))])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "success", "{q}: {r}");
        r["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every raw sample Prometheus holds for the job in the 10 minutes up to `t_ms`,
    /// by series key (`name{k="v",...}`, the `series` column's spelling).
    async fn samples(&self, t_ms: i64) -> BTreeMap<String, Vec<(i64, f64)>> {
        let mut out = BTreeMap::new();
        for s in self
            .query("{job=\"exporter\"}[10m]", t_ms as f64 / 1000.0)
            .await
        {
            let mut labels = BTreeMap::new();
            let mut name = String::new();
            for (k, v) in s["metric"].as_object().unwrap() {
                let v = v.as_str().unwrap().to_owned();
                if k == "__name__" {
                    name = v;
                } else {
                    labels.insert(k.clone(), v);
                }
            }
            let values = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let ts = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
                    (ts, p[1].as_str().unwrap().parse::<f64>().unwrap())
                })
                .collect();
            out.insert(series_key(&name, &labels), values);
        }
        out
    }

    /// A metric of Prometheus' own `/metrics`, summed over its series.
    async fn own(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The exporter's counter as Prometheus last scraped it (0 before any scrape).
    async fn scraped(&self) -> f64 {
        let t = now_ms() as f64 / 1000.0;
        self.query("sum(rw_requests_total)", t)
            .await
            .first()
            .and_then(|r| r["value"][1].as_str().map(|v| v.parse().unwrap()))
            .unwrap_or(0.0)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Prometheus' spelling of a series, as Weir's `series` column has it.
fn series_key(name: &str, labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// What Weir holds for the job in the 10 minutes up to `t_ms`, and whether any
/// (series, ts) is there twice.
async fn weir_samples(
    s: &Server,
    token: &str,
    t_ms: i64,
) -> (BTreeMap<String, Vec<(i64, f64)>>, bool) {
    let sql = format!(
        "SELECT series, CAST(ts AS BIGINT) AS t, value FROM metrics \
         WHERE json_get_str(labels, 'job') = 'exporter' \
         AND CAST(ts AS BIGINT) > {} AND CAST(ts AS BIGINT) <= {t_ms} ORDER BY series, t",
        t_ms - 600_000
    );
    let (st, v) = s.query(token, &sql).await;
    assert_eq!(st, 200, "{v}");
    let mut out: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    let mut dup = false;
    for r in v["rows"].as_array().unwrap() {
        let e = out.entry(r[0].as_str().unwrap().to_owned()).or_default();
        let ts = r[1].as_i64().unwrap();
        dup |= e.last().is_some_and(|l| l.0 == ts);
        e.push((ts, r[2].as_f64().unwrap()));
    }
    (out, dup)
}

/// Poll until Weir holds exactly what Prometheus holds up to `t_ms` (asked again each
/// time, so a scrape still being appended at `t_ms` is no race); panics with the
/// difference after `wait`. The number of samples compared.
async fn assert_same(p: &Prometheus, s: &Server, token: &str, t_ms: i64, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    loop {
        let want = p.samples(t_ms).await;
        let n: usize = want.values().map(Vec::len).sum();
        assert!(
            want.len() >= 5 && n > 10,
            "prometheus has too little: {want:?}"
        );
        let (got, dup) = weir_samples(s, token, t_ms).await;
        assert!(!dup, "a sample is in Weir twice: {got:?}");
        if got == want {
            return n;
        }
        if Instant::now() > deadline {
            let differ: Vec<_> = want
                .keys()
                .chain(got.keys())
                .filter(|k| got.get(*k) != want.get(*k))
                .collect();
            panic!(
                "Weir's samples differ from Prometheus' at {t_ms} in {differ:?}\nprometheus: {want:?}\nweir: {got:?}\n{}\n{}",
                p.log(),
                s.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A moment every scrape before it has finished by now (scrapes take at most the 1 s
/// interval).
fn settled_ms() -> i64 {
    now_ms() - 1500
}

/// Wait until the exporter's counter has been scraped `n` times.
async fn wait_scrapes(p: &Prometheus, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.scraped().await < 3.0 * n {
        assert!(
            Instant::now() < deadline,
            "prometheus does not scrape:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_writes_exactly_what_it_scraped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TENANTS);
    let (exporter, port) = start_exporter();
    let p = Prometheus::start(dir.path(), port, &s.base, "acme-token").await;
    wait_scrapes(&p, 6.0).await;
    // The series that vanished after 3 scrapes got its staleness marker by now.
    let t = settled_ms();
    let n = assert_same(&p, &s, "acme-token", t, Duration::from_secs(30)).await;
    assert!(
        s.counter("weir_remote_write_skipped_total{tenant=\"acme\",what=\"stale_marker\"}")
            .await
            >= 1
    );
    // Exactly the series the exporter served, and Prometheus' own per-scrape ones.
    let (got, _) = weir_samples(&s, "acme-token", t).await;
    for k in [
        "rw_fixed{instance=\"127.0.0.1:PORT\",job=\"exporter\",kind=\"a\"}",
        "rw_vanishing{instance=\"127.0.0.1:PORT\",job=\"exporter\"}",
        "rw_odd{instance=\"127.0.0.1:PORT\",job=\"exporter\",path=\"/a b\\\"c\\\\d\",word=\"été\"}",
        "up{instance=\"127.0.0.1:PORT\",job=\"exporter\"}",
    ] {
        let k = k.replace("PORT", &port.to_string());
        assert!(got.contains_key(&k), "{k} missing: {:?}", got.keys());
    }
    assert_eq!(
        got[&format!("rw_vanishing{{instance=\"127.0.0.1:{port}\",job=\"exporter\"}}")].len(),
        3
    );
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM metrics")
            .await,
        0
    );
    // Prometheus' metadata-only requests were taken, and nothing of its was lost.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.own("prometheus_remote_storage_metadata_total").await == 0.0 {
        assert!(Instant::now() < deadline, "no metadata sent:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for failed in [
        "prometheus_remote_storage_metadata_failed_total",
        "prometheus_remote_storage_samples_failed_total",
        "prometheus_remote_storage_samples_dropped_total",
    ] {
        assert_eq!(p.own(failed).await, 0.0, "{failed}");
    }
    eprintln!(
        "{n} samples of {} series identical in Prometheus and Weir",
        got.len()
    );
    drop(exporter);
    s.stop();
}

fn stall_config(dir: &Path) -> String {
    let wasm = support::hostile_wasm(dir);
    format!(
        r#"{TENANTS}
[tenants.acme.streams.stall]
plugins = [{{ plugin = "file:{}", config = {{ mode = "loop" }} }}]
[tenants.acme.limits]
deadline_ms = 1500
[log]
partitions = 1
max_lag_bytes = 2000
"#,
        wasm.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_retries_through_backpressure_and_nothing_is_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &stall_config(dir.path()));
    let (_exporter, port) = start_exporter();
    let p = Prometheus::start(dir.path(), port, &s.base, "acme-token").await;
    wait_scrapes(&p, 2.0).await;
    // Each batch on `stall` holds the one partition's worker for the plugin deadline:
    // the log's backlog grows past max_lag_bytes and remote-write is refused (503).
    // (The log's own 429 may already refuse the last of them.)
    let mut stalled = 0;
    for _ in 0..3 {
        let (st, v) = s
            .ingest(
                "acme-token",
                "stall",
                format!("{{\"pad\":\"{}\"}}", "x".repeat(700)),
            )
            .await;
        assert!(st == 200 || st == 429, "{st}: {v}");
        stalled += usize::from(st == 200);
    }
    assert!(stalled > 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .counter("weir_http_requests_total{route=\"write\",status=\"503\"}")
        .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "no 503 under backpressure:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once the stall ends Prometheus' retries go through: everything it scraped up to
    // now is in Weir, once.
    wait_scrapes(&p, 9.0).await;
    let t = settled_ms();
    let n = assert_same(&p, &s, "acme-token", t, Duration::from_secs(30)).await;
    let retried = p
        .own("prometheus_remote_storage_samples_retried_total")
        .await;
    let failed = p
        .own("prometheus_remote_storage_samples_failed_total")
        .await;
    assert!(retried > 0.0, "prometheus retried nothing");
    assert_eq!(failed, 0.0, "prometheus dropped samples");
    let refused = s
        .counter("weir_http_requests_total{route=\"write\",status=\"503\"}")
        .await;
    eprintln!("{refused} requests answered 503, {retried} samples retried by Prometheus, {n} samples identical");
    let (st, v) = s
        .query(
            "acme-token",
            "SELECT count(*), count(DISTINCT concat(series, '@', CAST(CAST(ts AS BIGINT) AS VARCHAR))) FROM metrics",
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["rows"][0][0], v["rows"][0][1], "duplicates: {v}");
    s.stop();
}

/// The measurement behind docs/BENCHMARKS.md (remote-write): the same samples sent as
/// remote-write requests and as `/api/v1/metrics` NDJSON, alternately, in one run.
/// `cargo nextest run --workspace --run-ignored only -E 'test(remote_write_throughput)' --no-capture`
/// (`RW_BENCH_REQUESTS`, default 120 per round and protocol; `WEIR_BIN` runs another
/// build of the server, e.g. a release one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it on purpose"]
async fn remote_write_throughput_vs_ndjson() {
    const PER_REQUEST: usize = 1000;
    const CONCURRENCY: usize = 4;
    let requests: usize = std::env::var("RW_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TENANTS);
    // Prometheus-like batches: one sample per series, 7 labels, 2,000 series in turn.
    let batch = |r: usize| -> Vec<TimeSeries> {
        (0..PER_REQUEST)
            .map(|i| {
                let n = r * PER_REQUEST + i;
                let instance = format!("10.0.{}.{}:9100", n % 7, n % 13);
                let handler = format!("/api/v{}/items", n % 5);
                let le = format!("{}", (n % 10) as f64 * 0.25);
                let t = T0 + (n / 2000) as i64 * 1000 + (n % 2000) as i64;
                series(
                    &[
                        ("__name__", "http_request_duration_seconds_bucket"),
                        ("job", "api"),
                        ("instance", &instance),
                        ("method", ["GET", "POST"][n % 2]),
                        ("code", ["200", "404", "500", "503"][n % 4]),
                        ("handler", &handler),
                        ("le", &le),
                    ],
                    &[(n as f64 * 0.5, t)],
                )
            })
            .collect()
    };
    let rw_body = |r: usize| {
        let req = WriteRequest {
            timeseries: batch(r),
            metadata: vec![],
        };
        snappy(&req.encode_to_vec())
    };
    let ndjson_body = |r: usize| {
        let mut out = String::new();
        for ts in batch(r) {
            let labels: serde_json::Map<String, Value> = ts.labels[1..]
                .iter()
                .map(|l| (l.name.clone(), json!(l.value)))
                .collect();
            let (name, s) = (&ts.labels[0].value, &ts.samples[0]);
            out.push_str(
                &json!({"name": name, "value": s.value, "ts": s.timestamp, "labels": labels})
                    .to_string(),
            );
            out.push('\n');
        }
        out.into_bytes()
    };
    let client = reqwest::Client::new();
    let run = |path: &'static str, bodies: Vec<Vec<u8>>| {
        let client = client.clone();
        let url = format!("{}{path}", s.base);
        async move {
            let bytes: usize = bodies.iter().map(Vec::len).sum();
            let bodies = std::sync::Arc::new(std::sync::Mutex::new(bodies));
            let start = Instant::now();
            let tasks: Vec<_> = (0..CONCURRENCY)
                .map(|_| {
                    let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
                    tokio::spawn(async move {
                        let mut accepted = 0u64;
                        loop {
                            let Some(body) = bodies.lock().unwrap().pop() else {
                                return accepted;
                            };
                            let mut req = client.post(&url).bearer_auth("acme-token").body(body);
                            if url.ends_with("/write") {
                                req = req
                                    .header("content-type", "application/x-protobuf")
                                    .header("content-encoding", "snappy");
                            }
                            let r = req.send().await.unwrap();
                            assert_eq!(r.status(), 200);
                            let v: Value = r.json().await.unwrap();
                            accepted += v["accepted"].as_u64().unwrap();
                        }
                    })
                })
                .collect();
            let mut accepted = 0;
            for t in tasks {
                accepted += t.await.unwrap();
            }
            (accepted, start.elapsed(), bytes)
        }
    };
    // The server's CPU time (user + system), from /proc: less noisy than wall time on
    // a shared machine.
    let pid = s.child.id();
    let cpu = move || -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0 // USER_HZ, 100 on Linux
    };
    let mut total = 0;
    let mut rows = Vec::new();
    for round in 0..3 {
        for (proto, path) in [
            ("remote-write", "/api/v1/write"),
            ("NDJSON", "/api/v1/metrics"),
        ] {
            let base = (round * 2 + usize::from(path.ends_with("metrics"))) * requests;
            let bodies: Vec<Vec<u8>> = (base..base + requests)
                .map(|r| {
                    if path.ends_with("write") {
                        rw_body(r)
                    } else {
                        ndjson_body(r)
                    }
                })
                .collect();
            let cpu0 = cpu();
            let (accepted, took, bytes) = run(path, bodies).await;
            let cpu_ack = cpu() - cpu0;
            assert_eq!(accepted as usize, requests * PER_REQUEST);
            total += accepted;
            // Every sample queryable before the next phase, so each phase's processing
            // is counted in its own CPU time.
            s.wait_count("acme-token", "SELECT count(*) FROM metrics", total as i64)
                .await;
            let cpu_all = cpu() - cpu0;
            let n = accepted as f64;
            rows.push(format!(
                "| {round} | {proto} | {accepted} | {:.0} samples/s | {:.2} µs | {:.2} µs | {:.1} B |",
                n / took.as_secs_f64(),
                cpu_ack * 1e6 / n,
                cpu_all * 1e6 / n,
                bytes as f64 / n
            ));
        }
    }
    eprintln!("| round | protocol | samples | acknowledged (wall) | server CPU per sample to ack | … to queryable | wire bytes per sample |\n|---|---|---|---|---|---|---|");
    for r in rows {
        eprintln!("{r}");
    }
    s.stop();
}
