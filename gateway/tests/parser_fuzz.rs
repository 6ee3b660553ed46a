//! Property tests over the three webhook parsers (Evolution, WAHA, Meta): whatever the bytes, a
//! parser returns `Ok` or `Err` and never panics, and every message it returns is well formed.
//!
//! Three kinds of input: arbitrary bytes, arbitrary JSON, and the shared fixtures with one subtree
//! replaced by arbitrary JSON (which reaches deep into the parsers, where random JSON rarely goes).
//! Bounded for CI: 256 cases per property by default (`PROPTEST_CASES` raises it locally), no
//! failure files written.

use std::sync::LazyLock;

use engine::ContactId;
use gateway::providers::{ParseError, ProviderEvent, evolution, meta, waha};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

type Parser = fn(&[u8]) -> Result<Vec<ProviderEvent>, ParseError>;

const PARSERS: [(&str, Parser); 3] = [
    ("evolution", evolution::parse),
    ("waha", |body| waha::parse(body, "default")),
    ("meta", |body| meta::parse(body, "112233445566778")),
];

fn config() -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Every webhook body fixture of a provider, parsed once.
fn fixtures(provider: &str) -> &'static [Value] {
    static BODIES: LazyLock<Vec<(&str, Vec<Value>)>> = LazyLock::new(|| {
        PARSERS
            .iter()
            .map(|(provider, _)| (*provider, read_fixtures(provider)))
            .collect()
    });
    &BODIES
        .iter()
        .find(|(name, _)| *name == provider)
        .expect("every parser has fixtures")
        .1
}

fn read_fixtures(provider: &str) -> Vec<Value> {
    let mut bodies: Vec<Value> = std::fs::read_dir(format!("{FIXTURES}/{provider}"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            !name.starts_with("outbound.")
                && !name.starts_with("webhook-signature")
                && !name.starts_with("verify.")
        })
        .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
        .collect();
    bodies.sort_by_key(Value::to_string);
    bodies
}

/// Checks what a parser returned: well-formed messages, and no panic (by getting here at all).
fn check(
    provider: &str,
    result: Result<Vec<ProviderEvent>, ParseError>,
) -> Result<(), TestCaseError> {
    let Ok(events) = result else {
        return Ok(());
    };
    for event in events {
        match event {
            ProviderEvent::Message(message) => {
                prop_assert!(
                    !message.provider_id.is_empty(),
                    "{provider}: empty provider id"
                );
                prop_assert_eq!(
                    &message.dedupe_key,
                    &format!("{}/{}", message.contact, message.provider_id),
                    "{}: dedupe key",
                    provider
                );
                prop_assert!(ContactId::parse(message.contact.as_str()).is_ok());
            }
            ProviderEvent::Delivery { provider_id, .. } => {
                prop_assert!(!provider_id.is_empty(), "{provider}: empty delivery id");
            }
            ProviderEvent::Edit { original_id, .. } | ProviderEvent::Revoke { original_id, .. } => {
                prop_assert!(!original_id.is_empty(), "{provider}: empty original id");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Arbitrary JSON, a few levels deep, with keys the parsers look for mixed into random ones.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("event".to_owned()),
        Just("data".to_owned()),
        Just("payload".to_owned()),
        Just("entry".to_owned()),
        Just("changes".to_owned()),
        Just("value".to_owned()),
        Just("messages".to_owned()),
        Just("statuses".to_owned()),
        Just("key".to_owned()),
        Just("message".to_owned()),
        Just("id".to_owned()),
        Just("from".to_owned()),
        Just("fromMe".to_owned()),
        Just("type".to_owned()),
        "[a-zA-Z_.]{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(
            |float| serde_json::Number::from_f64(float).map_or(Value::Null, Value::Number)
        ),
        Just(Value::from("messages.upsert")),
        Just(Value::from("message")),
        Just(Value::from("5511999999999@c.us")),
        Just(Value::from("120363025246125486@g.us")),
        Just(Value::from("5511999999999")),
        Just(Value::from("text")),
        ".{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Replaces the subtree reached by following `path` (each step picks a child, modulo the number of
/// children) with `replacement`; stops early at a leaf.
fn mutate(mut body: Value, path: &[usize], replacement: Value) -> Value {
    fn walk(value: &mut Value, path: &[usize], replacement: Value) {
        let children = match value {
            Value::Object(map) => map.len(),
            Value::Array(items) => items.len(),
            _ => 0,
        };
        let Some((step, rest)) = path.split_first() else {
            *value = replacement;
            return;
        };
        if children == 0 {
            *value = replacement;
            return;
        }
        let index = step % children;
        let child = match value {
            Value::Object(map) => map.values_mut().nth(index),
            Value::Array(items) => items.get_mut(index),
            _ => None,
        };
        if let Some(child) = child {
            walk(child, rest, replacement);
        }
    }
    walk(&mut body, path, replacement);
    body
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for (provider, parse) in PARSERS {
            check(provider, parse(&bytes))?;
        }
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        for (provider, parse) in PARSERS {
            check(provider, parse(&bytes))?;
        }
    }

    #[test]
    fn mutated_fixtures_never_panic(
        choice in any::<usize>(),
        path in prop::collection::vec(any::<usize>(), 0..10),
        replacement in json_value(),
    ) {
        for (provider, parse) in PARSERS {
            let bodies = fixtures(provider);
            let body = mutate(bodies[choice % bodies.len()].clone(), &path, replacement.clone());
            check(provider, parse(&serde_json::to_vec(&body).unwrap()))?;
        }
    }

    #[test]
    fn truncated_fixtures_never_panic(choice in any::<usize>(), cut in any::<usize>()) {
        for (provider, parse) in PARSERS {
            let bodies = fixtures(provider);
            let bytes = serde_json::to_vec(&bodies[choice % bodies.len()]).unwrap();
            check(provider, parse(&bytes[..cut % (bytes.len() + 1)]))?;
        }
    }
}

#[test]
fn every_fixture_parses_through_the_fuzzed_entry_points() {
    for (provider, parse) in PARSERS {
        let bodies = fixtures(provider);
        assert!(!bodies.is_empty(), "{provider}");
        for body in bodies {
            let events = parse(&serde_json::to_vec(&body).unwrap()).unwrap();
            assert!(!events.is_empty(), "{provider}: {body}");
        }
    }
}
