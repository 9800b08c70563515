//! The admin API, on its own listener, behind the admin token.
//!
//! - `PUT /admin/v1/tenants/{tenant}/plugins/{name}` (body: a Wasm component): validated
//!   (a component, the `weir:plugin/transform@0.1.0` world, compiles, fits the size
//!   limit) and stored as the next version → `{"name","version","world","sha256"}`.
//!   Compiled in a child process under `[plugins] compile_timeout_ms` and
//!   `compile_memory_mb`, then instantiated once (no export called) under the tenant's
//!   memory cap. 400: not a component, wrong world, does not compile; 413: too large;
//!   422: valid but over a sandbox limit (compile time or memory, memory or memories,
//!   tables, core instances to start); 503 + `Retry-After`: the tenant's
//!   (`max_compiles_per_tenant`) or everyone's (`max_concurrent_compiles`)
//!   compilations are all busy.
//!   The first version of a plugin becomes active; later ones wait for `activate`.
//! - `GET .../plugins`, `GET .../plugins/{name}`: versions and the active one.
//! - `POST .../plugins/{name}/activate` `{"version":N}`: takes effect on every partition
//!   at its next batch boundary (rollback = activating an older version).
//! - `DELETE .../plugins/{name}`: refused (409) while a pipeline names it.
//! - `POST .../plugins/{name}/shadow` `{"version":N}`, `DELETE .../shadow`: run version N
//!   in shadow mode next to the active one (same input, output compared and dropped;
//!   counts in `GET .../plugins/{name}` and `/metrics`).
//! - `PUT /admin/v1/tenants/{tenant}/pipelines/{stream}` with
//!   `{"plugins":[{"plugin":"NAME","config":{...}}]}`: every plugin is resolved, compiled
//!   and initialised with its config before the pipeline is stored; then it takes effect
//!   on every partition at its next batch boundary. Persisted; overrides the config file.
//! - `GET .../pipelines`, `GET .../pipelines/{stream}`: the pipelines in effect, with
//!   `"source": "admin" | "config"`.
//!
//! - `GET .../dead-letters[?stream=S]`: batches a plugin failed on, with plugin, version,
//!   error and offsets (`id` = `PARTITION-OFFSET`), records left out.
//! - `POST .../dead-letters/replay` `{"stream"?:S, "ids"?:[...]}` (all when no ids): the
//!   records go back into the log and through the stream's current pipeline. The store
//!   lands a replay only while its dead letter exists and removes it in the same commit,
//!   so a dead letter replayed twice lands once.
//!
//! - `PUT /admin/v1/tenants/{tenant}/retention` with `{"hot"?, "hot_mb"?, "cold"?,
//!   "streams"?: {S: {...}}}` (see `weir_core::retention`): replaces the tenant's
//!   retention, durably, from the janitor's next pass and every query from now on;
//!   `GET` shows the one in effect with `"source": "admin" | "config"`; `DELETE` goes
//!   back to the config file's.
//!
//! Tenant data tokens get 403 here, anything else without the admin token 401.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use weir_core::config::PluginRef;
use weir_core::Batch;
use weir_core::Config;
use weir_pipeline::{Catalog, PipelineDoc, RegistryError, UploadError, WorkerMetrics};
use weir_plugin_host::HostError;
use weir_store::HotStore;
use weir_transport::Log;

pub struct AdminState {
    pub config: Arc<Config>,
    pub catalog: Arc<Catalog>,
    /// Replays append dead letters' records back to the log...
    pub log: Arc<dyn Log>,
    /// ...from the hot store's dead-letter table.
    pub store: Arc<HotStore>,
    pub metrics: Arc<WorkerMetrics>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    let limit = state.config.admin.max_plugin_bytes;
    let auth = axum::middleware::from_fn_with_state(state.clone(), require_admin);
    Router::new()
        .route("/admin/v1/tenants/{tenant}/plugins", get(list))
        .route(
            "/admin/v1/tenants/{tenant}/plugins/{name}",
            get(show).put(upload).delete(remove),
        )
        .route(
            "/admin/v1/tenants/{tenant}/plugins/{name}/activate",
            post(activate),
        )
        .route(
            "/admin/v1/tenants/{tenant}/plugins/{name}/shadow",
            post(start_shadow).delete(stop_shadow),
        )
        .route("/admin/v1/tenants/{tenant}/pipelines", get(list_pipelines))
        .route("/admin/v1/tenants/{tenant}/dead-letters", get(list_dead))
        .route(
            "/admin/v1/tenants/{tenant}/dead-letters/replay",
            post(replay_dead),
        )
        .route(
            "/admin/v1/tenants/{tenant}/pipelines/{stream}",
            get(show_pipeline).put(set_pipeline),
        )
        .route(
            "/admin/v1/tenants/{tenant}/retention",
            get(show_retention)
                .put(set_retention)
                .delete(reset_retention),
        )
        // Every route is a tenant's: the admin token and an existing tenant first.
        .layer(auth)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            limit,
            crate::body_limit::refuse_announced_over,
        ))
        .with_state(state)
}

fn err(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Admin token, or 401 (403 for a tenant's data token); then the tenant must exist.
fn authorize(
    state: &AdminState,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<(), (StatusCode, String)> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match (token, state.config.admin.token.as_deref()) {
        (Some(t), Some(admin)) if t == admin => {}
        (Some(t), _) if state.config.tenant_for_token(t).is_some() => {
            return Err((
                StatusCode::FORBIDDEN,
                "a tenant data token cannot use the admin API".into(),
            ))
        }
        _ => {
            return Err((
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token".into(),
            ))
        }
    }
    if !state.config.tenants.contains_key(tenant) {
        return Err((StatusCode::NOT_FOUND, format!("no tenant {tenant:?}")));
    }
    Ok(())
}

/// The admin token and the tenant of `/admin/v1/tenants/{tenant}/...` for every route.
async fn require_admin(
    State(state): State<Arc<AdminState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let tenant = req
        .uri()
        .path()
        .strip_prefix("/admin/v1/tenants/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
        .to_owned();
    if let Err((status, why)) = authorize(&state, req.headers(), &tenant) {
        return err(status, why);
    }
    next.run(req).await
}

fn registry_err(e: RegistryError) -> Response {
    match e {
        RegistryError::NotFound(_) | RegistryError::NoVersion { .. } => {
            err(StatusCode::NOT_FOUND, e.to_string())
        }
        RegistryError::Storage(_) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn upload(
    State(state): State<Arc<AdminState>>,
    Path((tenant, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if !weir_core::names::is_valid_name(&name) {
        return err(
            StatusCode::BAD_REQUEST,
            "plugin names are 1-64 characters of [A-Za-z0-9_.-]",
        );
    }
    let now = now_ms();
    // Compiling takes milliseconds to seconds: keep it off the async workers.
    let catalog = state.catalog.clone();
    let res = tokio::task::spawn_blocking(move || catalog.upload(&tenant, &name, &body, now)).await;
    match res {
        Ok(Ok(meta)) => Json(json!({
            "name": meta.name, "version": meta.version, "world": meta.world, "sha256": meta.sha256,
        }))
        .into_response(),
        Ok(Err(e @ UploadError::TooLarge { .. })) => {
            err(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        Ok(Err(e @ UploadError::Busy(_))) => {
            let mut r = err(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            r
        }
        // Valid WebAssembly that needs more than the sandbox gives: time or memory to
        // compile, memory or memories/tables/instances to start.
        Ok(Err(UploadError::Invalid(e @ (HostError::Limit(_) | HostError::CompileLimit(_))))) => {
            err(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Ok(Err(UploadError::Invalid(HostError::Engine(e)))) => {
            err(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
        Ok(Err(UploadError::Invalid(e))) => err(StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Err(UploadError::Registry(e))) => registry_err(e),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn list(State(state): State<Arc<AdminState>>, Path(tenant): Path<String>) -> Response {
    match state.catalog.registry().list(&tenant) {
        Ok(l) => Json(json!({ "plugins": l })).into_response(),
        Err(e) => registry_err(e),
    }
}

async fn show(
    State(state): State<Arc<AdminState>>,
    Path((tenant, name)): Path<(String, String)>,
) -> Response {
    let registry = state.catalog.registry();
    match registry.get(&tenant, &name) {
        Ok(p) => {
            let metrics: serde_json::Map<String, serde_json::Value> = p
                .versions
                .iter()
                .map(|v| {
                    let version = v.version.to_string();
                    (
                        version.clone(),
                        version_metrics(&state.metrics, &tenant, &name, &version),
                    )
                })
                .collect();
            let shadow = registry.shadow(&tenant, &name).ok().flatten().map(|v| {
                let version = v.to_string();
                let c = counter_of(&tenant, &name, &version);
                let m = &state.metrics;
                json!({
                    "version": v, "calls": c(&m.shadow_calls), "errors": c(&m.shadow_errors),
                    "diff_records": c(&m.shadow_diff_records),
                })
            });
            Json(json!({
                "name": p.name, "active": p.active, "versions": p.versions,
                "used_by": state.catalog.streams_using(&tenant, &name),
                "events": registry.events(&tenant, &name).unwrap_or_default(),
                "metrics": metrics,
                "shadow": shadow,
            }))
            .into_response()
        }
        Err(e) => registry_err(e),
    }
}

#[derive(Deserialize)]
struct Activate {
    version: u32,
}

async fn activate(
    State(state): State<Arc<AdminState>>,
    Path((tenant, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(a) = serde_json::from_slice::<Activate>(&body) else {
        return err(StatusCode::BAD_REQUEST, "expected {\"version\": N}");
    };
    match state.catalog.activate(&tenant, &name, a.version) {
        Ok(meta) => {
            tracing::info!(%tenant, plugin = %name, version = meta.version, "plugin version activated");
            Json(json!({ "name": meta.name, "active": meta.version, "sha256": meta.sha256 }))
                .into_response()
        }
        Err(e) => registry_err(e),
    }
}

async fn start_shadow(
    State(state): State<Arc<AdminState>>,
    Path((tenant, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(a) = serde_json::from_slice::<Activate>(&body) else {
        return err(StatusCode::BAD_REQUEST, "expected {\"version\": N}");
    };
    match state
        .catalog
        .registry()
        .set_shadow(&tenant, &name, Some(a.version))
    {
        Ok(()) => {
            tracing::info!(%tenant, plugin = %name, version = a.version, "shadow version started");
            Json(json!({ "name": name, "shadow": a.version })).into_response()
        }
        Err(e) => registry_err(e),
    }
}

async fn stop_shadow(
    State(state): State<Arc<AdminState>>,
    Path((tenant, name)): Path<(String, String)>,
) -> Response {
    match state.catalog.registry().set_shadow(&tenant, &name, None) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => registry_err(e),
    }
}

async fn remove(
    State(state): State<Arc<AdminState>>,
    Path((tenant, name)): Path<(String, String)>,
) -> Response {
    let users = state.catalog.streams_using(&tenant, &name);
    if !users.is_empty() {
        return err(
            StatusCode::CONFLICT,
            format!("plugin {name:?} is used by the pipelines of streams {users:?}"),
        );
    }
    match state.catalog.registry().delete(&tenant, &name) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => registry_err(e),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The pipeline in effect for a stream, and where it comes from.
fn pipeline_json(state: &AdminState, tenant: &str, stream: &str) -> serde_json::Value {
    match state.catalog.registry().pipeline(tenant, stream) {
        Some(doc) => json!({
            "stream": stream, "plugins": doc.plugins, "aggregations": doc.aggregations,
            "source": "admin", "updated_at_ms": doc.updated_at_ms,
        }),
        None => json!({
            "stream": stream, "plugins": state.config.pipeline(tenant, stream),
            "aggregations": state.config.aggregations(tenant, stream), "source": "config",
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineBody {
    #[serde(default)]
    plugins: Vec<PluginRef>,
    #[serde(default)]
    aggregations: Vec<weir_core::aggregation::AggregationConfig>,
}

async fn set_pipeline(
    State(state): State<Arc<AdminState>>,
    Path((tenant, stream)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if !weir_core::names::is_valid_name(&stream) {
        return err(
            StatusCode::BAD_REQUEST,
            "stream names are 1-64 characters of [A-Za-z0-9_.-]",
        );
    }
    let doc = match serde_json::from_slice::<PipelineBody>(&body) {
        Ok(b) => PipelineDoc {
            plugins: b.plugins,
            aggregations: b.aggregations,
            updated_at_ms: now_ms(),
        },
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"plugins\":[{{\"plugin\":\"NAME\",\"config\":{{...}}}}],\"aggregations\":[...]}}: {e}"
                ),
            )
        }
    };
    // Resolving may compile and always runs each plugin's init: off the async workers.
    let catalog = state.catalog.clone();
    let (t, s) = (tenant.clone(), stream.clone());
    let res = tokio::task::spawn_blocking(move || {
        if let Err(e) =
            weir_pipeline::Catalog::check_aggregations(&s, &doc.plugins, &doc.aggregations)
                .and_then(|()| catalog.check_pipeline(&t, &s, &doc.plugins))
                .and_then(|()| catalog.check_aggregator_plugins(&t, &doc.aggregations, false))
        {
            return Err(Box::new(err(StatusCode::BAD_REQUEST, e.to_string())));
        }
        catalog
            .registry()
            .set_pipeline(&t, &s, doc)
            .map_err(|e| Box::new(registry_err(e)))
    })
    .await;
    match res {
        Ok(Ok(())) => {
            tracing::info!(%tenant, %stream, "pipeline set");
            Json(pipeline_json(&state, &tenant, &stream)).into_response()
        }
        Ok(Err(response)) => *response,
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn show_pipeline(
    State(state): State<Arc<AdminState>>,
    Path((tenant, stream)): Path<(String, String)>,
) -> Response {
    Json(pipeline_json(&state, &tenant, &stream)).into_response()
}

async fn list_pipelines(
    State(state): State<Arc<AdminState>>,
    Path(tenant): Path<String>,
) -> Response {
    let all: Vec<_> = state
        .catalog
        .streams(&tenant)
        .iter()
        .map(|s| pipeline_json(&state, &tenant, s))
        .collect();
    Json(json!({ "pipelines": all })).into_response()
}

fn retention_json(state: &AdminState, tenant: &str) -> Response {
    let (doc, source) = state.store.retention(tenant);
    let source = match source {
        weir_store::retention::Source::Api => "admin",
        weir_store::retention::Source::Config => "config",
    };
    let mut v = serde_json::to_value(doc).unwrap_or_default();
    v["source"] = json!(source);
    Json(v).into_response()
}

async fn show_retention(
    State(state): State<Arc<AdminState>>,
    Path(tenant): Path<String>,
) -> Response {
    retention_json(&state, &tenant)
}

async fn set_retention(
    State(state): State<Arc<AdminState>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let doc: weir_core::retention::RetentionDoc = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"hot\"?:\"1h\",\"hot_mb\"?:N,\"cold\"?:\"30d\",\"streams\"?:{{...}}}}: {e}"),
            )
        }
    };
    if let Err(e) = doc.check() {
        return err(StatusCode::BAD_REQUEST, e);
    }
    if let Err(e) = state.store.set_retention(&tenant, Some(&doc)) {
        return err(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    tracing::info!(%tenant, "retention set");
    retention_json(&state, &tenant)
}

async fn reset_retention(
    State(state): State<Arc<AdminState>>,
    Path(tenant): Path<String>,
) -> Response {
    if let Err(e) = state.store.set_retention(&tenant, None) {
        return err(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    retention_json(&state, &tenant)
}

/// Reads a counter family's value for one tenant, plugin and version (0 when unseen).
fn counter_of<'a>(
    tenant: &'a str,
    name: &'a str,
    version: &'a str,
) -> impl Fn(&weir_core::metrics::Family<weir_core::metrics::Counter>) -> u64 + 'a {
    move |f| {
        f.find(&[("tenant", tenant), ("plugin", name), ("version", version)])
            .map_or(0, |c| c.get())
    }
}

/// Calls, errors, traps, records in/out and call time of one version, from `/metrics`.
fn version_metrics(
    m: &WorkerMetrics,
    tenant: &str,
    name: &str,
    version: &str,
) -> serde_json::Value {
    let c = counter_of(tenant, name, version);
    let (calls, secs) = m
        .plugin_seconds
        .find(&[("tenant", tenant), ("plugin", name), ("version", version)])
        .map_or((0, 0.0), |h| (h.count(), h.sum()));
    json!({
        "calls": c(&m.plugin_calls), "errors": c(&m.plugin_errors), "traps": c(&m.plugin_traps),
        "records_in": c(&m.plugin_records_in), "records_out": c(&m.plugin_records_out),
        "call_seconds_sum": secs, "timed_calls": calls,
    })
}

#[derive(Deserialize)]
struct DeadQuery {
    stream: Option<String>,
}

async fn list_dead(
    State(state): State<Arc<AdminState>>,
    Path(tenant): Path<String>,
    axum::extract::Query(q): axum::extract::Query<DeadQuery>,
) -> Response {
    match state
        .store
        .select_dead_letters(&tenant, q.stream.as_deref(), &[])
    {
        Ok(list) => {
            let list: Vec<_> = list
                .iter()
                .map(|d| {
                    json!({
                        "id": d.id(), "stream": d.stream, "partition": d.partition,
                        "offset": d.offset, "count": d.count, "plugin": d.plugin,
                        "plugin_version": d.plugin_version, "plugin_sha256": d.plugin_sha256,
                        "error": d.error, "ingest_ts_ms": d.ingest_ts_ms,
                        "failed_at_ms": d.failed_at_ms, "replay_of": d.replay_of.map(|(p, o)| format!("{p}-{o}")),
                    })
                })
                .collect();
            Json(json!({ "dead_letters": list })).into_response()
        }
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    stream: Option<String>,
    #[serde(default)]
    ids: Vec<String>,
}

async fn replay_dead(
    State(state): State<Arc<AdminState>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let req = if body.is_empty() {
        ReplayBody::default()
    } else {
        match serde_json::from_slice::<ReplayBody>(&body) {
            Ok(r) => r,
            Err(e) => {
                return err(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"stream\"?: S, \"ids\"?: [\"PARTITION-OFFSET\"]}}: {e}"),
                )
            }
        }
    };
    let chosen = match state
        .store
        .select_dead_letters(&tenant, req.stream.as_deref(), &req.ids)
    {
        Ok(c) => c,
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Some(missing) = req
        .ids
        .iter()
        .find(|id| !chosen.iter().any(|d| &d.id() == *id))
    {
        return err(StatusCode::NOT_FOUND, format!("no dead letter {missing:?}"));
    }
    let records: u64 = chosen.iter().map(|d| u64::from(d.count)).sum();
    let items: Vec<(u32, Batch)> = chosen
        .iter()
        .map(|d| {
            (
                d.partition % state.log.partitions(),
                Batch {
                    tenant: d.tenant.clone(),
                    stream: d.stream.clone(),
                    ingest_ts_ms: d.ingest_ts_ms,
                    count: d.count,
                    records: d.records.clone().into_bytes(),
                    replay_of: Some((d.partition, d.offset)),
                },
            )
        })
        .collect();
    if !items.is_empty() {
        let wait = match state.log.append(items) {
            Ok(w) => w,
            Err(e) => return err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        match wait.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            Err(_) => return err(StatusCode::SERVICE_UNAVAILABLE, "the log is closed"),
        }
    }
    tracing::info!(%tenant, dead_letters = chosen.len(), records, "dead letters replayed");
    Json(json!({
        "replayed": chosen.iter().map(|d| d.id()).collect::<Vec<_>>(),
        "records": records,
    }))
    .into_response()
}
