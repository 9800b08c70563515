//! `weir plugin new`: a working pass-through plugin project per language, with the WIT
//! contract, a manifest and a README saying how to build and upload it.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{Lang, PLUGIN_WIT};

const RUST_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen = "0.46"

[profile.release]
opt-level = "s"
strip = true

# A plugin builds on its own, even inside another workspace.
[workspace]
"#;

const RUST_LIB: &str = r#"//! A Weir transform plugin: NDJSON batches in, NDJSON batches out.

// Generates `Guest` (the exports to implement) and `PluginError` from wit/.
wit_bindgen::generate!({ path: "wit", world: "transform" });

struct Plugin;

impl Guest for Plugin {
    /// Called once per instance with the pipeline entry's config (JSON text).
    fn init(_config: String) -> Result<(), PluginError> {
        Ok(())
    }

    /// One batch: one JSON object per line. Return the records to keep, changed or not.
    fn process(batch: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        Ok(batch)
    }
}

export!(Plugin);
"#;

const C_SRC: &str = r#"// A Weir transform plugin: NDJSON batches in, NDJSON batches out.
// `weir plugin build` generates transform.h from wit/ with wit-bindgen.
#include <stdlib.h>

#include "transform.h"

// Called once per instance with the pipeline entry's config (JSON text). Arguments are
// owned by the plugin; error strings must be heap-allocated (transform_string_dup).
bool exports_transform_init(transform_string_t *config, transform_plugin_error_t *err) {
  (void)err;
  transform_string_free(config);
  return true;
}

// One batch: one JSON object per line. Return the records to keep, changed or not.
bool exports_transform_process(transform_list_u8_t *batch, transform_list_u8_t *ret,
                               transform_plugin_error_t *err) {
  (void)err;
  *ret = *batch;  // pass through: hand the input buffer back
  return true;
}
"#;

const PY_APP: &str = r#""""A Weir transform plugin: NDJSON batches in, NDJSON batches out."""

import wit_world


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        """Called once per instance with the pipeline entry's config (JSON text).
        Raise componentize_py_types.Err(PluginError_InvalidConfig(...)) to refuse it."""

    def process(self, batch: bytes) -> bytes:
        """One batch: one JSON object per line. Return the records to keep."""
        return batch
"#;

const JS_SRC: &str = r#"// A Weir transform plugin: NDJSON batches in, NDJSON batches out.

// Called once per instance with the pipeline entry's config (JSON text). Throw
// { tag: "invalid-config", val: "why" } to refuse it.
export function init(config) {}

// One batch (a Uint8Array): one JSON object per line. Return the records to keep.
// Throw { tag: "failed", val: "why" } to send the batch to the dead-letter store.
export function process(batch) {
  return batch;
}
"#;

const README: &str = r#"# {name}

A Weir plugin ({lang}) implementing the `weir:plugin/transform` world in `wit/`.

    weir plugin build                        # last line: the component's path
    echo '{"message":"hi"}' | weir plugin run build/{name}.wasm
    weir plugin upload --tenant T --token ADMIN_TOKEN {name} build/{name}.wasm
    weir pipeline set --tenant T --token ADMIN_TOKEN STREAM {name}

Toolchains come from Weir's `scripts/setup.sh`.
"#;

pub fn new(lang: Lang, dir: &Path, name: Option<String>) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let name = match name {
        Some(n) => n,
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("give --name or a directory with a name")?,
    };
    if !weir_core::names::is_valid_name(&name) {
        bail!("plugin names are 1-64 characters of [A-Za-z0-9_.-], not {name:?}");
    }
    let lang_name = format!("{lang:?}").to_lowercase();
    let mut files: Vec<(&str, String)> = vec![
        ("wit/plugin.wit", PLUGIN_WIT.to_owned()),
        (
            "weir-plugin.toml",
            format!("name = \"{name}\"\nlang = \"{lang_name}\"\n"),
        ),
        (
            "README.md",
            README
                .replace("{name}", &name)
                .replace("{lang}", &lang_name),
        ),
        (".gitignore", "build/\ntarget/\n__pycache__/\n".to_owned()),
    ];
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml", RUST_CARGO.replace("{name}", &name)));
            files.push(("src/lib.rs", RUST_LIB.to_owned()));
        }
        Lang::C => files.push(("src/plugin.c", C_SRC.to_owned())),
        Lang::Python => files.push(("app.py", PY_APP.to_owned())),
        Lang::Js => files.push(("plugin.js", JS_SRC.to_owned())),
    }
    for (path, text) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
    }
    println!("created {lang_name} plugin {name} in {}", dir.display());
    Ok(())
}
