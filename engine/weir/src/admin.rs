//! The admin API, on its own listener, behind the admin token.
//!
//! - `PUT /admin/v1/tenants/{tenant}/plugins/{name}` (body: a Wasm component): validated
//!   (a component, the `weir:plugin/transform@0.1.0` world, compiles, fits the size
//!   limit) and stored as the next version → `{"name","version","world","sha256"}`.
//!   The first version of a plugin becomes active; later ones wait for `activate`.
//! - `GET .../plugins`, `GET .../plugins/{name}`: versions and the active one.
//! - `POST .../plugins/{name}/activate` `{"version":N}`: takes effect on every partition
//!   at its next batch boundary (rollback = activating an older version).
//! - `DELETE .../plugins/{name}`: refused (409) while a pipeline names it.
//! - `PUT /admin/v1/tenants/{tenant}/pipelines/{stream}` with
//!   `{"plugins":[{"plugin":"NAME","config":{...}}]}`: every plugin is resolved, compiled
//!   and initialised with its config before the pipeline is stored; then it takes effect
//!   on every partition at its next batch boundary. Persisted; overrides the config file.
//! - `GET .../pipelines`, `GET .../pipelines/{stream}`: the pipelines in effect, with
//!   `"source": "admin" | "config"`.
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
use weir_core::Config;
use weir_pipeline::{Catalog, PipelineDoc, RegistryError, UploadError};

pub struct AdminState {
    pub config: Arc<Config>,
    pub catalog: Arc<Catalog>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    let limit = state.config.admin.max_plugin_bytes;
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
        .route("/admin/v1/tenants/{tenant}/pipelines", get(list_pipelines))
        .route(
            "/admin/v1/tenants/{tenant}/pipelines/{stream}",
            get(show_pipeline).put(set_pipeline),
        )
        .layer(DefaultBodyLimit::max(limit))
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((status, why)) = authorize(&state, &headers, &tenant) {
        return err(status, why);
    }
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
        Ok(Err(UploadError::Invalid(e))) => err(StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Err(UploadError::Registry(e))) => registry_err(e),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn list(
    State(state): State<Arc<AdminState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, why)) = authorize(&state, &headers, &tenant) {
        return err(status, why);
    }
    match state.catalog.registry().list(&tenant) {
        Ok(l) => Json(json!({ "plugins": l })).into_response(),
        Err(e) => registry_err(e),
    }
}

async fn show(
    State(state): State<Arc<AdminState>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, why)) = authorize(&state, &headers, &tenant) {
        return err(status, why);
    }
    match state.catalog.registry().get(&tenant, &name) {
        Ok(p) => Json(json!({
            "name": p.name, "active": p.active, "versions": p.versions,
            "used_by": state.catalog.streams_using(&tenant, &name),
        }))
        .into_response(),
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((status, why)) = authorize(&state, &headers, &tenant) {
        return err(status, why);
    }
    let Ok(a) = serde_json::from_slice::<Activate>(&body) else {
        return err(StatusCode::BAD_REQUEST, "expected {\"version\": N}");
    };
    match state.catalog.registry().activate(&tenant, &name, a.version) {
        Ok(meta) => {
            tracing::info!(%tenant, plugin = %name, version = meta.version, "plugin version activated");
            Json(json!({ "name": meta.name, "active": meta.version, "sha256": meta.sha256 }))
                .into_response()
        }
        Err(e) => registry_err(e),
    }
}

async fn remove(
    State(state): State<Arc<AdminState>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, why)) = authorize(&state, &headers, &tenant) {
        return err(status, why);
    }
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
            "stream": stream, "plugins": doc.plugins, "source": "admin",
            "updated_at_ms": doc.updated_at_ms,
        }),
        None => json!({
            "stream": stream, "plugins": state.config.pipeline(tenant, stream), "source": "config",
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineBody {
    plugins: Vec<PluginRef>,
}

async fn set_pipeline(
    State(state): State<Arc<AdminState>>,
    Path((tenant, stream)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((status, why)) = authorize(&state, &headers, &tenant) {
        return err(status, why);
    }
    if !weir_core::names::is_valid_name(&stream) {
        return err(
            StatusCode::BAD_REQUEST,
            "stream names are 1-64 characters of [A-Za-z0-9_.-]",
        );
    }
    let doc = match serde_json::from_slice::<PipelineBody>(&body) {
        Ok(b) => PipelineDoc {
            plugins: b.plugins,
            updated_at_ms: now_ms(),
        },
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"plugins\":[{{\"plugin\":\"NAME\",\"config\":{{...}}}}]}}: {e}"
                ),
            )
        }
    };
    // Resolving may compile and always runs each plugin's init: off the async workers.
    let catalog = state.catalog.clone();
    let (t, s) = (tenant.clone(), stream.clone());
    let res = tokio::task::spawn_blocking(move || {
        if let Err(e) = catalog.check_pipeline(&t, &doc.plugins) {
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
    headers: HeaderMap,
) -> Response {
    if let Err((status, why)) = authorize(&state, &headers, &tenant) {
        return err(status, why);
    }
    Json(pipeline_json(&state, &tenant, &stream)).into_response()
}

async fn list_pipelines(
    State(state): State<Arc<AdminState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, why)) = authorize(&state, &headers, &tenant) {
        return err(status, why);
    }
    let all: Vec<_> = state
        .catalog
        .streams(&tenant)
        .iter()
        .map(|s| pipeline_json(&state, &tenant, s))
        .collect();
    Json(json!({ "pipelines": all })).into_response()
}
