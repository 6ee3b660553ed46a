//! The live view of every tenant the engine serves: its record, its knowledge index and its
//! provider client. The gateway updates it when the admin or tenant API changes a tenant; actors
//! read it at every turn, so a settings change applies to the next turn without a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

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
    /// Paces the tenant's outbound messages to `outbound_rate_per_sec`.
    pub pacer: Arc<Pacer>,
}

/// Spaces sends evenly so a tenant never exceeds its provider's rate. Every sender of the tenant
/// takes the next free slot; each conversation's sender is sequential, so order is kept per
/// conversation while conversations share the tenant's rate fairly (first come, first served).
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    interval: Duration,
    next: Mutex<tokio::time::Instant>,
}

impl Pacer {
    pub fn new(rate_per_sec: f64) -> Self {
        let rate = rate_per_sec.max(0.1);
        Self {
            rate,
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for this caller's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
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
        let rate = tenant.settings.outbound_rate_per_sec;
        let pacer = match previous {
            Some(p) if p.pacer.rate == rate.max(0.1) => p.pacer.clone(),
            _ => Arc::new(Pacer::new(rate)),
        };
        map.insert(
            tenant.id.clone(),
            Arc::new(TenantRuntime {
                tenant,
                index,
                provider,
                pacer,
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
                pacer: rt.pacer.clone(),
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
