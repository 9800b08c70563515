//! Compiling untrusted components in a child process, under limits.
//!
//! Cranelift's time and memory grow with what a component contains, and a component
//! can be built to make both huge. So the server compiles uploads in a child: the same
//! binary re-executed with a hidden subcommand that calls [`child_main`], which first
//! caps its own address space (`RLIMIT_AS`) and CPU time (`RLIMIT_CPU`), then
//! validates and precompiles the component with this host's engine settings
//! ([`crate::engine_config`]) and writes the machine code to the file it was given. The
//! parent ([`ChildCompiler::compile`]) kills the child when the wall-clock limit passes,
//! and loads the file when it succeeded; a cache file it cannot load is refused.
//!
//! The parent and child talk through the child's stdin (the component), its exit status
//! and its stderr (one line: the reason of a refusal).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::HostError;

/// The hidden subcommand of the `weir` binary that runs [`child_main`].
pub const SUBCOMMAND: &str = "__compile-plugin";

/// Exit status of a child that refused the component (invalid, not a component).
const EXIT_INVALID: i32 = 2;
/// Exit status of a child that could not read its input or write its output.
const EXIT_IO: i32 = 3;

/// Limits of one compilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Wall-clock time; the child is killed after it (`RLIMIT_CPU` is twice this, as a
    /// backstop for a parent that could not kill it).
    pub timeout: Duration,
    /// Address space of the child (`RLIMIT_AS`), in bytes.
    pub memory_bytes: u64,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            timeout: Duration::from_secs(60),
            memory_bytes: 2 << 30,
        }
    }
}

/// Compiles components by running `exe SUBCOMMAND` (normally the current executable).
#[derive(Debug, Clone)]
pub struct ChildCompiler {
    pub exe: PathBuf,
    pub limits: CompileLimits,
}

impl ChildCompiler {
    /// Compile `wasm` into `out` (a `.cwasm` for [`wasmtime::component::Component::deserialize_file`]).
    pub fn compile(&self, wasm: &[u8], out: &Path) -> Result<(), HostError> {
        let mut child = Command::new(&self.exe)
            .arg(SUBCOMMAND)
            .arg("--out")
            .arg(out)
            .arg("--memory-bytes")
            .arg(self.limits.memory_bytes.to_string())
            .arg("--cpu-secs")
            .arg((self.limits.timeout.as_secs() * 2 + 1).to_string())
            // Fewer malloc arenas: less address space reserved for nothing.
            .env("MALLOC_ARENA_MAX", "2")
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| HostError::Engine(format!("start the compiler process: {e}")))?;
        let started = Instant::now();
        // The child reads all of stdin before doing anything else; a write error means
        // it died early (its status says why).
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(wasm);
        }
        let mut stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.take(64 << 10).read_to_string(&mut text);
            }
            text
        });
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() >= self.limits.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_file(out);
                    return Err(HostError::CompileLimit(format!(
                        "compiling took longer than the limit of {} ms",
                        self.limits.timeout.as_millis()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(HostError::Engine(format!("wait for the compiler: {e}"))),
            }
        };
        let said = reader.join().unwrap_or_default();
        let said = said.trim();
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(()),
            (Some(EXIT_INVALID), _) => Err(parse_refusal(said)),
            (_, Some(libc::SIGXCPU | libc::SIGKILL)) => {
                let _ = std::fs::remove_file(out);
                Err(HostError::CompileLimit(format!(
                    "compiling used more than the CPU time limit of {} s",
                    self.limits.timeout.as_secs() * 2 + 1
                )))
            }
            _ if said.contains("memory allocation") || said.contains("out of memory") => {
                let _ = std::fs::remove_file(out);
                Err(HostError::CompileLimit(format!(
                    "compiling needed more than the memory limit of {} MiB",
                    self.limits.memory_bytes >> 20
                )))
            }
            _ => {
                let _ = std::fs::remove_file(out);
                Err(HostError::Engine(format!(
                    "the compiler process failed ({status}): {said}"
                )))
            }
        }
    }
}

/// The child's refusal line, back into the error it was.
fn parse_refusal(line: &str) -> HostError {
    let line = line.lines().last().unwrap_or("");
    match line.split_once(": ") {
        Some(("not-wasm", _)) => HostError::NotWasm,
        Some(("core-module", _)) => HostError::CoreModule,
        Some((_, reason)) => HostError::Compile(reason.to_owned()),
        None => HostError::Compile(line.to_owned()),
    }
}

/// Set a resource limit (soft and hard) of this process.
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass and changes only this process's limits.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The child: cap this process, read a component from stdin, precompile it into `out`.
/// Returns the exit status. Refusals are written to stderr as `KIND: reason`.
pub fn child_main(out: &Path, memory_bytes: u64, cpu_secs: u64) -> i32 {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only asks the kernel to kill this process when its
    // parent dies, so a compile never outlives the server that started it.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
    if let Err(e) = set_limit(libc::RLIMIT_AS, memory_bytes)
        .and_then(|()| set_limit(libc::RLIMIT_CPU, cpu_secs))
        .and_then(|()| set_limit(libc::RLIMIT_CORE, 0))
    {
        eprintln!("io: cannot set the compiler's limits: {e}");
        return EXIT_IO;
    }
    let mut wasm = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut wasm) {
        eprintln!("io: read the component: {e}");
        return EXIT_IO;
    }
    let bytes = match precompile(&wasm) {
        Ok(b) => b,
        Err(e) => {
            let kind = match e {
                HostError::NotWasm => "not-wasm",
                HostError::CoreModule => "core-module",
                _ => "compile",
            };
            eprintln!("{kind}: {e}");
            return EXIT_INVALID;
        }
    };
    let tmp = out.with_extension("part");
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, out));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        eprintln!("io: write {}: {e}", out.display());
        return EXIT_IO;
    }
    0
}

/// Validate and compile `wasm` with this host's engine settings: the bytes of a
/// `.cwasm` file.
pub fn precompile(wasm: &[u8]) -> Result<Vec<u8>, HostError> {
    crate::check_preamble(wasm)?;
    let engine = wasmtime::Engine::new(&crate::engine_config())
        .map_err(|e| HostError::Engine(e.to_string()))?;
    engine
        .precompile_component(wasm)
        .map_err(|e| HostError::Compile(format!("{e:#}")))
}
