//! Builds each tenant's provider client from its configuration.

use std::sync::Arc;

use async_trait::async_trait;
use engine::ContactId;
use engine::ports::{Provider, ProviderFactory, SendError, SendReceipt};
use engine::tenant::{ProviderConfig, Tenant};

use crate::providers::RetryPolicy;
use crate::providers::evolution::EvolutionClient;

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
            other => Arc::new(NotYetSupported(other.kind())),
        }
    }
}

/// A provider kind whose client is not built yet: every send fails for good, visibly.
#[derive(Debug)]
struct NotYetSupported(&'static str);

#[async_trait]
impl Provider for NotYetSupported {
    fn kind(&self) -> &'static str {
        self.0
    }

    async fn send_text(&self, _to: &ContactId, _text: &str) -> Result<SendReceipt, SendError> {
        Err(SendError {
            retryable: false,
            status: None,
            message: format!("sending through {} is not supported yet", self.0),
        })
    }

    async fn typing(&self, _to: &ContactId, _on: bool) -> Result<(), SendError> {
        Ok(())
    }
}
