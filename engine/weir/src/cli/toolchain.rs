//! Building a plugin project into a component with its language's toolchain, and
//! running a component locally.
//!
//! Tools are looked up on `PATH`, then where `scripts/setup.sh` installs them
//! (`$WEIR_TOOLS`, default `/var/tmp/weir-tools`): `bin/` (wit-bindgen, wasm-tools),
//! `venv/bin/` (componentize-py, and zig as the `ziglang` Python package),
//! `node/node_modules/.bin/` (componentize-js).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{Lang, Manifest};

fn tools_dir() -> PathBuf {
    std::env::var_os("WEIR_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/weir-tools"))
}

/// `name` on `PATH`, else in one of the tool directories.
fn find(name: &str) -> Option<PathBuf> {
    let tools = tools_dir();
    let extra = [
        tools.join("bin"),
        tools.join("venv/bin"),
        tools.join("node/node_modules/.bin"),
    ];
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn tool(name: &str) -> Result<PathBuf> {
    find(name).with_context(|| {
        format!(
            "{name} not found on PATH or in {} (run scripts/setup.sh)",
            tools_dir().display()
        )
    })
}

fn run_tool(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("weir: {shown}");
    let status = cmd.status().with_context(|| format!("start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Build the project in `dir`; returns the component's path.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no directory {}", dir.display()))?;
    let m = Manifest::load(&dir)?;
    let out_dir = dir.join("build");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(format!("{}.wasm", m.name));
    match m.lang {
        Lang::Rust => return build_rust(&dir),
        Lang::C => build_c(&dir, &out_dir, &out)?,
        Lang::Python => run_tool(
            Command::new(tool("componentize-py")?)
                .current_dir(&dir)
                .args(["-d", "wit", "-w", "transform", "componentize", "app", "-o"])
                .arg(&out),
        )?,
        Lang::Js => run_tool(
            Command::new(tool("componentize-js")?)
                .current_dir(&dir)
                .arg("plugin.js")
                .args(["--wit", "wit", "-n", "transform"])
                // Without these the component imports wasi:http, which Weir never grants.
                .args(["-d", "http", "-d", "fetch-event", "-o"])
                .arg(&out),
        )?,
    }
    Ok(out)
}

fn build_c(dir: &Path, out_dir: &Path, out: &Path) -> Result<()> {
    let gen = out_dir.join("gen");
    run_tool(
        Command::new(tool("wit-bindgen")?)
            .current_dir(dir)
            .args(["c", "wit", "--world", "transform", "--out-dir"])
            .arg(&gen),
    )?;
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir.join("src"))
        .context("read src/")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    sources.push(gen.join("transform.c"));
    sources.push(gen.join("transform_component_type.o"));
    let core = out_dir.join("core.wasm");
    // zig cc (from the `ziglang` Python package) or a clang with a wasi sysroot.
    let mut cc = if let Some(zig) = find("zig") {
        let mut c = Command::new(zig);
        c.args(["cc", "--target=wasm32-wasi"]);
        c
    } else if tools_dir().join("venv/bin/python3").is_file() {
        let mut c = Command::new(tools_dir().join("venv/bin/python3"));
        c.args(["-m", "ziglang", "cc", "--target=wasm32-wasi"]);
        c
    } else {
        let mut c = Command::new(tool("clang")?);
        c.args(["--target=wasm32-wasi", "--sysroot=/usr"]);
        c
    };
    run_tool(
        cc.current_dir(dir)
            .args(["-mexec-model=reactor", "-O2", "-s", "-Wall", "-I"])
            .arg(&gen)
            .args(&sources)
            .arg("-o")
            .arg(&core),
    )?;
    let adapter = out_dir.join("wasi_snapshot_preview1.reactor.wasm");
    std::fs::write(
        &adapter,
        wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    )?;
    run_tool(
        Command::new(tool("wasm-tools")?)
            .args(["component", "new"])
            .arg(&core)
            .arg("--adapt")
            .arg(format!("wasi_snapshot_preview1={}", adapter.display()))
            .arg("-o")
            .arg(out),
    )
}

fn build_rust(dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run cargo")?;
    if !output.status.success() {
        bail!("cargo build failed with {}", output.status);
    }
    // The artifact's path, from cargo's own report.
    let mut wasm = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" {
            for f in msg["filenames"].as_array().into_iter().flatten() {
                if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                    wasm = Some(PathBuf::from(f));
                }
            }
        }
    }
    wasm.context("cargo built no .wasm artifact (is the crate a cdylib?)")
}

/// Run `wasm` on NDJSON from stdin with `config`; the output to stdout.
pub fn run(wasm: &Path, config: &str) -> Result<()> {
    let bytes = std::fs::read(wasm).with_context(|| format!("read {}", wasm.display()))?;
    let host = weir_plugin_host::PluginHost::new()?;
    let name = wasm
        .file_stem()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy());
    let plugin = host.compile(&name, &bytes)?;
    let mut instance = plugin.instantiate("local", config, &weir_plugin_host::Limits::default())?;
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    let out = instance.process(&input)?;
    std::io::stdout().write_all(&out)?;
    Ok(())
}
