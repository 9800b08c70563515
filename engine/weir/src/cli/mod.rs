//! The plugin developer's CLI: `weir plugin new|build|run|bench|upload|list|activate` and
//! `weir pipeline set|get`.
//!
//! Layout: [`scaffold`] writes a new plugin project per language, [`toolchain`] turns a
//! project into a component with that language's toolchain, [`remote`] wraps the admin
//! API. A project is a directory with a `weir-plugin.toml` manifest (`name`, `lang`) and
//! the WIT contract in `wit/`.

mod measure;
mod remote;
mod scaffold;
mod toolchain;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::Deserialize;

/// The WIT contract carried by the binary, written into new projects.
pub const PLUGIN_WIT: &str = include_str!("../../../../wit/plugin.wit");

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Rust,
    C,
    Python,
    Js,
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a working plugin project (a pass-through transform) in DIR.
    New {
        #[arg(long, value_enum)]
        lang: Lang,
        dir: PathBuf,
        /// Plugin name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Build the project in the current directory (or --dir) into a component; the
    /// last line of the output is the component's path.
    Build {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run a component locally on NDJSON from stdin, under the default sandbox limits;
    /// the output goes to stdout.
    Run {
        wasm: PathBuf,
        /// The plugin's config (JSON).
        #[arg(long, default_value = "{}")]
        config: String,
    },
    /// Measure a component in this host: compile and instantiate time, throughput on
    /// the realistic sample records (or --input NDJSON). Prints one JSON line.
    Bench {
        wasm: PathBuf,
        #[arg(long, default_value = "{}")]
        config: String,
        /// NDJSON file to use as the batch instead of generated sample records.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Records per batch of generated sample records.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Upload a component as the next version of a plugin.
    Upload {
        #[command(flatten)]
        admin: AdminArgs,
        /// Plugin name.
        name: String,
        wasm: PathBuf,
    },
    /// List a tenant's plugins, or show one.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        name: Option<String>,
    },
    /// Make a version active (rollback = an older version).
    Activate {
        #[command(flatten)]
        admin: AdminArgs,
        name: String,
        version: u32,
    },
}

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Set a stream's pipeline: each PLUGIN is NAME or NAME=CONFIG_JSON, in order.
    Set {
        #[command(flatten)]
        admin: AdminArgs,
        stream: String,
        plugins: Vec<String>,
    },
    /// Show a stream's pipeline (or every pipeline of the tenant).
    Get {
        #[command(flatten)]
        admin: AdminArgs,
        stream: Option<String>,
    },
}

/// Where the admin API is and who is asking.
#[derive(Args)]
pub struct AdminArgs {
    /// Admin API base URL.
    #[arg(long, env = "WEIR_ADMIN_URL", default_value = "http://127.0.0.1:7073")]
    pub admin_url: String,
    /// Admin token.
    #[arg(long, env = "WEIR_ADMIN_TOKEN")]
    pub token: String,
    /// Tenant whose plugins and pipelines are meant.
    #[arg(long, env = "WEIR_TENANT")]
    pub tenant: String,
}

/// `weir-plugin.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub lang: Lang,
}

impl Manifest {
    pub fn load(dir: &std::path::Path) -> Result<Manifest> {
        let path = dir.join("weir-plugin.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("read {} (is this a plugin project?)", path.display()))?;
        let m: Manifest =
            toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        if !weir_core::names::is_valid_name(&m.name) {
            bail!(
                "{}: name must be 1-64 characters of [A-Za-z0-9_.-]",
                path.display()
            );
        }
        Ok(m)
    }
}

pub async fn plugin(cmd: PluginCommand) -> Result<()> {
    match cmd {
        PluginCommand::New { lang, dir, name } => scaffold::new(lang, &dir, name),
        PluginCommand::Build { dir } => {
            let path = tokio::task::spawn_blocking(move || toolchain::build(&dir)).await??;
            println!("{}", path.display());
            Ok(())
        }
        PluginCommand::Run { wasm, config } => {
            tokio::task::spawn_blocking(move || toolchain::run(&wasm, &config)).await?
        }
        PluginCommand::Bench {
            wasm,
            config,
            input,
            batch,
            seconds,
        } => {
            tokio::task::spawn_blocking(move || {
                let o = measure::Options {
                    config: &config,
                    input: input.as_deref(),
                    batch,
                    seconds,
                };
                measure::bench(&wasm, &o)
            })
            .await?
        }
        PluginCommand::Upload { admin, name, wasm } => remote::upload(&admin, &name, &wasm).await,
        PluginCommand::List { admin, name } => remote::list(&admin, name.as_deref()).await,
        PluginCommand::Activate {
            admin,
            name,
            version,
        } => remote::activate(&admin, &name, version).await,
    }
}

pub async fn pipeline(cmd: PipelineCommand) -> Result<()> {
    match cmd {
        PipelineCommand::Set {
            admin,
            stream,
            plugins,
        } => remote::set_pipeline(&admin, &stream, &plugins).await,
        PipelineCommand::Get { admin, stream } => {
            remote::get_pipeline(&admin, stream.as_deref()).await
        }
    }
}
