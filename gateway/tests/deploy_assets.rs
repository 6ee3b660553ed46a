//! The ops assets in `gateway/deploy/` stay true to the code: the alert rules are well formed, the
//! Grafana dashboard is valid JSON with unique panel ids, and every metric either of them queries is
//! registered by the server (the registry is built as `server.rs` builds it). `promtool check rules`
//! runs on the rules file as well when promtool is installed (CI installs it).

use std::collections::HashSet;
use std::path::Path;

use prometheus::Registry;
use serde_json::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
/// Series Prometheus itself makes (not exported by Conversa).
const PROMETHEUS_OWN: &[&str] = &["up"];
/// PromQL words that look like metric names but are not.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    // aggregation operators, which may take `by (…)` before their parentheses
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];

/// The server's registry: the same collectors `server::build` registers (the LLM's too, which it
/// registers when an endpoint is configured).
fn server_registry() -> Registry {
    let registry = Registry::new();
    gateway::metrics::GatewayMetrics::new(&registry).unwrap();
    actors::ActorMetrics::new(&registry).unwrap();
    gateway::llm::LlmMetrics::new(&registry).unwrap();
    gateway::providers::AttentionBoard::register(&registry);
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .unwrap();
    registry
}

/// Whether `name` is registered: a probe with the same name must be refused.
fn registered(registry: &Registry, name: &str) -> bool {
    let Ok(probe) = prometheus::IntCounter::new(name, "probe") else {
        return false;
    };
    match registry.register(Box::new(probe.clone())) {
        Ok(()) => {
            registry.unregister(Box::new(probe)).unwrap();
            false
        }
        Err(_) => true,
    }
}

/// Metric names a PromQL expression reads (label matchers, grouping lists, ranges, strings,
/// functions and keywords left out).
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_group = |from: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        let mut j = from;
        while j < chars.len() {
            if chars[j] == open {
                depth += 1;
            } else if chars[j] == close {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next] == ' ' {
                next += 1;
            }
            let lower = word.to_ascii_lowercase();
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&lower.as_str())
            {
                if next < chars.len() && chars[next] == '(' {
                    i = skip_group(next, '(', ')');
                }
            } else if KEYWORDS.contains(&lower.as_str())
                || (next < chars.len() && chars[next] == '(')
            {
                // a keyword or a function
            } else if !word.starts_with('$') {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every name in `exprs` must be registered (histogram series suffixes resolved to the family).
fn check_names<'a>(what: &str, exprs: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    let registry = server_registry();
    let mut seen = HashSet::new();
    let mut missing = Vec::new();
    for expr in exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{what}: no metric in `{expr}`");
        for name in names {
            if PROMETHEUS_OWN.contains(&name.as_str()) {
                continue;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|base| registered(&registry, base))
                })
                .map_or(name.clone(), str::to_owned);
            if !registered(&registry, &family) {
                missing.push(format!("{name} (in `{expr}`)"));
            }
            seen.insert(family);
        }
    }
    assert!(
        missing.is_empty(),
        "{what} uses metrics the server does not register:\n{}",
        missing.join("\n")
    );
    seen
}

#[test]
fn the_name_extractor_reads_promql() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{x="y{z}"}[5m]))) / 1e6 > 0.5 and b_total offset 5m"#
        ),
        ["a_seconds_bucket", "b_total"]
    );
    assert_eq!(metric_names("max by (tenant) (c) == 1 or vector(0)"), ["c"]);
}

#[test]
fn the_probe_tells_registered_names_apart() {
    let registry = server_registry();
    assert!(registered(&registry, "conversa_webhooks_total"));
    assert!(
        registered(&registry, "conversa_handoffs_total"),
        "a vector with no series yet is registered too"
    );
    assert!(registered(&registry, "process_resident_memory_bytes"));
    assert!(!registered(&registry, "conversa_no_such_metric_total"));
    assert!(
        !registered(&registry, "conversa_no_such_metric_total"),
        "the probe leaves nothing behind"
    );
}

#[test]
fn alert_rules_are_well_formed_and_query_real_metrics() {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join("alerts.yml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).expect("alerts.yml is YAML");
    let groups = doc["groups"].as_array().expect("a `groups` list");
    assert!(!groups.is_empty());
    let mut alerts = HashSet::new();
    let mut exprs = Vec::new();
    for group in groups {
        let name = group["name"].as_str().expect("every group has a name");
        let rules = group["rules"]
            .as_array()
            .unwrap_or_else(|| panic!("group {name} has rules"));
        assert!(!rules.is_empty(), "group {name} is empty");
        for rule in rules {
            let alert = rule["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: a rule without `alert`: {rule}"));
            assert!(
                alert.starts_with("Conversa") && alert.chars().all(char::is_alphanumeric),
                "{alert}"
            );
            assert!(alerts.insert(alert.to_owned()), "{alert} is defined twice");
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert}: no expr"));
            assert!(!expr.trim().is_empty(), "{alert}: empty expr");
            if let Some(duration) = rule.get("for") {
                let d = duration.as_str().unwrap_or_default();
                assert!(
                    d.ends_with('s') || d.ends_with('m') || d.ends_with('h'),
                    "{alert}: `for: {d}`"
                );
            }
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["page", "ticket"].contains(&severity),
                "{alert}: severity {severity:?}"
            );
            let threshold = rule["labels"]["threshold"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert}: no threshold label"));
            assert!(
                threshold.parse::<f64>().is_ok(),
                "{alert}: threshold {threshold:?}"
            );
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{alert}: no {key}"
                );
            }
            exprs.push(expr.to_owned());
        }
    }
    // The issue's alerts, by what they watch.
    for required in [
        "ConversaWebhookErrorRate",
        "ConversaTurnEngineLatencyHigh",
        "ConversaTurnTotalLatencyHigh",
        "ConversaHandoffQueueOld",
        "ConversaLlmCostHigh",
        "ConversaProviderNeedsAttention",
        "ConversaProviderDisconnected",
        "ConversaDashboardClientsDropped",
    ] {
        assert!(alerts.contains(required), "missing alert {required}");
    }
    check_names("alerts.yml", exprs.iter().map(String::as_str));
}

#[test]
fn promtool_accepts_the_rules_when_installed() {
    let rules = Path::new(DEPLOY).join("alerts.yml");
    match std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!(
            "promtool is not installed; skipped (CI installs it: apt-get install prometheus)"
        ),
    }
}

#[test]
fn the_grafana_dashboard_is_valid_and_queries_real_metrics() {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join("grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "conversa-overview");
    assert!(dashboard["title"].is_string() && dashboard["schemaVersion"].is_u64());
    let mut ids = HashSet::new();
    let mut exprs = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        assert!(
            panel["title"].as_str().is_some_and(|t| !t.is_empty()),
            "panel {id} has no title"
        );
        let grid = &panel["gridPos"];
        for key in ["h", "w", "x", "y"] {
            assert!(grid[key].is_u64(), "panel {id}: gridPos.{key}");
        }
        if let Some(children) = panel["panels"].as_array() {
            stack.extend(children);
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {id} has no targets"));
        assert!(!targets.is_empty(), "panel {id} has no targets");
        for target in targets {
            exprs.push(
                target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {id}: a target without expr"))
                    .to_owned(),
            );
        }
    }
    let seen = check_names("grafana-dashboard.json", exprs.iter().map(String::as_str));
    // The catalogue's headline metrics are all on the dashboard.
    for name in [
        "conversa_webhooks_total",
        "conversa_webhook_ack_seconds",
        "conversa_turns_total",
        "conversa_turn_engine_seconds",
        "conversa_live_conversations",
        "conversa_mailbox_depth",
        "conversa_store_operation_seconds",
        "conversa_outbound_sends_total",
        "conversa_dashboard_clients",
        "conversa_llm_cost_microdollars_total",
        "process_resident_memory_bytes",
    ] {
        assert!(seen.contains(name), "the dashboard does not show {name}");
    }
}
