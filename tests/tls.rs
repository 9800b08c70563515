//! TLS on the HTTP data plane and on TCP ingest listeners: real TLS clients (Python's
//! `ssl`, verifying a certificate made by `openssl` for the test) ingest and query;
//! plain clients and bad setups are refused.

mod support;

use std::path::Path;
use std::process::Command;

use support::Server;

/// A test CA and a server certificate for 127.0.0.1 it signed, written to `dir`:
/// (CA certificate, server certificate, server key). (rustls, unlike OpenSSL, refuses a
/// self-signed CA certificate used as the server's own.)
fn certificate(dir: &Path) -> (String, String) {
    let p = |n: &str| dir.join(n).display().to_string();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=weir-test-ca",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("key.pem"),
        "-out",
        &p("leaf.csr"),
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("leaf.ext"),
        "-out",
        &p("cert.pem"),
    ]);
    (p("cert.pem"), p("key.pem"))
}

/// The CA that signed [`certificate`]'s server certificate.
fn ca(dir: &Path) -> String {
    dir.join("ca.pem").display().to_string()
}

const CLIENT: &str = r#"
import json, socket, ssl, sys, time, urllib.request, urllib.error
base, tcp, ca, want_syslog, want_app = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
def call(path, body, token="ta"):
    req = urllib.request.Request(base + path, data=body.encode(), method="POST",
        headers={"authorization": "Bearer " + token})
    with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
        return r.status, json.loads(r.read())
print("ingest", call("/api/v1/logs?stream=app", '{"n":1}\n{"n":2}\n'))
# Syslog over TLS (RFC 5425: octet counting).
host, port = tcp.rsplit(":", 1)
with socket.create_connection((host, int(port))) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as s:
        for i in range(3):
            msg = "<34>1 2026-11-29T10:00:0%dZ host app 1 ID7 - tls message %d" % (i, i)
            s.sendall(b"%d %s" % (len(msg.encode()), msg.encode()))
def count(stream):
    sql = "SELECT count(*) FROM logs WHERE stream = '%s'" % stream
    return call("/api/v1/query", json.dumps({"sql": sql}))[1]["rows"][0][0]
for _ in range(400):
    n, a = count("secure"), count("app")
    if (n, a) == (int(want_syslog), int(want_app)):
        break
    time.sleep(0.05)
print("syslog", n)
print("query", a)
# A client that does not trust the certificate is refused by its own check.
try:
    urllib.request.urlopen(base + "/healthz", context=ssl.create_default_context(), timeout=10)
    print("untrusted: accepted")
except urllib.error.URLError as e:
    print("untrusted: refused", type(e.reason).__name__)
# Plain HTTP to the HTTPS port gets no HTTP answer.
try:
    urllib.request.urlopen(base.replace("https://", "http://") + "/healthz", timeout=10)
    print("plain: answered")
except Exception as e:
    print("plain: refused")
"#;

#[tokio::test]
async fn https_and_syslog_over_tls_with_a_real_tls_client() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let s = Server::start(
        dir.path(),
        &format!(
            r#"
[tenants.ta]
tokens = ["ta"]
[[tenants.ta.listeners]]
addr = "127.0.0.1:0"
format = "syslog"
stream = "secure"
tls = true
[tls]
cert_file = "{cert}"
key_file = "{key}"
"#
        ),
    );
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let tcp = s.tcp_addr("ta", "secure", "syslog");
    let ca = ca(dir.path());
    let args = |syslog: &'static str, app: &'static str| {
        [s.base.as_str(), tcp.as_str(), ca.as_str(), syslog, app].map(std::ffi::OsStr::new)
    };
    let out = support::python(CLIENT, &args("3", "2"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "ingest (200, {'accepted': 2, 'errors': [], 'rejected': 0})",
        "syslog 3",
        "query 2",
        "untrusted: refused SSLCertVerificationError",
        "plain: refused",
    ] {
        assert!(
            stdout.contains(want),
            "{want}\n{stdout}\n{stderr}\n{}",
            s.log()
        );
    }
    // A TCP client that is not speaking TLS costs only its own connection.
    let mut plain = std::net::TcpStream::connect(&tcp).unwrap();
    std::io::Write::write_all(&mut plain, b"12 <34>1 - - - -\n").unwrap();
    drop(plain);
    let out = support::python(CLIENT, &args("6", "4"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("syslog 6") && stdout.contains("query 4"),
        "{stdout}"
    );
    s.stop();
}

/// OTLP/gRPC (the OpenTelemetry SDK) and Flight SQL (ADBC) over TLS on the gRPC
/// listener, verifying the test's certificate.
const GRPC_CLIENT: &str = r#"
import sys, time, logging, grpc
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from adbc_driver_flightsql import dbapi, DatabaseOptions
addr, ca = sys.argv[1:3]
pem = open(ca, "rb").read()
exp = OTLPLogExporter(endpoint="https://" + addr, headers={"authorization": "Bearer ta"},
                      credentials=grpc.ssl_channel_credentials(root_certificates=pem))
lp = LoggerProvider(resource=Resource.create({"service.name": "otel-tls"}))
lp.add_log_record_processor(SimpleLogRecordProcessor(exp))
log = logging.getLogger("tls"); log.propagate = False
log.addHandler(LoggingHandler(logger_provider=lp))
for i in range(5):
    log.warning("over tls %d", i)
lp.shutdown()
conn = dbapi.connect("grpc+tls://" + addr, db_kwargs={
    DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer ta",
    DatabaseOptions.TLS_ROOT_CERTS.value: pem.decode()})
cur = conn.cursor()
for _ in range(200):
    cur.execute("SELECT count(*) AS n FROM logs WHERE stream = 'otel-tls'")
    n = cur.fetchall()[0][0]
    if n == 5:
        break
    time.sleep(0.05)
print("flight sql over tls:", n)
"#;

#[tokio::test]
async fn otlp_and_flight_sql_over_tls_on_the_grpc_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let s = Server::start(
        dir.path(),
        &format!("[tenants.ta]\ntokens = [\"ta\"]\n[tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n"),
    );
    let addr = s
        .grpc
        .strip_prefix("grpc+tls://")
        .expect("a TLS gRPC listener")
        .to_owned();
    let ca = ca(dir.path());
    let out = support::python(
        GRPC_CLIENT,
        &[addr.as_str(), ca.as_str()].map(std::ffi::OsStr::new),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("flight sql over tls: 5"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop();
}

#[tokio::test]
async fn weir_ship_delivers_over_https_trusting_a_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let s = Server::start(
        dir.path(),
        &format!("[tenants.ta]\ntokens = [\"ta\"]\n[tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n"),
    );
    let input = dir.path().join("in.log");
    let lines: String = (0..500).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    let ship = |ca: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
        c.args([
            "ship", "--to", &s.base, "--token", "ta", "--stream", "shipped", "--once",
        ])
        .arg("--file")
        .arg(&input)
        .arg("--spool")
        .arg(dir.path().join(if ca.is_some() {
            "spool"
        } else {
            "spool-untrusted"
        }))
        .args(["--timeout-secs", "5"]);
        if let Some(ca) = ca {
            c.args(["--ca-file", ca]);
        }
        c
    };
    let ca = ca(dir.path());
    let out = ship(Some(&ca)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = format!(
        r#"
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile="{ca}")
req = urllib.request.Request("{base}/api/v1/query", method="POST",
    data=json.dumps({{"sql": "SELECT count(*), count(DISTINCT json_get_int(record, 'n')) FROM logs WHERE stream = 'shipped'"}}).encode(),
    headers={{"authorization": "Bearer ta"}})
import time
for _ in range(200):
    rows = json.loads(urllib.request.urlopen(req, context=ctx).read())["rows"]
    if rows[0][0] == 500:
        break
    time.sleep(0.05)
print("shipped", rows)
"#,
        base = s.base
    );
    let out = support::python(&check, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("shipped [[500, 500]]"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the certificate the shipper does not trust the server: nothing is sent,
    // it keeps retrying (its spool holds the lines) until stopped.
    let mut untrusted = ship(None)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        untrusted.try_wait().unwrap().is_none(),
        "it keeps the lines and retries"
    );
    untrusted.kill().unwrap();
    untrusted.wait().unwrap();
    s.stop();
}

#[test]
fn tls_setups_that_cannot_work_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = certificate(dir.path());
    for (config, expect) in [
        (
            "[tenants.ta]\ntokens = [\"ta\"]\n[[tenants.ta.listeners]]\naddr = \"127.0.0.1:0\"\nformat = \"syslog\"\nstream = \"s\"\ntls = true\n".to_owned(),
            "needs [tls]",
        ),
        (format!("[tls]\ncert_file = \"{cert}\"\n"), "both cert_file and key_file"),
        (
            format!("[tls]\ncert_file = \"{cert}\"\nkey_file = \"{cert}\"\n"),
            "private key",
        ),
    ] {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, &config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--tcp-addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config}");
        assert!(err.contains(expect), "{config}: {err}");
    }
}
