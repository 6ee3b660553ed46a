//! The target Conversa: health check, provider probing, tenant and knowledge creation through the
//! admin and tenant APIs, and `/metrics` scraping (process RSS and CPU, live actors, histograms).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::payload::{ProviderKind, TenantSecrets};
use crate::report::Percentiles;

/// The tenants' fallback message: an answer with exactly this text is a handoff to a human.
pub const FALLBACK: &str =
    "Vou chamar uma pessoa da nossa equipe para ajudar você. [loadtest-handoff]";

/// Every tenant's knowledge: short paragraphs the questions of `scenario.rs` are answered from.
pub const KNOWLEDGE: &str = "Loja Centro: roupas femininas e masculinas.\n\n\
Nosso horário de funcionamento: abrimos de segunda a sábado, das 9h às 18h. Amanhã e em todos os dias úteis a loja abre às 9h. Aos domingos e feriados a loja fica fechada.\n\n\
Entregas: fazemos entregas em toda a cidade de São Paulo em até 2 dias úteis. O frete é grátis para compras acima de R$ 200.\n\n\
Tamanhos: trabalhamos com os tamanhos P, M, G e GG em todos os modelos da coleção. O tamanho M está disponível na loja para todos os modelos.\n\n\
Trocas: trocas podem ser feitas em até 30 dias com a nota fiscal.\n\n\
Pagamento: aceitamos cartão de crédito, cartão de débito, Pix e boleto. Parcelamos em até 6 vezes sem juros no cartão de crédito.";

/// One tenant created for the run.
#[derive(Debug, Clone)]
pub struct TenantInfo {
    pub id: String,
    pub kind: ProviderKind,
    pub secrets: TenantSecrets,
    pub api_key: String,
}

/// The run's tenant ids: `lt<run>-<index>`, valid slugs, distinct per run.
pub fn tenant_id(run: &str, index: u32) -> String {
    format!("lt{run}-{index}")
}

/// A client for the target's HTTP APIs.
#[derive(Debug, Clone)]
pub struct Target {
    pub base: String,
    admin_token: String,
    http: reqwest::Client,
}

impl Target {
    pub fn new(base: &str, admin_token: &str, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            admin_token: admin_token.to_owned(),
            http,
        }
    }

    /// `GET /health` must answer 200.
    pub async fn check_health(&self) -> anyhow::Result<()> {
        let resp = self
            .http
            .get(format!("{}/health", self.base))
            .send()
            .await
            .with_context(|| format!("Conversa is not reachable at {}", self.base))?;
        if !resp.status().is_success() {
            bail!("{}/health answered {}", self.base, resp.status());
        }
        Ok(())
    }

    /// Whether the server has a webhook route for `kind` (an unknown tenant answers 404 "unknown
    /// tenant" on a known route, and the router's fallback answers "no such route").
    pub async fn probe_provider(&self, kind: ProviderKind) -> Result<(), String> {
        let resp = self
            .http
            .post(format!(
                "{}/webhooks/{}/lt-probe-no-such-tenant",
                self.base,
                kind.as_str()
            ))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .map_err(|e| format!("probe failed: {e}"))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        if (status == 404 || status == 405) && message.contains("route") {
            return Err("the server has no webhook route for it".to_owned());
        }
        Ok(())
    }

    /// Creates one tenant with fast debounce and the run's fallback message. `Ok(None)` when the
    /// server refuses the provider kind (422 on `provider`).
    pub async fn create_tenant(
        &self,
        id: &str,
        kind: ProviderKind,
        secrets: &TenantSecrets,
        recorder_base: &str,
        debounce_ms: u64,
    ) -> anyhow::Result<Result<String, String>> {
        let body = json!({
            "id": id,
            "name": format!("Loadtest {id}"),
            "provider": kind.tenant_config(recorder_base, id, secrets),
            "settings": {
                "debounce_ms": debounce_ms,
                "max_buffer_ms": (debounce_ms * 20).clamp(debounce_ms, 300_000),
                "fallback_message": FALLBACK,
            },
        });
        let resp = self
            .http
            .post(format!("{}/api/v1/tenants", self.base))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .context("creating a tenant")?;
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        match status {
            201 => Ok(Ok(answer["api_key"]
                .as_str()
                .context("tenant creation answered no api_key")?
                .to_owned())),
            400 | 422 if answer.to_string().contains("provider") => Ok(Err(format!(
                "the server refuses it as a tenant provider: {}",
                answer["error"]["message"].as_str().unwrap_or("422")
            ))),
            401 => bail!("the admin token was refused (401)"),
            _ => bail!("creating tenant {id} answered {status}: {answer}"),
        }
    }

    /// `PUT /api/v1/knowledge` as the tenant.
    pub async fn put_knowledge(&self, api_key: &str, text: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .put(format!("{}/api/v1/knowledge", self.base))
            .bearer_auth(api_key)
            .header("content-type", "text/plain")
            .body(text.to_owned())
            .send()
            .await
            .context("putting knowledge")?;
        if !resp.status().is_success() {
            bail!("PUT /api/v1/knowledge answered {}", resp.status());
        }
        Ok(())
    }

    /// A conversation's history, oldest first: `(inbound, text)` per message.
    pub async fn history(
        &self,
        api_key: &str,
        contact: &str,
    ) -> anyhow::Result<Vec<(bool, String)>> {
        let resp = self
            .http
            .get(format!(
                "{}/api/v1/conversations/{contact}/messages?limit=500",
                self.base
            ))
            .bearer_auth(api_key)
            .send()
            .await
            .context("reading a history")?;
        if !resp.status().is_success() {
            bail!("GET …/messages answered {}", resp.status());
        }
        let page: Value = resp.json().await?;
        let items = page
            .as_array()
            .or_else(|| page["items"].as_array())
            .cloned()
            .unwrap_or_default();
        let mut messages: Vec<(String, String, bool, String)> = items
            .iter()
            .map(|m| {
                (
                    m["at"].as_str().unwrap_or_default().to_owned(),
                    m["id"].as_str().unwrap_or_default().to_owned(),
                    m["direction"] == "in",
                    m["text"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        messages.sort();
        Ok(messages
            .into_iter()
            .map(|(_, _, inbound, text)| (inbound, text))
            .collect())
    }

    /// Deletes a tenant (cleanup after the run; best effort).
    pub async fn delete_tenant(&self, id: &str) -> bool {
        self.http
            .delete(format!("{}/api/v1/tenants/{id}", self.base))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Reads `/metrics`.
    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .context("GET /metrics")?
            .text()
            .await?;
        Ok(Scrape::parse(&text))
    }
}

/// Lost and duplicated answers of one conversation by the server's own history (oldest first).
///
/// Inbound messages since the last answer form a turn. An inbound message is stamped when its
/// webhook arrives, before it is recorded, so under load a fragment recorded late can sort before
/// an answer that did not include it; the server then answers it in a turn of its own. So an
/// answer with no inbound message since the previous one is a duplicate only when no earlier
/// inbound message is left to explain it (each answer that covered several inbound messages leaves
/// the extra ones as possible turns of their own). Inbound messages left without an answer at the
/// end are a lost turn, unless the fallback message silenced the assistant before them.
pub fn audit_history(history: &[(bool, String)]) -> (u64, u64) {
    let mut pending = 0u64;
    let mut unexplained_credit = 0u64;
    let mut silenced = false;
    let mut duplicated = 0;
    for (inbound, text) in history {
        if *inbound {
            if !silenced {
                pending += 1;
            }
            continue;
        }
        if silenced {
            continue;
        }
        if pending > 0 {
            unexplained_credit += pending - 1;
        } else if unexplained_credit > 0 {
            unexplained_credit -= 1;
        } else {
            duplicated += 1;
        }
        pending = 0;
        silenced = text == FALLBACK;
    }
    (u64::from(pending > 0), duplicated)
}

/// One `/metrics` page: `(name, labels, value)` per sample line.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<(String, String, f64)>,
}

impl Scrape {
    /// Parses the Prometheus text format (comments skipped; label values may not contain `}`).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value: f64 = value.trim().parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some((name.to_owned(), labels.to_owned(), value))
            })
            .collect();
        Self { samples }
    }

    /// The sum of every series of `name`, when there is one.
    pub fn value(&self, name: &str) -> Option<f64> {
        let mut found = None;
        for (n, _, v) in &self.samples {
            if n == name {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// Values of `name` by the value of label `label`.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, labels, v) in &self.samples {
            if n == name {
                let key = label_value(labels, label).unwrap_or_default();
                *out.entry(key).or_insert(0.0) += v;
            }
        }
        out
    }

    /// The cumulative buckets of histogram `name`, summed over its series: `(le, count)`, ascending.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (n, labels, v) in &self.samples {
            if *n == bucket
                && let Some(le) = label_value(labels, "le")
            {
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                if le.is_nan() {
                    continue;
                }
                by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += v;
            }
        }
        let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

fn label_value(labels: &str, label: &str) -> Option<String> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == label).then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// Percentiles (ms) of what histogram `name` (in seconds) observed between two scrapes, estimated
/// like PromQL's `histogram_quantile` (linear inside a bucket). `None` when nothing was observed.
pub fn histogram_delta(before: &Scrape, after: &Scrape, name: &str) -> Option<Percentiles> {
    let b = before.buckets(name);
    let a = after.buckets(name);
    let delta: Vec<(f64, f64)> = a
        .iter()
        .map(|(le, n)| {
            let prev = b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, v)| *v);
            (*le, (n - prev).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let quantile = |q: f64| {
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &delta {
            if count >= rank {
                if le.is_infinite() {
                    return lower.0;
                }
                let width = count - lower.1;
                let frac = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return lower.0 + (le - lower.0) * frac;
            }
            lower = (le, count);
        }
        lower.0
    };
    let finite_max = delta
        .iter()
        .rev()
        .find(|(le, _)| le.is_finite())
        .map_or(0.0, |(le, _)| *le);
    let max_bucket = delta
        .iter()
        .find(|(_, c)| *c >= total)
        .map_or(
            finite_max,
            |(le, _)| if le.is_finite() { *le } else { finite_max },
        );
    Some(Percentiles {
        p50: quantile(0.50) * 1000.0,
        p95: quantile(0.95) * 1000.0,
        p99: quantile(0.99) * 1000.0,
        max: max_bucket * 1000.0,
        count: total as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 24510464
process_cpu_seconds_total 1.5
conversa_turns_total{outcome="answered"} 7
conversa_turns_total{outcome="small_talk"} 2
conversa_turn_engine_seconds_bucket{le="0.001"} 50
conversa_turn_engine_seconds_bucket{le="0.005"} 90
conversa_turn_engine_seconds_bucket{le="0.01"} 100
conversa_turn_engine_seconds_bucket{le="+Inf"} 100
conversa_turn_engine_seconds_sum 0.2
conversa_turn_engine_seconds_count 100
"#;

    #[test]
    fn reads_values_labels_and_histograms() {
        let s = Scrape::parse(PAGE);
        assert_eq!(s.value("process_resident_memory_bytes"), Some(24_510_464.0));
        assert_eq!(s.value("conversa_turns_total"), Some(9.0));
        assert_eq!(
            s.by_label("conversa_turns_total", "outcome")["answered"],
            7.0
        );
        assert_eq!(s.value("nope"), None);
        let p = histogram_delta(&Scrape::default(), &s, "conversa_turn_engine_seconds").unwrap();
        assert_eq!(p.count, 100);
        assert!((p.p50 - 1.0).abs() < 1e-9, "{p:?}");
        assert!((p.p95 - 7.5).abs() < 1e-9, "{p:?}");
        assert!((p.max - 10.0).abs() < 1e-9, "{p:?}");
        assert!(histogram_delta(&s, &s, "conversa_turn_engine_seconds").is_none());
    }

    #[test]
    fn histories_are_audited_turn_by_turn() {
        let h = |items: &[(bool, &str)]| -> Vec<(bool, String)> {
            items.iter().map(|(i, t)| (*i, (*t).to_owned())).collect()
        };
        // A one-message turn, then a turn answered twice.
        assert_eq!(
            audit_history(&h(&[
                (true, "horário?"),
                (false, "9h"),
                (true, "frete?"),
                (false, "grátis"),
                (false, "grátis")
            ])),
            (0, 1)
        );
        // After a two-message burst answered once, one extra answer can be the server's own turn
        // for the second message (recorded after the first answer): not counted.
        assert_eq!(
            audit_history(&h(&[
                (true, "oi"),
                (true, "horário?"),
                (false, "9h"),
                (true, "frete?"),
                (false, "grátis"),
                (false, "grátis")
            ])),
            (0, 0)
        );
        // The last turn got no answer.
        assert_eq!(
            audit_history(&h(&[(true, "oi"), (false, "olá"), (true, "frete?")])),
            (1, 0)
        );
        // After the fallback the assistant is silent: not lost.
        assert_eq!(
            audit_history(&h(&[
                (true, "uma dúvida"),
                (false, FALLBACK),
                (true, "horário?")
            ])),
            (0, 0)
        );
        // A fragment recorded after an answer that did not include it, but stamped before it.
        assert_eq!(
            audit_history(&h(&[
                (true, "oi"),
                (true, "horário?"),
                (false, "olá"),
                (false, "9h")
            ])),
            (0, 0)
        );
        // Nothing explains the third answer to a two-fragment burst.
        assert_eq!(
            audit_history(&h(&[
                (true, "oi"),
                (true, "horário?"),
                (false, "olá"),
                (false, "9h"),
                (false, "9h")
            ])),
            (0, 1)
        );
        // A split burst answered twice by the server's turns is neither lost nor duplicated.
        assert_eq!(
            audit_history(&h(&[
                (true, "oi"),
                (false, "olá"),
                (true, "horário?"),
                (false, "9h")
            ])),
            (0, 0)
        );
    }

    #[test]
    fn tenant_ids_are_slugs() {
        let id = tenant_id("a1b2c3", 17);
        assert_eq!(id, "lta1b2c3-17");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
