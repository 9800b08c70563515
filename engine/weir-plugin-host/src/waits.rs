//! Waits a plugin can make inside the host, bounded by its call's deadline.
//!
//! The epoch deadline interrupts Wasm code only: a guest blocked in a host function is
//! not interrupted. In WASI p2 every blocking wait is a wait on pollables —
//! `wasi:io/poll.poll` and `pollable.block` (what `sleep`, `poll()` and
//! `monotonic-clock.subscribe-duration`/`subscribe-instant` come down to). The
//! wasmtime-wasi versions of those two wait as long as the pollable says (an hour, or
//! forever for an instant too far to represent). This module links its own versions
//! over them: the same wait, cut at the deadline of the call in progress; a wait still
//! pending then traps with [`WaitPastDeadline`], which the call reports as a timeout,
//! exactly like a plugin that loops.
//!
//! Every other WASI function of this host's context returns at once: stdin is closed,
//! stdout/stderr never wait ([`crate::wasi`]), sockets are denied, files have no
//! preopens (so `blocking-read`, `blocking-write-and-flush`, `blocking-flush` and
//! `blocking-splice` have nothing that could wait on).

use std::time::{Duration, Instant};

use wasmtime::component::{Linker, Resource};
use wasmtime::StoreContextMut;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;

use crate::instance::State;

/// The `wasi:io/poll` interface as wasmtime-wasi 48 defines it (components importing any
/// 0.2.x version link to it).
pub(crate) const POLL_INTERFACE: &str = "wasi:io/poll@0.2.12";

/// A plugin waited in a host call until its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPastDeadline;

impl std::fmt::Display for WaitPastDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the plugin was still waiting on a WASI pollable at its deadline")
    }
}
impl std::error::Error for WaitPastDeadline {}

/// When the call in progress must end (set before every call into the guest).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallDeadline(pub(crate) Instant);

impl CallDeadline {
    fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// Replace wasmtime-wasi's `poll` and `pollable.block` in `linker` (which already has
/// the rest of WASI p2) with deadline-bounded ones.
pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL_INTERFACE)?;
    poll.func_wrap(
        "poll",
        |mut cx: StoreContextMut<'_, State>, (list,): (Vec<Resource<DynPollable>>,)| {
            let budget = cx.data().deadline.remaining();
            let table = cx.data_mut().table();
            let waited = in_tokio(async {
                tokio::time::timeout(budget, async_poll::Host::poll(table, list)).await
            });
            match waited {
                Ok(ready) => ready.map(|r| (r,)),
                Err(_) => Err(wasmtime::Error::new(WaitPastDeadline)),
            }
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut cx: StoreContextMut<'_, State>, (p,): (Resource<DynPollable>,)| {
            let budget = cx.data().deadline.remaining();
            let table = cx.data_mut().table();
            let waited = in_tokio(async {
                tokio::time::timeout(budget, async_poll::HostPollable::block(table, p)).await
            });
            match waited {
                Ok(done) => done,
                Err(_) => Err(wasmtime::Error::new(WaitPastDeadline)),
            }
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
