//! Builds each tenant's provider client from its configuration: Evolution, WAHA or Meta's Cloud
//! API, all sharing one HTTP client (one connection pool) and one retry policy.

use std::sync::Arc;

use engine::ports::{Provider, ProviderFactory};
use engine::tenant::{ProviderConfig, Tenant};

use crate::providers::RetryPolicy;
use crate::providers::evolution::EvolutionClient;
use crate::providers::meta::MetaClient;
use crate::providers::waha::WahaClient;

#[derive(Debug, Clone)]
pub struct HttpProviderFactory {
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl HttpProviderFactory {
    pub fn new(http: reqwest::Client, retry: RetryPolicy) -> Self {
        Self { http, retry }
    }
}

impl ProviderFactory for HttpProviderFactory {
    fn provider(&self, tenant: &Tenant) -> Arc<dyn Provider> {
        match &tenant.provider {
            ProviderConfig::Evolution {
                base_url,
                instance,
                api_key,
                ..
            } => Arc::new(EvolutionClient::new(
                self.http.clone(),
                base_url,
                instance,
                api_key,
                self.retry,
            )),
            ProviderConfig::Waha {
                base_url,
                session,
                api_key,
                ..
            } => Arc::new(WahaClient::new(
                self.http.clone(),
                &tenant.id,
                base_url,
                session,
                api_key,
                self.retry,
            )),
            ProviderConfig::Meta {
                graph_url,
                api_version,
                phone_number_id,
                access_token,
                ..
            } => Arc::new(MetaClient::new(
                self.http.clone(),
                &tenant.id,
                graph_url.as_deref(),
                api_version.as_deref(),
                phone_number_id,
                access_token,
                self.retry,
            )),
        }
    }
}
