//! The live view of every tenant the engine serves: its record, its knowledge index and its
//! provider client. The gateway updates it when the admin or tenant API changes a tenant; actors
//! read it at every turn, so a settings change applies to the next turn without a restart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use engine::TenantId;
use engine::knowledge::KnowledgeIndex;
use engine::ports::{Provider, ProviderFactory};
use engine::tenant::Tenant;

/// One tenant, ready to serve.
#[derive(Debug)]
pub struct TenantRuntime {
    pub tenant: Tenant,
    pub index: Arc<KnowledgeIndex>,
    pub provider: Arc<dyn Provider>,
}

#[derive(Debug, Clone)]
pub struct TenantDirectory {
    tenants: Arc<RwLock<HashMap<TenantId, Arc<TenantRuntime>>>>,
    factory: Arc<dyn ProviderFactory>,
}

impl TenantDirectory {
    pub fn new(factory: Arc<dyn ProviderFactory>) -> Self {
        Self {
            tenants: Arc::default(),
            factory,
        }
    }

    pub fn get(&self, id: &TenantId) -> Option<Arc<TenantRuntime>> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<TenantRuntime>> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.tenants.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces a tenant. The provider client is rebuilt only when the provider
    /// configuration changed; the index is kept unless a new one is given.
    pub fn upsert(&self, tenant: Tenant, index: Option<Arc<KnowledgeIndex>>) {
        let mut map = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        let previous = map.get(&tenant.id);
        let provider = match previous {
            Some(p) if p.tenant.provider == tenant.provider => p.provider.clone(),
            _ => self.factory.provider(&tenant),
        };
        let index = index
            .or_else(|| previous.map(|p| p.index.clone()))
            .unwrap_or_default();
        map.insert(
            tenant.id.clone(),
            Arc::new(TenantRuntime {
                tenant,
                index,
                provider,
            }),
        );
    }

    /// Replaces a tenant's knowledge index.
    pub fn set_index(&self, id: &TenantId, index: Arc<KnowledgeIndex>) {
        let mut map = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = map.get(id) {
            let updated = TenantRuntime {
                tenant: rt.tenant.clone(),
                index,
                provider: rt.provider.clone(),
            };
            map.insert(id.clone(), Arc::new(updated));
        }
    }

    pub fn remove(&self, id: &TenantId) {
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}
