//! Plugin call cost: an empty batch, a 1k-record batch through a pass-through plugin, and
//! the redactor in Wasm against the same rules run natively.
//!
//! The `boundary` group measures the two candidate batch shapes with identity functions:
//! one NDJSON `list<u8>` against a `list<string>` of one string per record.
//!
//! Run: `cargo bench -p weir-plugin-host --bench plugin_call`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_plugin_host::{Limits, PluginHost};
fn bench(c: &mut Criterion) {
    let host = PluginHost::new().unwrap();
    let limits = Limits::default();
    let pass = host
        .compile(
            "hostile",
            weir_builtins::fixture("weir-fixture-hostile").unwrap(),
        )
        .unwrap();
    let redact = host
        .compile("pii-redact", weir_builtins::get("pii-redact").unwrap())
        .unwrap();
    let batch = weir_core::sample::ndjson(1000);

    let mut g = c.benchmark_group("plugin_call");
    let mut p = pass
        .instantiate("bench", r#"{"mode":"ok"}"#, &limits)
        .unwrap();
    g.bench_function("empty_batch", |b| b.iter(|| p.process(b"").unwrap()));
    g.throughput(Throughput::Bytes(batch.len() as u64));
    g.bench_function("passthrough_1k_records", |b| {
        b.iter(|| p.process(&batch).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("redact_1k_records");
    g.throughput(Throughput::Elements(1000));
    let mut w = redact.instantiate("bench", "{}", &limits).unwrap();
    g.bench_function("wasm", |b| b.iter(|| w.process(&batch).unwrap()));
    let mut native =
        <pii_redact::PiiRedact as weir_plugin_sdk::Transform>::new(&serde_json::json!({})).unwrap();
    g.bench_function("native", |b| {
        b.iter(|| weir_plugin_sdk::run_native(&mut native, &batch).unwrap())
    });
    g.finish();
}

mod boundary {
    wasmtime::component::bindgen!({
        path: "../../tests/fixtures/boundary/wit",
        world: "boundary",
    });
}

struct Ctx {
    wasi: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for Ctx {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn bench_boundary(c: &mut Criterion) {
    let engine = wasmtime::Engine::default();
    let mut linker = wasmtime::component::Linker::<Ctx>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    let component = wasmtime::component::Component::new(
        &engine,
        weir_builtins::fixture("weir-fixture-boundary").unwrap(),
    )
    .unwrap();
    let mut store = wasmtime::Store::new(
        &engine,
        Ctx {
            wasi: wasmtime_wasi::WasiCtxBuilder::new().build(),
            table: wasmtime::component::ResourceTable::new(),
        },
    );
    let b = boundary::Boundary::instantiate(&mut store, &component, &linker).unwrap();
    let ndjson = weir_core::sample::ndjson(1000);
    let strings: Vec<String> = ndjson
        .split(|&x| x == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8(l.to_vec()).unwrap())
        .collect();
    let mut g = c.benchmark_group("boundary_1k_records");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("ndjson_list_u8", |bn| {
        bn.iter(|| b.call_bytes(&mut store, &ndjson).unwrap())
    });
    g.bench_function("list_string", |bn| {
        bn.iter(|| b.call_strings(&mut store, &strings).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench, bench_boundary);
criterion_main!(benches);
