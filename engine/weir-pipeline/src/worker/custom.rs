//! [`WasmFns`]: custom aggregation functions (`wasm(NAME)`) on their plugins.
//!
//! One instance per tenant and plugin, made on first use and dropped when the tenant's
//! catalog generation changes (a new version was activated: the next call uses it, and
//! accumulators of the old version's format go through the new version's `restore`).
//! Instances hold no accumulator, so dropping one loses nothing.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use weir_agg::{CustomFns, CustomState};
use weir_plugin_host::{PluginInstance, PluginState};

use crate::catalog::Catalog;

pub(super) struct WasmFns {
    catalog: Arc<Catalog>,
    instances: HashMap<(String, String), (u64, PluginInstance)>,
}

fn to_host(s: CustomState) -> PluginState {
    PluginState {
        format: s.format,
        data: s.data,
    }
}

fn from_host(s: PluginState) -> CustomState {
    CustomState {
        format: s.format,
        data: s.data,
    }
}

impl WasmFns {
    pub(super) fn new(catalog: Arc<Catalog>) -> WasmFns {
        WasmFns {
            catalog,
            instances: HashMap::new(),
        }
    }

    fn instance(&mut self, tenant: &str, plugin: &str) -> Result<&mut PluginInstance, String> {
        let generation = self.catalog.generation(tenant);
        let key = (tenant.to_owned(), plugin.to_owned());
        let stale = self
            .instances
            .get(&key)
            .is_none_or(|(g, _)| *g != generation);
        if stale {
            let inst = self
                .catalog
                .aggregator_instance(tenant, plugin)
                .map_err(|e| e.to_string())?;
            self.instances.insert(key.clone(), (generation, inst));
        }
        Ok(&mut self.instances.get_mut(&key).expect("just inserted").1)
    }
}

impl CustomFns for WasmFns {
    fn empty(&mut self, tenant: &str, plugin: &str) -> Result<CustomState, String> {
        let i = self.instance(tenant, plugin)?;
        i.agg_empty().map(from_host).map_err(|e| e.to_string())
    }

    fn update(
        &mut self,
        tenant: &str,
        plugin: &str,
        acc: CustomState,
        batch: &[u8],
    ) -> Result<CustomState, String> {
        let i = self.instance(tenant, plugin)?;
        i.agg_update(to_host(acc), batch)
            .map(from_host)
            .map_err(|e| e.to_string())
    }

    fn merge(
        &mut self,
        tenant: &str,
        plugin: &str,
        a: CustomState,
        b: CustomState,
    ) -> Result<CustomState, String> {
        let i = self.instance(tenant, plugin)?;
        i.agg_merge(to_host(a), to_host(b))
            .map(from_host)
            .map_err(|e| e.to_string())
    }

    fn snapshot(
        &mut self,
        tenant: &str,
        plugin: &str,
        acc: CustomState,
    ) -> Result<CustomState, String> {
        let i = self.instance(tenant, plugin)?;
        i.agg_snapshot(to_host(acc))
            .map(from_host)
            .map_err(|e| e.to_string())
    }

    fn finish(&mut self, tenant: &str, plugin: &str, acc: &CustomState) -> Result<Value, String> {
        let i = self.instance(tenant, plugin)?;
        let text = i
            .agg_finish(to_host(acc.clone()))
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| format!("finish returned no JSON: {e}"))
    }
}
