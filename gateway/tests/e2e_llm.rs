//! The assistant through a real server speaking the OpenAI protocol: grounded prompts with tone
//! and exactly the last N messages of memory, no other tenant's text, retries, timeouts, failures
//! that hand off, and an answer that arrives after a human took over.

#[path = "support/llm_harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Conversa, FakeEvolution, FakeLlm, Script, eventually};
use serde_json::{Value, json};

const LOJA: &str = "Horário: abrimos de segunda a sábado, das 9h às 18h. Aos domingos a loja fica fechada.\n\n\
Entregas: entregamos em toda a cidade de São Paulo em até 2 dias úteis. Frete grátis acima de R$ 200.";
const PIZZARIA: &str =
    "Pizzaria Napoli: massa de fermentação natural, forno a lenha. Rodízio às quartas-feiras.";
const MARIA: &str = "5511999999999";

fn with_llm(
    llm: std::net::SocketAddr,
    timeout_ms: u64,
) -> impl FnOnce(&mut gateway::config::Config) {
    move |c| {
        c.openai_api_key = Some("test-key".into());
        c.openai_base_url = Some(format!("http://{llm}/v1"));
        c.llm_timeout = Duration::from_millis(timeout_ms);
        c.llm_attempts = 3;
        c.llm_prices = r#"{"gpt-4o-mini":{"input":0.15,"output":0.6}}"#.into();
    }
}

fn messages(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn prompts_are_grounded_in_the_tenant_knowledge_with_its_tone_and_exactly_the_last_n_messages()
 {
    let dir = tempfile::tempdir().unwrap();
    let (evo, evo_addr) = FakeEvolution::start().await;
    let (llm, llm_addr) = FakeLlm::start(vec![
        Script::Answer("Abrimos às 9h, de segunda a sábado.".into()),
        Script::Answer("Entregamos em toda São Paulo.".into()),
        Script::Answer("O frete é grátis acima de R$ 200.".into()),
    ])
    .await;
    let conversa = Conversa::start(dir.path(), with_llm(llm_addr, 2000)).await;
    let key = conversa
        .tenant(
            "loja",
            evo_addr,
            json!({"tone": "formal", "memory_messages": 2, "system_prompt": "Assine como Loja."}),
            LOJA,
        )
        .await;
    conversa
        .tenant("napoli", evo_addr, json!({}), PIZZARIA)
        .await;

    let questions = [
        "Que horas vocês abrem?",
        "Vocês fazem entregas em São Paulo?",
        "E o frete de entregas, é grátis?",
    ];
    for (i, q) in questions.iter().enumerate() {
        conversa.customer("loja", MARIA, &format!("Q{i}"), q).await;
        eventually("the llm answer sent", 10, || {
            evo.texts_to(MARIA).len() == i + 1
        })
        .await;
    }
    assert_eq!(
        evo.texts_to(MARIA),
        [
            "Abrimos às 9h, de segunda a sábado.",
            "Entregamos em toda São Paulo.",
            "O frete é grátis acima de R$ 200."
        ]
    );

    let requests = llm.requests();
    assert_eq!(requests.len(), 3);
    let last = &requests[2];
    assert_eq!(last["model"], "gpt-4o-mini");
    let msgs = messages(last);
    let (role, system) = &msgs[0];
    assert_eq!(role, "system");
    assert!(system.starts_with("Assine como Loja."), "{system}");
    assert!(system.contains(engine::prompt::GROUNDING_RULE));
    assert!(
        system.contains("linguagem formal"),
        "tone missing: {system}"
    );
    assert!(
        system.contains("Frete grátis acima de R$ 200"),
        "knowledge missing: {system}"
    );
    // Exactly the last two messages before the turn, roles kept, then the turn.
    assert_eq!(
        msgs[1..],
        [
            ("user".to_owned(), questions[1].to_owned()),
            (
                "assistant".to_owned(),
                "Entregamos em toda São Paulo.".to_owned()
            ),
            ("user".to_owned(), questions[2].to_owned()),
        ]
    );
    for r in &requests {
        assert!(
            !r.to_string().contains("Napoli"),
            "another tenant's knowledge leaked into a prompt"
        );
    }

    let (status, prompt) = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}/last-prompt"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(prompt["messages"].as_array().unwrap().len(), 4);
    let metrics = conversa.metrics().await;
    assert!(
        metrics.contains(r#"conversa_turns_total{outcome="answered_llm"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"conversa_llm_tokens_total{direction="in",tenant="loja"} 360"#));
    // 3 × (120 × 0.15 + 30 × 0.6) / 1000 dollars = 0.108 dollars.
    assert!(
        metrics.contains(r#"conversa_llm_cost_microdollars_total{tenant="loja"} 108000"#),
        "{metrics}"
    );
    conversa.stop().await;
}

#[tokio::test]
async fn a_429_and_a_500_are_retried_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let (evo, evo_addr) = FakeEvolution::start().await;
    let (llm, llm_addr) = FakeLlm::start(vec![
        Script::Status(429),
        Script::Status(500),
        Script::Answer("Abrimos às 9h.".into()),
    ])
    .await;
    let conversa = Conversa::start(dir.path(), with_llm(llm_addr, 2000)).await;
    conversa.tenant("loja", evo_addr, json!({}), LOJA).await;
    conversa
        .customer("loja", MARIA, "Q1", "Que horas vocês abrem?")
        .await;
    eventually("the answer after two retries", 15, || {
        evo.texts_to(MARIA) == ["Abrimos às 9h."]
    })
    .await;
    assert_eq!(llm.requests().len(), 3);
    conversa.stop().await;
}

#[tokio::test]
async fn a_timeout_is_retried_by_conversa() {
    let dir = tempfile::tempdir().unwrap();
    let (evo, evo_addr) = FakeEvolution::start().await;
    let (llm, llm_addr) = FakeLlm::start(vec![
        Script::Delay(Duration::from_millis(1500), "tarde".into()),
        Script::Answer("Abrimos às 9h.".into()),
    ])
    .await;
    let conversa = Conversa::start(dir.path(), with_llm(llm_addr, 400)).await;
    conversa.tenant("loja", evo_addr, json!({}), LOJA).await;
    conversa
        .customer("loja", MARIA, "Q1", "Que horas vocês abrem?")
        .await;
    eventually("the answer after a timeout", 15, || {
        evo.texts_to(MARIA) == ["Abrimos às 9h."]
    })
    .await;
    assert_eq!(llm.requests().len(), 2);
    let metrics = conversa.metrics().await;
    assert!(
        metrics.contains(r#"conversa_llm_retries_total{model="gpt-4o-mini"} 1"#),
        "{metrics}"
    );
    conversa.stop().await;
}

/// Every failure mode ends the same way for the customer: the fallback message, never an error
/// text, and the conversation waits for a human with reason `llm_failure`.
#[tokio::test]
async fn failures_hand_off_with_the_fallback_message() {
    let cases = [
        ("http 500 on every attempt", vec![Script::Status(500)]),
        (
            "timeouts (slow headers)",
            vec![Script::Delay(
                Duration::from_millis(1500),
                "tarde demais".into(),
            )],
        ),
        ("malformed JSON", vec![Script::Malformed]),
        ("an empty completion", vec![Script::Empty]),
        ("a refusal", vec![Script::Refusal]),
        ("a 400", vec![Script::Status(400)]),
    ];
    for (name, script) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (evo, evo_addr) = FakeEvolution::start().await;
        let (_llm, llm_addr) = FakeLlm::start(script).await;
        let conversa = Conversa::start(dir.path(), with_llm(llm_addr, 300)).await;
        let key = conversa.tenant("loja", evo_addr, json!({}), LOJA).await;
        conversa
            .customer("loja", MARIA, "Q1", "Que horas vocês abrem?")
            .await;
        eventually(name, 15, || !evo.texts_to(MARIA).is_empty()).await;
        assert_eq!(
            evo.texts_to(MARIA),
            [engine::tenant::TenantSettings::default().fallback_message],
            "{name}"
        );
        let (_, conv) = conversa
            .get(&key, &format!("/api/v1/conversations/{MARIA}"))
            .await;
        assert_eq!(
            (conv["state"].as_str(), conv["reason"].as_str()),
            (Some("AGUARDANDO_HUMANO"), Some("llm_failure")),
            "{name}"
        );
        conversa.stop().await;
    }
}

#[tokio::test]
async fn an_answer_that_arrives_after_a_human_took_over_is_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (evo, evo_addr) = FakeEvolution::start().await;
    let (llm, llm_addr) = FakeLlm::start(vec![Script::Delay(
        Duration::from_millis(1500),
        "Abrimos às 9h.".into(),
    )])
    .await;
    let conversa = Conversa::start(dir.path(), with_llm(llm_addr, 5000)).await;
    let key = conversa.tenant("loja", evo_addr, json!({}), LOJA).await;
    conversa
        .customer("loja", MARIA, "Q1", "Que horas vocês abrem?")
        .await;
    eventually("the llm called", 10, || !llm.requests().is_empty()).await;

    let (status, conv) = conversa
        .post(
            &key,
            &format!("/api/v1/conversations/{MARIA}/takeover"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, conv["state"].as_str()),
        (200, Some("AGUARDANDO_HUMANO")),
        "takeover must not wait for the llm"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        evo.texts_to(MARIA).is_empty(),
        "the assistant answered after a human took over: {:?}",
        evo.texts_to(MARIA)
    );
    assert!(
        conversa
            .metrics()
            .await
            .contains(r#"conversa_turns_total{outcome="llm_discarded_human"} 1"#)
    );

    // A message that arrives while the model is answering becomes the next turn (and here, with a
    // human in charge, is recorded in silence).
    conversa.customer("loja", MARIA, "Q2", "Alô?").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, history) = conversa
        .get(&key, &format!("/api/v1/conversations/{MARIA}/messages"))
        .await;
    assert_eq!(history.as_array().unwrap().len(), 2);
    assert!(evo.texts_to(MARIA).is_empty());
    conversa.stop().await;
}

#[tokio::test]
async fn a_message_during_the_llm_call_becomes_the_next_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (evo, evo_addr) = FakeEvolution::start().await;
    let (llm, llm_addr) = FakeLlm::start(vec![
        Script::Delay(Duration::from_millis(800), "Abrimos às 9h.".into()),
        Script::Answer("Entregamos em toda São Paulo.".into()),
    ])
    .await;
    let conversa = Conversa::start(dir.path(), with_llm(llm_addr, 5000)).await;
    conversa.tenant("loja", evo_addr, json!({}), LOJA).await;
    conversa
        .customer("loja", MARIA, "Q1", "Que horas vocês abrem?")
        .await;
    eventually("the llm called", 10, || !llm.requests().is_empty()).await;
    conversa
        .customer("loja", MARIA, "Q2", "Vocês fazem entregas em São Paulo?")
        .await;
    eventually("two answers", 10, || evo.texts_to(MARIA).len() == 2).await;
    assert_eq!(
        evo.texts_to(MARIA),
        ["Abrimos às 9h.", "Entregamos em toda São Paulo."]
    );
    let second = messages(&llm.requests()[1]);
    assert_eq!(
        second.last().unwrap().1,
        "Vocês fazem entregas em São Paulo?"
    );
    conversa.stop().await;
}
