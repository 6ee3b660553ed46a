//! Tenants: a business, its provider connection and its assistant settings.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::EngineError;
use crate::ids::TenantId;
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    /// Messages are recorded but never answered.
    Suspended,
}

/// How Conversa reaches the tenant's WhatsApp number. Secrets live here; they are never returned by a GET.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProviderConfig {
    Evolution {
        base_url: String,
        instance: String,
        api_key: String,
        webhook_token: String,
    },
    Waha {
        base_url: String,
        session: String,
        api_key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hmac_secret: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook_token: Option<String>,
    },
    Meta {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        graph_url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_version: Option<String>,
        phone_number_id: String,
        access_token: String,
        app_secret: String,
        verify_token: String,
    },
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets redacted: this type is logged at startup and in errors.
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl ProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Evolution { .. } => "evolution",
            Self::Waha { .. } => "waha",
            Self::Meta { .. } => "meta",
        }
    }

    /// The configuration with every secret removed, as a GET shows it.
    pub fn public_view(&self) -> Value {
        match self {
            Self::Evolution {
                base_url, instance, ..
            } => serde_json::json!({
                "kind": "evolution", "base_url": base_url, "instance": instance,
            }),
            Self::Waha {
                base_url,
                session,
                hmac_secret,
                ..
            } => serde_json::json!({
                "kind": "waha", "base_url": base_url, "session": session,
                "hmac": hmac_secret.is_some(),
            }),
            Self::Meta {
                graph_url,
                api_version,
                phone_number_id,
                ..
            } => serde_json::json!({
                "kind": "meta", "graph_url": graph_url, "api_version": api_version,
                "phone_number_id": phone_number_id,
            }),
        }
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        let required: Vec<(&str, &str)> = match self {
            Self::Evolution {
                base_url,
                instance,
                api_key,
                webhook_token,
            } => vec![
                ("provider.base_url", base_url),
                ("provider.instance", instance),
                ("provider.api_key", api_key),
                ("provider.webhook_token", webhook_token),
            ],
            Self::Waha {
                base_url,
                session,
                api_key,
                hmac_secret,
                webhook_token,
            } => {
                if hmac_secret.is_none() && webhook_token.is_none() {
                    return Err(EngineError::invalid(
                        "provider",
                        "a WAHA provider needs hmac_secret or webhook_token to authenticate webhooks",
                    ));
                }
                vec![
                    ("provider.base_url", base_url),
                    ("provider.session", session),
                    ("provider.api_key", api_key),
                ]
            }
            Self::Meta {
                phone_number_id,
                access_token,
                app_secret,
                verify_token,
                ..
            } => vec![
                ("provider.phone_number_id", phone_number_id),
                ("provider.access_token", access_token),
                ("provider.app_secret", app_secret),
                ("provider.verify_token", verify_token),
            ],
        };
        for (field, value) in required {
            if value.trim().is_empty() {
                return Err(EngineError::invalid(field, "must not be empty"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tone {
    Formal,
    Casual,
    Tecnico,
}

/// The assistant's settings for one tenant (contract §3), with their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantSettings {
    pub greeting: String,
    /// Sent when the assistant hands the conversation to a human.
    pub fallback_message: String,
    /// Sent when the assistant takes a conversation back after the human timeout.
    pub return_message: String,
    /// Sent instead of `return_message` when no human ever answered.
    pub no_human_message: String,
    pub tone: Tone,
    pub system_prompt: String,
    pub model: String,
    pub temperature: f32,
    pub max_tokens: u32,
    pub debounce_ms: u64,
    pub max_buffer_ms: u64,
    pub memory_messages: usize,
    pub confidence_threshold: f32,
    pub human_timeout_hours: f64,
    pub history_ttl_days: f64,
    pub handoff_keywords: Vec<String>,
    /// A turn is cut at this many messages; the rest forms the next turn.
    pub max_turn_messages: usize,
    /// A turn is cut at this many characters.
    pub max_turn_chars: usize,
    /// Send each paragraph of an answer as its own message.
    pub split_paragraphs: bool,
    /// "Typing…" shows this long per character before each message…
    pub typing_ms_per_char: u64,
    /// …but never longer than this.
    pub typing_max_ms: u64,
    /// Outbound messages per second for the whole tenant (the provider's limit), queued in order.
    pub outbound_rate_per_sec: f64,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            greeting: "Olá! Como posso ajudar você hoje?".into(),
            fallback_message: "Vou chamar uma pessoa da nossa equipe para ajudar você. Aguarde um momento, por favor.".into(),
            return_message: "Voltei a atender por aqui! Se ainda precisar de algo, é só mandar sua pergunta.".into(),
            no_human_message: "Desculpe a demora! Nossa equipe não conseguiu responder ainda, mas eu continuo aqui para ajudar. Qual é a sua dúvida?".into(),
            tone: Tone::Casual,
            system_prompt: String::new(),
            model: "gpt-4o-mini".into(),
            temperature: 0.3,
            max_tokens: 400,
            debounce_ms: 1500,
            max_buffer_ms: 8000,
            memory_messages: 10,
            confidence_threshold: 0.5,
            human_timeout_hours: 24.0,
            history_ttl_days: 30.0,
            handoff_keywords: vec!["atendente".into(), "humano".into()],
            max_turn_messages: 50,
            max_turn_chars: 4000,
            split_paragraphs: true,
            typing_ms_per_char: 15,
            typing_max_ms: 2000,
            outbound_rate_per_sec: 20.0,
        }
    }
}

impl TenantSettings {
    /// Checks every range; the error names the field.
    pub fn validate(&self) -> Result<(), EngineError> {
        fn check(ok: bool, field: &str, message: &str) -> Result<(), EngineError> {
            if ok {
                Ok(())
            } else {
                Err(EngineError::invalid(field, message))
            }
        }
        for (field, text) in [
            ("greeting", &self.greeting),
            ("fallback_message", &self.fallback_message),
            ("return_message", &self.return_message),
            ("no_human_message", &self.no_human_message),
        ] {
            check(!text.trim().is_empty(), field, "must not be empty")?;
            check(
                text.chars().count() <= 4096,
                field,
                "must be at most 4096 characters",
            )?;
        }
        check(
            self.system_prompt.chars().count() <= 20_000,
            "system_prompt",
            "must be at most 20000 characters",
        )?;
        check(!self.model.trim().is_empty(), "model", "must not be empty")?;
        check(
            (0.0..=2.0).contains(&self.temperature),
            "temperature",
            "must be between 0 and 2",
        )?;
        check(
            (1..=32_000).contains(&self.max_tokens),
            "max_tokens",
            "must be between 1 and 32000",
        )?;
        check(
            self.debounce_ms <= 60_000,
            "debounce_ms",
            "must be between 0 and 60000",
        )?;
        check(
            self.max_buffer_ms >= self.debounce_ms && self.max_buffer_ms <= 300_000,
            "max_buffer_ms",
            "must be at least debounce_ms and at most 300000",
        )?;
        check(
            self.memory_messages <= 200,
            "memory_messages",
            "must be between 0 and 200",
        )?;
        check(
            (0.0..=1.0).contains(&self.confidence_threshold),
            "confidence_threshold",
            "must be between 0 and 1",
        )?;
        check(
            self.human_timeout_hours.is_finite()
                && self.human_timeout_hours > 0.0
                && self.human_timeout_hours <= 720.0,
            "human_timeout_hours",
            "must be greater than 0 and at most 720",
        )?;
        check(
            self.history_ttl_days.is_finite()
                && self.history_ttl_days > 0.0
                && self.history_ttl_days <= 3650.0,
            "history_ttl_days",
            "must be greater than 0 and at most 3650",
        )?;
        check(
            self.handoff_keywords.len() <= 100,
            "handoff_keywords",
            "at most 100 keywords",
        )?;
        check(
            self.handoff_keywords
                .iter()
                .all(|k| !k.trim().is_empty() && k.chars().count() <= 100),
            "handoff_keywords",
            "keywords must be non-empty and at most 100 characters",
        )?;
        check(
            (1..=500).contains(&self.max_turn_messages),
            "max_turn_messages",
            "must be between 1 and 500",
        )?;
        check(
            (100..=50_000).contains(&self.max_turn_chars),
            "max_turn_chars",
            "must be between 100 and 50000",
        )?;
        check(
            self.typing_ms_per_char <= 200,
            "typing_ms_per_char",
            "must be between 0 and 200",
        )?;
        check(
            self.typing_max_ms <= 10_000,
            "typing_max_ms",
            "must be between 0 and 10000",
        )?;
        check(
            self.outbound_rate_per_sec.is_finite()
                && (0.1..=1000.0).contains(&self.outbound_rate_per_sec),
            "outbound_rate_per_sec",
            "must be between 0.1 and 1000",
        )?;
        Ok(())
    }

    /// Applies a partial update (`PUT /api/v1/settings` accepts any subset). Unknown fields, wrong
    /// types and out-of-range values are rejected with the field named; `self` is unchanged then.
    pub fn apply_patch(&self, patch: &Value) -> Result<TenantSettings, EngineError> {
        let Value::Object(patch) = patch else {
            return Err(EngineError::invalid("settings", "must be a JSON object"));
        };
        let Value::Object(base) =
            serde_json::to_value(self).map_err(|e| EngineError::Internal(e.to_string()))?
        else {
            return Err(EngineError::Internal(
                "settings did not serialise to an object".into(),
            ));
        };
        let mut merged = base.clone();
        for (key, value) in patch {
            if !base.contains_key(key) {
                return Err(EngineError::invalid(key.clone(), "unknown setting"));
            }
            // Each field alone first, so a type error names its field.
            let mut single = base.clone();
            single.insert(key.clone(), value.clone());
            if let Err(e) = serde_json::from_value::<TenantSettings>(Value::Object(single)) {
                return Err(EngineError::invalid(key.clone(), type_error_message(&e)));
            }
            merged.insert(key.clone(), value.clone());
        }
        let settings: TenantSettings = serde_json::from_value(Value::Object(merged))
            .map_err(|e| EngineError::invalid("settings", e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }
}

fn type_error_message(e: &serde_json::Error) -> String {
    // serde's message names the expected type ("invalid type: string \"x\", expected f64").
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// One business served by Conversa.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub provider: ProviderConfig,
    pub settings: TenantSettings,
    pub status: TenantStatus,
    /// SHA-256 (hex) of the tenant API key; the key itself is shown once and never stored.
    pub api_key_hash: String,
    pub created_at: Timestamp,
}

impl Tenant {
    /// The view every GET returns: no secrets.
    pub fn public_view(&self) -> Value {
        let mut map = Map::new();
        map.insert("id".into(), Value::String(self.id.to_string()));
        map.insert("name".into(), Value::String(self.name.clone()));
        map.insert(
            "status".into(),
            serde_json::to_value(self.status).unwrap_or(Value::Null),
        );
        map.insert("provider".into(), self.provider.public_view());
        map.insert(
            "settings".into(),
            serde_json::to_value(&self.settings).unwrap_or(Value::Null),
        );
        map.insert(
            "created_at".into(),
            Value::from(self.created_at.as_millis()),
        );
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let s = TenantSettings::default();
        s.validate().unwrap();
        assert_eq!(s.greeting, "Olá! Como posso ajudar você hoje?");
        assert_eq!(
            (s.debounce_ms, s.max_buffer_ms, s.memory_messages),
            (1500, 8000, 10)
        );
        assert_eq!(s.confidence_threshold, 0.5);
        assert_eq!(s.human_timeout_hours, 24.0);
        assert_eq!(s.history_ttl_days, 30.0);
        assert_eq!(s.handoff_keywords, ["atendente", "humano"]);
    }

    #[track_caller]
    fn patch_err(patch: Value) -> String {
        match TenantSettings::default().apply_patch(&patch) {
            Err(EngineError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid error, got {other:?}"),
        }
    }

    #[test]
    fn patches_apply_subsets_and_name_the_bad_field() {
        let s = TenantSettings::default()
            .apply_patch(&json!({"debounce_ms": 500, "human_timeout_hours": 0.5, "tone": "formal"}))
            .unwrap();
        assert_eq!(s.debounce_ms, 500);
        assert_eq!(s.human_timeout_hours, 0.5);
        assert_eq!(s.tone, Tone::Formal);
        assert_eq!(s.greeting, TenantSettings::default().greeting);

        assert_eq!(patch_err(json!({"colour": "blue"})), "colour");
        assert_eq!(patch_err(json!({"debounce_ms": "fast"})), "debounce_ms");
        assert_eq!(
            patch_err(json!({"confidence_threshold": 1.5})),
            "confidence_threshold"
        );
        assert_eq!(patch_err(json!({"tone": "pirate"})), "tone");
        assert_eq!(patch_err(json!({"max_buffer_ms": 100})), "max_buffer_ms");
        assert_eq!(
            patch_err(json!({"human_timeout_hours": 0})),
            "human_timeout_hours"
        );
        assert_eq!(patch_err(json!([1, 2])), "settings");
    }

    #[test]
    fn provider_debug_and_public_view_hide_secrets() {
        let p = ProviderConfig::Evolution {
            base_url: "http://evo".into(),
            instance: "loja".into(),
            api_key: "SECRET-KEY".into(),
            webhook_token: "SECRET-TOKEN".into(),
        };
        assert!(!format!("{p:?}").contains("SECRET"));
        assert!(!p.public_view().to_string().contains("SECRET"));
    }
}
