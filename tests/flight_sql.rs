//! Flight SQL for BI tools, end to end: the metadata calls (through the ADBC Flight SQL
//! driver, as a BI tool's object browser makes them) and prepared statements with
//! parameters (ADBC, and raw pyarrow.flight calls for what a driver would never send:
//! another tenant's handle, garbage, oversized values). Every tenant sees its own
//! tables, columns and statements only, and the server keeps serving.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::Server;

const CONFIG: &str = r#"
[cold]
flush_after_secs = 1
[tenants.a]
tokens = ["ta"]
[tenants.b]
tokens = ["tb"]
"#;

/// Python that connects ADBC with a tenant's token.
const ADBC: &str = r#"
import sys
from adbc_driver_flightsql import dbapi, DatabaseOptions
def connect(token):
    return dbapi.connect(sys.argv[1], db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer " + token})
"#;

fn run_python(script: &str, s: &Server) -> String {
    let out = support::python(script, &[s.grpc.as_ref()]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Wait until `rows` rows reached the cold tier (their fields are columns then).
async fn wait_flushed(s: &Server, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.counter("weir_cold_rows_total").await < rows {
        assert!(Instant::now() < deadline, "not flushed:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ingest(s: &Server, token: &str, records: &[serde_json::Value]) {
    let body: String = records.iter().map(|r| format!("{r}\n")).collect();
    let (st, v) = s.ingest(token, "app", body).await;
    assert_eq!(st, 200, "{v}");
}

/// ADBC's object browser: `adbc_get_objects` lists the tenant's tables with their
/// columns — the fields of its own cold files, never another tenant's;
/// `adbc_get_table_schema` is the schema its queries read; table types and server
/// info answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_browses_the_tables_and_columns_of_its_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    ingest(&s, "ta", &[json!({"message": "a1", "a_private": 1})]).await;
    ingest(&s, "tb", &[json!({"message": "b1", "b_private": "x"})]).await;
    wait_flushed(&s, 2).await;
    let script = format!(
        r#"{ADBC}
def tables(conn, **filters):
    out = {{}}
    for c in conn.adbc_get_objects(**filters).read_all().to_pylist():
        for sch in c["catalog_db_schemas"] or []:
            for t in sch["db_schema_tables"] or []:
                cols = [col["column_name"] for col in (t["table_columns"] or [])]
                out[(c["catalog_name"], sch["db_schema_name"], t["table_name"])] = (t["table_type"], cols)
    return out
for token in ["ta", "tb"]:
    with connect(token) as conn:
        objs = tables(conn)
        names = sorted(n for (_, _, n) in objs)
        print(token, "tables", names)
        print(token, "types", sorted(set(t for (t, _) in objs.values())))
        logs = objs[("datafusion", "public", "logs")][1]
        print(token, "logs has a_private", "a_private" in logs, "b_private", "b_private" in logs)
        schema = conn.adbc_get_table_schema("logs")
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM logs")
            read = cur.fetch_arrow_table().schema
        print(token, "schema is what queries read", schema.names == read.names and schema.types == read.types, schema.names == logs)
        print(token, "metrics%", sorted(n for (_, _, n) in tables(conn, depth="tables", table_name_filter="metrics%")))
        print(token, "metric_", sorted(n for (_, _, n) in tables(conn, depth="tables", table_name_filter="metric_")))
        print(token, "views", sorted(n for (_, _, n) in tables(conn, depth="tables", table_types_filter=["VIEW"])))
        print(token, "no such catalog", len(tables(conn, catalog_filter="nope")))
        print(token, "table types", conn.adbc_get_table_types())
        info = conn.adbc_get_info()
        print(token, "info", info["vendor_name"], info["vendor_version"])
"#
    );
    let out = run_python(&script, &s);
    let version = env!("CARGO_PKG_VERSION");
    let want = |t: &str, a: &str, b: &str| {
        format!(
            "{t} tables ['aggregates', 'dead_letters', 'logs', 'metrics', 'metrics_1h', 'metrics_1m', 'quarantine']\n\
             {t} types ['TABLE', 'VIEW']\n\
             {t} logs has a_private {a} b_private {b}\n\
             {t} schema is what queries read True True\n\
             {t} metrics% ['metrics', 'metrics_1h', 'metrics_1m']\n\
             {t} metric_ ['metrics']\n\
             {t} views ['metrics_1h', 'metrics_1m']\n\
             {t} no such catalog 0\n\
             {t} table types ['TABLE', 'VIEW']\n\
             {t} info Weir {version}"
        )
    };
    let want = format!(
        "{}\n{}",
        want("ta", "True", "False"),
        want("tb", "False", "True")
    );
    assert_eq!(out, want);
    s.stop();
}

/// Prepared statements through ADBC: `?` and `$1` placeholders bind values as values
/// (a quote in one is no SQL), a second execution with other values answers for
/// those, and wrong values get clear errors while the connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_prepared_statements_bind_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let records: Vec<_> = (0..30)
        .map(|i| json!({"message": format!("m{i}"), "level": if i % 3 == 0 { "error" } else { "info" }, "code": i % 5}))
        .collect();
    ingest(&s, "ta", &records).await;
    ingest(
        &s,
        "tb",
        &[json!({"message": "b-secret", "level": "error", "code": 1})],
    )
    .await;
    // Flushed: `code` is a column of the cold files.
    wait_flushed(&s, 31).await;
    let script = format!(
        r#"{ADBC}
with connect("ta") as conn, conn.cursor() as cur:
    q = "SELECT message FROM logs WHERE level = ? AND code = ? ORDER BY message"
    for params in [("error", 1), ("info", 1), ("error", 4)]:
        cur.execute(q, parameters=params)
        print(params, [r[0] for r in cur.fetchall()])
    cur.execute("SELECT count(*) FROM logs WHERE code = $1", parameters=(2,))
    print("$1", cur.fetchone()[0])
    cur.execute("SELECT count(*) FROM logs WHERE ts > ?", parameters=("2000-01-01T00:00:00Z",))
    print("text as a time", cur.fetchone()[0])
    import datetime
    cur.execute("SELECT count(*) FROM logs WHERE ts < ?", parameters=(datetime.datetime(2000, 1, 1),))
    print("a datetime", cur.fetchone()[0])
    cur.execute("SELECT count(*) FROM logs WHERE level = ?", parameters=("x' OR '1'='1",))
    print("quote", cur.fetchone()[0])
    cur.execute("SELECT count(*) FROM logs WHERE message = ?", parameters=("b-secret",))
    print("b's row", cur.fetchone()[0])
    for label, sql, params in [
        ("count", "SELECT count(*) FROM logs WHERE code = ?", (1, 2)),
        ("type", "SELECT count(*) FROM logs WHERE code = ?", ("one",)),
        ("size", "SELECT count(*) FROM logs WHERE message = ?", ("x" * 100000,)),
        ("named", "SELECT count(*) FROM logs WHERE message = $name", ("x",)),
    ]:
        try:
            cur.execute(sql, parameters=params)
            print(label, "accepted", cur.fetchall())
        except Exception as e:
            print(label, str(e).splitlines()[0])
    cur.execute("SELECT count(*) FROM logs WHERE code = ?", parameters=(0,))
    print("still", cur.fetchone()[0])
"#
    );
    let out = run_python(&script, &s);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..8],
        [
            "('error', 1) ['m21', 'm6']",
            "('info', 1) ['m1', 'm11', 'm16', 'm26']",
            "('error', 4) ['m24', 'm9']",
            "$1 6",
            "text as a time 30",
            "a datetime 0",
            "quote 0",
            "b's row 0",
        ],
        "{out}"
    );
    let error = |label: &str, needle: &str| {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("{label}: {out}"));
        assert!(
            line.contains("INVALID_ARGUMENT") && line.contains(needle),
            "{label}: {line}"
        );
    };
    error(
        "count",
        "the statement has 1 parameter(s), 2 value(s) were bound",
    );
    error("type", "parameter $1 is Int64, the value bound to it is");
    error("size", "more than the 65536 allowed");
    error("named", "placeholder $name is not supported");
    assert_eq!(lines.last(), Some(&"still 6"), "{out}");
    s.stop();
}

/// What no driver would send: another tenant's prepared statement handle (to bind,
/// run or close), made-up handles, garbage descriptors and actions, too many rows or
/// bytes of values. Each gets a clear status; another tenant's handle is exactly as
/// unknown as a made-up one, and its owner's statement still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_handles_belong_to_their_tenant_and_garbage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    ingest(
        &s,
        "ta",
        &[
            json!({"message": "m1", "code": 7}),
            json!({"message": "m2", "code": 9}),
            json!({"message": "m3", "code": 7}),
        ],
    )
    .await;
    wait_flushed(&s, 3).await;
    let script = r#"
import sys
import pyarrow as pa
import pyarrow.flight as fl

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out

def field(num, data):
    return bytes([num << 3 | 2]) + varint(len(data)) + data

def parse(buf):
    out, i = {}, 0
    while i < len(buf):
        key = buf[i]; i += 1
        num, wt = key >> 3, key & 7
        if wt == 2:
            n, shift = 0, 0
            while True:
                b = buf[i]; i += 1
                n |= (b & 0x7F) << shift; shift += 7
                if not b & 0x80: break
            out[num] = buf[i:i + n]; i += n
        else:
            while buf[i] & 0x80: i += 1
            i += 1
    return out

SQL = "type.googleapis.com/arrow.flight.protocol.sql."
def any_of(name, inner):
    return field(1, (SQL + name).encode()) + field(2, inner)

def options(token):
    return fl.FlightCallOptions(headers=[(b"authorization", b"Bearer " + token)])

def prepare(sql, token):
    body = any_of("ActionCreatePreparedStatementRequest", field(1, sql.encode()))
    res = list(client.do_action(fl.Action("CreatePreparedStatement", body), options(token)))
    return parse(parse(res[0].body.to_pybytes())[2])[1]

def prepared(handle):
    return fl.FlightDescriptor.for_command(any_of("CommandPreparedStatementQuery", field(1, handle)))

def bind(handle, batch, token):
    writer, reader = client.do_put(prepared(handle), batch.schema, options(token))
    writer.write_batch(batch)
    writer.done_writing()
    reader.read()
    writer.close()
    return "bound"

def run(handle, token):
    info = client.get_flight_info(prepared(handle), options(token))
    return client.do_get(info.endpoints[0].ticket, options(token)).read_all().to_pylist()

def close(handle, token):
    body = any_of("ActionClosePreparedStatementRequest", field(1, handle))
    list(client.do_action(fl.Action("ClosePreparedStatement", body), options(token)))
    return "closed"

def attempt(label, f):
    try:
        print(label, "ok", f())
    except Exception as e:
        print(label, type(e).__name__, str(e).split(". gRPC client debug context")[0].splitlines()[0])

def ints(*v):
    return pa.record_batch([pa.array(list(v))], names=["0"])

client = fl.FlightClient(sys.argv[1])
h = prepare("SELECT message FROM logs WHERE code = ? ORDER BY message", b"ta")
attempt("unbound", lambda: run(h, b"ta"))
attempt("b binds", lambda: bind(h, ints(7), b"tb"))
attempt("b runs", lambda: run(h, b"tb"))
attempt("b closes", lambda: close(h, b"tb"))
attempt("made-up", lambda: run(b"\x00" * 8, b"ta"))
attempt("short", lambda: bind(b"xy", ints(7), b"ta"))
attempt("a binds", lambda: bind(h, ints(7), b"ta"))
attempt("a runs", lambda: run(h, b"ta"))
attempt("two rows", lambda: bind(h, ints(7, 9), b"ta"))
attempt("huge", lambda: bind(h, pa.record_batch([pa.array(["x" * (1 << 20)])], names=["0"]), b"ta"))
attempt("garbage descriptor", lambda: client.get_flight_info(fl.FlightDescriptor.for_command(b"\xff\xfe garbage"), options(b"ta")))
attempt("garbage action", lambda: list(client.do_action(fl.Action("CreatePreparedStatement", b"\xff\x01"), options(b"ta"))))
attempt("bad sql", lambda: prepare("SELECT nope FROM logs WHERE code = ?", b"ta"))
attempt("a rebinds", lambda: bind(h, ints(9), b"ta"))
attempt("a runs again", lambda: run(h, b"ta"))
attempt("a closes", lambda: close(h, b"ta"))
attempt("closed", lambda: run(h, b"ta"))
"#;
    let out = run_python(script, &s);
    let unknown = "ArrowKeyError Flight returned not found error, with message: unknown, closed or expired prepared statement handle";
    let invalid = "ArrowInvalid Flight returned invalid argument error, with message:";
    let want = [
        format!("unbound {invalid} the prepared statement has 1 parameter(s) and no values bound to them"),
        format!("b binds {unknown}"),
        format!("b runs {unknown}"),
        format!("b closes {unknown}"),
        format!("made-up {unknown}"),
        format!("short {unknown}"),
        "a binds ok bound".into(),
        "a runs ok [{'message': 'm1'}, {'message': 'm3'}]".into(),
        format!("two rows {invalid} bind exactly one row of parameter values; 2 rows were sent"),
        format!("huge {invalid} the parameter values take more than 131072 bytes"),
        format!("garbage descriptor {invalid} DecodeError"),
        format!("garbage action {invalid} DecodeError"),
        format!("bad sql {invalid} Schema error: No field named nope"),
        "a rebinds ok bound".into(),
        "a runs again ok [{'message': 'm2'}]".into(),
        "a closes ok closed".into(),
        format!("closed {unknown}"),
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), want.len(), "{out}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(line.starts_with(want.as_str()), "{line}\nwanted: {want}");
    }
    // And the node still answers.
    assert_eq!(s.count("ta", "SELECT count(*) FROM logs").await, 3);
    s.stop();
}
