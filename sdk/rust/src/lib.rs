//! Write Weir plugins in Rust.
//!
//! A plugin implements [`Transform`] and names its type in [`export_transform!`]:
//!
//! ```ignore
//! use weir_plugin_sdk::{export_transform, Error, Record, Transform};
//!
//! struct Tag { value: String }
//!
//! impl Transform for Tag {
//!     fn new(config: &serde_json::Value) -> Result<Self, Error> {
//!         let value = config["value"].as_str().unwrap_or("tagged").to_owned();
//!         Ok(Tag { value })
//!     }
//!     fn record(&mut self, rec: &mut Record) -> Result<bool, Error> {
//!         rec.set("tag", self.value.clone().into());
//!         Ok(true) // keep the record
//!     }
//! }
//! export_transform!(Tag);
//! ```
//!
//! Layout:
//! - [`bindings`]: the wit-bindgen output for `weir:plugin/transform@0.1.0` (from `wit/`).
//! - [`Transform`]: the trait a plugin implements; batch-level by default, with a
//!   per-record convenience ([`Transform::record`]).
//! - [`Stateful`]: a [`Transform`] whose state the host carries across hot swaps,
//!   restarts and traps ([`export_stateful_transform!`]).
//! - [`Migration`]: a [`Transform`] that moves records from one schema version to the
//!   next ([`export_migration!`]).
//! - [`Aggregator`]: a custom aggregation function over host-held accumulators
//!   ([`export_aggregator!`]).
//! - [`Record`]: a JSON object with dotted-path helpers (`get_str("http.user.email")`).
//! - [`log`]: write to the plugin's log through the host.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "weir:plugin/transform@0.1.0",
        default_bindings_module: "weir_plugin_sdk::bindings",
        pub_export_macro: true,
        export_macro_name: "__export_transform_world",
    });
}

/// wit-bindgen output for `weir:plugin/stateful-transform@0.1.0`, sharing the imported
/// interfaces with [`bindings`].
#[doc(hidden)]
pub mod stateful_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "weir:plugin/stateful-transform@0.1.0",
        default_bindings_module: "weir_plugin_sdk::stateful_bindings",
        pub_export_macro: true,
        export_macro_name: "__export_stateful_world",
        with: {
            "weir:plugin/host@0.1.0": crate::bindings::weir::plugin::host,
            "weir:plugin/types@0.1.0": crate::bindings::weir::plugin::types,
        },
    });
}

/// wit-bindgen output for `weir:plugin/migration@0.1.0`.
#[doc(hidden)]
pub mod migration_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "weir:plugin/migration@0.1.0",
        default_bindings_module: "weir_plugin_sdk::migration_bindings",
        pub_export_macro: true,
        export_macro_name: "__export_migration_world",
        with: {
            "weir:plugin/host@0.1.0": crate::bindings::weir::plugin::host,
            "weir:plugin/types@0.1.0": crate::bindings::weir::plugin::types,
        },
    });
}

/// wit-bindgen output for `weir:plugin/aggregator@0.1.0`.
#[doc(hidden)]
pub mod aggregator_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "weir:plugin/aggregator@0.1.0",
        default_bindings_module: "weir_plugin_sdk::aggregator_bindings",
        pub_export_macro: true,
        export_macro_name: "__export_aggregator_world",
        with: {
            "weir:plugin/host@0.1.0": crate::bindings::weir::plugin::host,
            "weir:plugin/types@0.1.0": crate::bindings::weir::plugin::types,
        },
    });
}

mod record;

pub use record::Record;
pub use serde_json;

use bindings::weir::plugin::types::PluginError;

/// Why a plugin refused its configuration or a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The configuration is unusable (returned from `new`).
    InvalidConfig(String),
    /// The batch cannot be processed; the host dead-letters it.
    Failed(String),
}

impl Error {
    pub fn config(msg: impl Into<String>) -> Self {
        Error::InvalidConfig(msg.into())
    }
    pub fn failed(msg: impl Into<String>) -> Self {
        Error::Failed(msg.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Error::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidConfig(m) => PluginError::InvalidConfig(m),
            Error::Failed(m) => PluginError::Failed(m),
        }
    }
}

/// A batch transform. Implement [`Transform::record`] for record-at-a-time logic, or
/// override [`Transform::batch`] to work on the raw NDJSON bytes.
pub trait Transform: Sized + 'static {
    /// Build the plugin from its pipeline config (`{}` when none was given).
    fn new(config: &serde_json::Value) -> Result<Self, Error>;

    /// Change one record in place; return `false` to drop it.
    fn record(&mut self, rec: &mut Record) -> Result<bool, Error> {
        let _ = rec;
        Ok(true)
    }

    /// Transform a whole batch: NDJSON in, NDJSON appended to `out`. The default parses
    /// each line into a [`Record`], calls [`Transform::record`] and writes it back.
    fn batch(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        batch_by_record(self, input, out)
    }
}

/// A plugin's state, in a format the plugin chooses and numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub format: u32,
    pub data: Vec<u8>,
}

/// A [`Transform`] with state the host keeps: after every successful batch it takes a
/// [`Stateful::snapshot`], commits it with the partition's position, and gives it to
/// [`Stateful::restore`] of the next instance (a new version after a hot swap, the same
/// one after a restart or a trap). Bump `format` when the layout changes and migrate
/// older formats in `restore`.
pub trait Stateful: Transform {
    fn snapshot(&self) -> State;
    /// Continue from `state`; refuse a format you cannot read with
    /// [`Error::InvalidConfig`].
    fn restore(&mut self, state: State) -> Result<(), Error>;
}

/// A schema migration: a [`Transform`] that rewrites records of schema version
/// `step().0` into `step().1` (= `step().0 + 1`). The host only gives it records of the
/// version it reads and stamps `_schema` on what it returns
/// ([`export_migration!`]).
pub trait Migration: Transform {
    /// `(reads, writes)`.
    fn step(&self) -> (u32, u32);
}

/// A custom aggregation function (`wasm(NAME)` in an aggregation's `functions`). The
/// host holds the accumulators ([`State`]) — one per window and group — and checkpoints
/// them; the plugin only transforms them, deterministically ([`export_aggregator!`]).
pub trait Aggregator: Sized + 'static {
    /// Build from the configuration (`{}` when none is given).
    fn new(config: &serde_json::Value) -> Result<Self, Error>;
    /// A new, empty accumulator in this version's format.
    fn empty(&self) -> State;
    /// Fold the records of `batch` (NDJSON; see [`lines`]) into `acc`.
    fn update(&self, acc: State, batch: &[u8]) -> Result<State, Error>;
    /// Combine two accumulators of the same window and group.
    fn merge(&self, a: State, b: State) -> Result<State, Error>;
    /// The window's result, as JSON.
    fn finish(&self, acc: State) -> Result<serde_json::Value, Error>;
    /// Compact an accumulator before it is written (default: unchanged).
    fn snapshot(&self, acc: State) -> Result<State, Error> {
        Ok(acc)
    }
    /// Read an accumulator of another format (default: refuse it).
    fn restore(&self, acc: State) -> Result<State, Error> {
        Err(Error::config(format!(
            "cannot read accumulator format {} (this version writes {})",
            acc.format,
            self.empty().format
        )))
    }
}

/// The lines of an NDJSON batch (without their `\n`; empty lines included, so the
/// position is the 0-based line number), split with a vectorised search.
pub fn lines(batch: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = batch;
    let mut done = batch.is_empty();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                let line = &rest[..i];
                rest = &rest[i + 1..];
                done = rest.is_empty();
                Some(line)
            }
            None => {
                done = true;
                Some(rest)
            }
        }
    })
}

/// The default [`Transform::batch`]: parse each line into a [`Record`], call
/// [`Transform::record`], write the kept records back. Available to plugins that
/// override `batch` with a fast path and fall back to this.
pub fn batch_by_record<T: Transform>(
    t: &mut T,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    for (i, line) in lines(input).enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut rec =
            Record::parse(line).map_err(|e| Error::failed(format!("line {}: {e}", i + 1)))?;
        if t.record(&mut rec)? {
            rec.write_to(out);
            out.push(b'\n');
        }
    }
    Ok(())
}

/// Run a transform natively over an NDJSON buffer, as the host would (for tests and
/// benchmarks of plugin logic outside Wasm).
pub fn run_native<T: Transform>(plugin: &mut T, input: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 8);
    plugin.batch(input, &mut out)?;
    Ok(out)
}

/// Log through the host (shows in `weir serve`'s log, tagged with tenant and plugin).
pub mod log {
    use crate::bindings::weir::plugin::host::{self, Level};
    pub fn info(msg: &str) {
        host::log(Level::Info, msg)
    }
    pub fn warn(msg: &str) {
        host::log(Level::Warn, msg)
    }
    pub fn error(msg: &str) {
        host::log(Level::Error, msg)
    }
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    use std::any::Any;
    use std::cell::RefCell;

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<T: Transform>(config: &str) -> Result<(), PluginError> {
        let value: serde_json::Value = if config.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(config)
                .map_err(|e| PluginError::InvalidConfig(format!("config is not JSON: {e}")))?
        };
        let t = T::new(&value)?;
        INSTANCE.with(|i| *i.borrow_mut() = Some(Box::new(t)));
        Ok(())
    }

    pub fn process<T: Transform>(batch: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        INSTANCE.with(|i| {
            let mut slot = i.borrow_mut();
            let t = slot
                .as_mut()
                .and_then(|b| b.downcast_mut::<T>())
                .ok_or_else(|| PluginError::Failed("process called before init".into()))?;
            run_native(t, &batch).map_err(Into::into)
        })
    }

    fn with<T: Stateful, R>(f: impl FnOnce(&mut T) -> R) -> Option<R> {
        INSTANCE.with(|i| {
            let mut slot = i.borrow_mut();
            slot.as_mut().and_then(|b| b.downcast_mut::<T>()).map(f)
        })
    }

    pub fn step<T: Migration>() -> (u32, u32) {
        INSTANCE.with(|i| {
            i.borrow()
                .as_ref()
                .and_then(|b| b.downcast_ref::<T>())
                .map_or((0, 0), |t| t.step())
        })
    }

    pub fn agg_init<T: Aggregator>(config: &str) -> Result<(), PluginError> {
        let value: serde_json::Value = if config.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(config)
                .map_err(|e| PluginError::InvalidConfig(format!("config is not JSON: {e}")))?
        };
        let t = T::new(&value)?;
        INSTANCE.with(|i| *i.borrow_mut() = Some(Box::new(t)));
        Ok(())
    }

    /// Run `f` on the aggregator made by `agg_init`.
    pub fn agg<T: Aggregator, R>(f: impl FnOnce(&T) -> Result<R, Error>) -> Result<R, PluginError> {
        INSTANCE.with(|i| {
            let slot = i.borrow();
            let t = slot
                .as_ref()
                .and_then(|b| b.downcast_ref::<T>())
                .ok_or_else(|| PluginError::Failed("called before init".into()))?;
            f(t).map_err(Into::into)
        })
    }

    pub fn snapshot<T: Stateful>() -> State {
        with::<T, _>(|t| t.snapshot()).unwrap_or(State {
            format: 0,
            data: Vec::new(),
        })
    }

    pub fn restore<T: Stateful>(state: State) -> Result<(), PluginError> {
        with::<T, _>(|t| t.restore(state))
            .unwrap_or_else(|| Err(Error::failed("restore called before init")))
            .map_err(Into::into)
    }
}

/// Export a [`Transform`] as the plugin's `weir:plugin/transform` world.
#[macro_export]
macro_rules! export_transform {
    ($t:ty) => {
        const _: () = {
            struct __WeirExport;
            impl $crate::bindings::Guest for __WeirExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), $crate::bindings::weir::plugin::types::PluginError>
                {
                    $crate::__private::init::<$t>(&config)
                }
                fn process(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<u8>,
                    $crate::bindings::weir::plugin::types::PluginError,
                > {
                    $crate::__private::process::<$t>(batch)
                }
            }
            $crate::bindings::__export_transform_world!(__WeirExport);
        };
    };
}

/// Export a [`Stateful`] transform as the plugin's `weir:plugin/stateful-transform` world.
#[macro_export]
macro_rules! export_stateful_transform {
    ($t:ty) => {
        const _: () = {
            use $crate::bindings::weir::plugin::types::PluginError as __PluginError;
            use $crate::stateful_bindings::State as __WitState;
            struct __WeirExport;
            impl $crate::stateful_bindings::Guest for __WeirExport {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), __PluginError> {
                    $crate::__private::init::<$t>(&config)
                }
                fn process(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, __PluginError> {
                    $crate::__private::process::<$t>(batch)
                }
                fn snapshot() -> __WitState {
                    let s = $crate::__private::snapshot::<$t>();
                    __WitState {
                        format: s.format,
                        data: s.data,
                    }
                }
                fn restore(state: __WitState) -> ::std::result::Result<(), __PluginError> {
                    $crate::__private::restore::<$t>($crate::State {
                        format: state.format,
                        data: state.data,
                    })
                }
            }
            $crate::stateful_bindings::__export_stateful_world!(__WeirExport);
        };
    };
}

/// Export a [`Migration`] as the plugin's `weir:plugin/migration` world.
#[macro_export]
macro_rules! export_migration {
    ($t:ty) => {
        const _: () = {
            use $crate::bindings::weir::plugin::types::PluginError as __PluginError;
            use $crate::migration_bindings::SchemaStep as __Step;
            struct __WeirExport;
            impl $crate::migration_bindings::Guest for __WeirExport {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), __PluginError> {
                    $crate::__private::init::<$t>(&config)
                }
                fn step() -> __Step {
                    let (reads, writes) = $crate::__private::step::<$t>();
                    __Step { reads, writes }
                }
                fn migrate(
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, __PluginError> {
                    $crate::__private::process::<$t>(batch)
                }
            }
            $crate::migration_bindings::__export_migration_world!(__WeirExport);
        };
    };
}

/// Export an [`Aggregator`] as the plugin's `weir:plugin/aggregator` world.
#[macro_export]
macro_rules! export_aggregator {
    ($t:ty) => {
        const _: () = {
            use $crate::aggregator_bindings::State as __WitState;
            use $crate::bindings::weir::plugin::types::PluginError as __PluginError;
            type __R<T> = ::std::result::Result<T, __PluginError>;
            fn __in(s: __WitState) -> $crate::State {
                $crate::State {
                    format: s.format,
                    data: s.data,
                }
            }
            fn __out(s: $crate::State) -> __WitState {
                __WitState {
                    format: s.format,
                    data: s.data,
                }
            }
            struct __WeirExport;
            impl $crate::aggregator_bindings::Guest for __WeirExport {
                fn init(config: ::std::string::String) -> __R<()> {
                    $crate::__private::agg_init::<$t>(&config)
                }
                fn empty() -> __WitState {
                    __out(
                        $crate::__private::agg::<$t, _>(|a| Ok(a.empty())).unwrap_or(
                            $crate::State {
                                format: 0,
                                data: ::std::vec::Vec::new(),
                            },
                        ),
                    )
                }
                fn update(acc: __WitState, batch: ::std::vec::Vec<u8>) -> __R<__WitState> {
                    $crate::__private::agg::<$t, _>(|a| a.update(__in(acc), &batch)).map(__out)
                }
                fn merge(a: __WitState, b: __WitState) -> __R<__WitState> {
                    $crate::__private::agg::<$t, _>(|x| x.merge(__in(a), __in(b))).map(__out)
                }
                fn snapshot(acc: __WitState) -> __R<__WitState> {
                    $crate::__private::agg::<$t, _>(|a| a.snapshot(__in(acc))).map(__out)
                }
                fn restore(acc: __WitState) -> __R<__WitState> {
                    $crate::__private::agg::<$t, _>(|a| a.restore(__in(acc))).map(__out)
                }
                fn finish(acc: __WitState) -> __R<::std::string::String> {
                    $crate::__private::agg::<$t, _>(|a| a.finish(__in(acc)).map(|v| v.to_string()))
                }
            }
            $crate::aggregator_bindings::__export_aggregator_world!(__WeirExport);
        };
    };
}
