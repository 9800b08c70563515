//! `weir plugin bench`: how fast one component is in this host — compile time,
//! instantiate time (from the pre-linked component, with `init`), and batch throughput
//! on the shared realistic sample records (or your own NDJSON).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weir_plugin_host::{Limits, PluginHost};

pub struct Options<'a> {
    pub config: &'a str,
    pub input: Option<&'a Path>,
    pub batch: usize,
    pub seconds: f64,
}

/// Measure `wasm`; prints one JSON line.
pub fn bench(wasm: &Path, o: &Options) -> Result<()> {
    let bytes = std::fs::read(wasm).with_context(|| format!("read {}", wasm.display()))?;
    let host = PluginHost::new()?;
    let name = wasm
        .file_stem()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned());
    let t = Instant::now();
    let plugin = host.compile(&name, &bytes)?;
    let compile = t.elapsed();
    let limits = Limits {
        deadline: Duration::from_secs(60),
        memory_bytes: 1 << 30,
        ..Limits::default()
    };
    // Instantiation (with init), median of 21.
    let mut inst = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let i = plugin.instantiate("bench", o.config, &limits)?;
        inst.push(t.elapsed());
        drop(i);
    }
    inst.sort();
    let input = match o.input {
        Some(p) => std::fs::read(p).with_context(|| format!("read {}", p.display()))?,
        None => weir_core::sample::ndjson(o.batch),
    };
    let records = weir_core::batch::ndjson_lines(&input).count();
    let mut instance = plugin.instantiate("bench", o.config, &limits)?;
    instance.process(&input)?; // warm up
    let (mut calls, started) = (0u64, Instant::now());
    while started.elapsed().as_secs_f64() < o.seconds || calls < 3 {
        std::hint::black_box(instance.process(&input)?);
        calls += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let per_record_us = secs * 1e6 / (calls as f64 * records as f64);
    println!(
        "{}",
        serde_json::json!({
            "plugin": name,
            "bytes": bytes.len(),
            "compile_ms": compile.as_secs_f64() * 1e3,
            "instantiate_us_median": inst[inst.len() / 2].as_secs_f64() * 1e6,
            "records_per_batch": records,
            "batch_bytes": input.len(),
            "us_per_record": per_record_us,
            "records_per_s": 1e6 / per_record_us,
            "mb_per_s": input.len() as f64 * calls as f64 / secs / 1e6,
        })
    );
    Ok(())
}
