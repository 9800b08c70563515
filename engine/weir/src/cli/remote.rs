//! The admin API from the command line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::AdminArgs;

async fn call(a: &AdminArgs, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Value> {
    let url = format!(
        "{}/admin/v1/tenants/{}/{path}",
        a.admin_url.trim_end_matches('/'),
        a.tenant
    );
    let mut req = reqwest::Client::new()
        .request(method.parse()?, &url)
        .bearer_auth(&a.token);
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let why = value["error"]
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        bail!("{method} {url}: {status}: {why}");
    }
    Ok(value)
}

fn print(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn upload(a: &AdminArgs, name: &str, wasm: &Path) -> Result<()> {
    let bytes = std::fs::read(wasm).with_context(|| format!("read {}", wasm.display()))?;
    print(&call(a, "PUT", &format!("plugins/{name}"), Some(bytes)).await?)
}

pub async fn list(a: &AdminArgs, name: Option<&str>) -> Result<()> {
    let path = match name {
        Some(n) => format!("plugins/{n}"),
        None => "plugins".to_owned(),
    };
    print(&call(a, "GET", &path, None).await?)
}

pub async fn activate(a: &AdminArgs, name: &str, version: u32) -> Result<()> {
    let body = json!({ "version": version }).to_string().into_bytes();
    print(&call(a, "POST", &format!("plugins/{name}/activate"), Some(body)).await?)
}

/// `NAME` or `NAME=CONFIG_JSON` → a pipeline entry.
fn entry(spec: &str) -> Result<Value> {
    Ok(match spec.split_once('=') {
        None => json!({ "plugin": spec }),
        Some((name, config)) => {
            let config: Value = serde_json::from_str(config)
                .with_context(|| format!("config of {name} is not JSON"))?;
            json!({ "plugin": name, "config": config })
        }
    })
}

pub async fn set_pipeline(a: &AdminArgs, stream: &str, plugins: &[String]) -> Result<()> {
    let plugins = plugins
        .iter()
        .map(|p| entry(p))
        .collect::<Result<Vec<_>>>()?;
    let body = json!({ "plugins": plugins }).to_string().into_bytes();
    print(&call(a, "PUT", &format!("pipelines/{stream}"), Some(body)).await?)
}

pub async fn get_pipeline(a: &AdminArgs, stream: Option<&str>) -> Result<()> {
    let path = match stream {
        Some(s) => format!("pipelines/{s}"),
        None => "pipelines".to_owned(),
    };
    print(&call(a, "GET", &path, None).await?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pipeline_entries() {
        assert_eq!(
            super::entry("p").unwrap(),
            serde_json::json!({"plugin": "p"})
        );
        assert_eq!(
            super::entry("builtin:pii-redact={\"action\":\"hash\",\"hash_key\":\"k=v\"}").unwrap(),
            serde_json::json!({"plugin": "builtin:pii-redact", "config": {"action": "hash", "hash_key": "k=v"}})
        );
        assert!(super::entry("p={oops").is_err());
    }
}
