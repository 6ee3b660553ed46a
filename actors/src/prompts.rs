//! The last LLM prompt of recent conversations, for the tenant API's debug endpoint. Bounded: the
//! oldest entries are forgotten first, so it never grows with the number of conversations.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use engine::prompt::LlmRequest;
use engine::{ContactId, TenantId};

const CAPACITY: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct PromptLog(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    prompts: HashMap<(TenantId, ContactId), Arc<LlmRequest>>,
    order: VecDeque<(TenantId, ContactId)>,
}

impl PromptLog {
    pub fn record(&self, tenant: &TenantId, contact: &ContactId, request: LlmRequest) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.clone(), contact.clone());
        if inner
            .prompts
            .insert(key.clone(), Arc::new(request))
            .is_some()
        {
            inner.order.retain(|k| k != &key);
        }
        inner.order.push_back(key);
        while inner.order.len() > CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.prompts.remove(&old);
            }
        }
    }

    pub fn get(&self, tenant: &TenantId, contact: &ContactId) -> Option<Arc<LlmRequest>> {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .prompts
            .get(&(tenant.clone(), contact.clone()))
            .cloned()
    }

    pub fn forget_tenant(&self, tenant: &TenantId) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.prompts.retain(|(t, _), _| t != tenant);
        inner.order.retain(|(t, _)| t != tenant);
    }
}
