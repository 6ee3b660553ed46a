//! The prompt of a turn: the tenant's instructions and tone, the retrieved knowledge with a strict
//! grounding rule, the conversation's memory (roles kept), and the buffered turn as one user
//! message, within a token budget that truncates context and never the turn.

use serde::Serialize;

use crate::knowledge::Hit;
use crate::memory::MemoryEntry;
use crate::message::Author;
use crate::tenant::{TenantSettings, Tone};

/// Tokens the prompt may use before the answer's `max_tokens` (a conservative budget that fits
/// the common 8k-context models).
pub const PROMPT_BUDGET_TOKENS: usize = 6000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// Everything an LLM call needs; also what the debug endpoint shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlmRequest {
    pub model: String,
    pub temperature: f32,
    pub max_tokens: u32,
    pub messages: Vec<ChatMessage>,
    /// Knowledge chunks dropped to fit the budget.
    pub dropped_chunks: usize,
    /// Memory messages dropped to fit the budget.
    pub dropped_memory: usize,
}

/// A rough token estimate (about four characters a token for Portuguese and English text).
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4) + 4
}

fn tone_rule(tone: Tone) -> &'static str {
    match tone {
        Tone::Formal => {
            "Use linguagem formal e cordial, tratando o cliente por \"você\" com respeito, sem gírias nem emojis."
        }
        Tone::Casual => {
            "Use linguagem simpática e próxima, com frases curtas; um emoji de vez em quando é bem-vindo."
        }
        Tone::Tecnico => {
            "Use linguagem técnica, precisa e objetiva, com os termos corretos e sem rodeios."
        }
    }
}

/// The grounding rule: the model may only use the passages it is given.
pub const GROUNDING_RULE: &str = "Responda somente com base nas INFORMAÇÕES DA EMPRESA abaixo. \
Não invente preços, prazos, horários, endereços nem políticas. \
Se as informações não cobrirem a pergunta, diga claramente que não tem essa informação e ofereça chamar uma pessoa da equipe.";

/// Builds the request for one turn. `hits` best first; `memory` oldest first.
pub fn build(
    business_name: &str,
    settings: &TenantSettings,
    hits: &[Hit],
    memory: &[MemoryEntry],
    turn: &str,
) -> LlmRequest {
    let system_head = {
        let mut s = String::new();
        if !settings.system_prompt.trim().is_empty() {
            s.push_str(settings.system_prompt.trim());
            s.push_str("\n\n");
        }
        s.push_str(&format!(
            "Você é o assistente virtual de atendimento de {business_name} no WhatsApp.\n{}\n{GROUNDING_RULE}\n\
             Responda em português do Brasil, de forma curta e adequada ao WhatsApp.\n\nINFORMAÇÕES DA EMPRESA:\n",
            tone_rule(settings.tone)
        ));
        s
    };
    let turn_message = ChatMessage {
        role: Role::User,
        content: turn.to_owned(),
    };
    let mut budget = PROMPT_BUDGET_TOKENS
        .saturating_sub(estimate_tokens(&system_head))
        .saturating_sub(estimate_tokens(turn));

    // Knowledge first (best hits), then memory (newest first): what does not fit is dropped.
    let mut chunks = Vec::new();
    for hit in hits {
        let cost = estimate_tokens(&hit.text);
        if cost <= budget {
            budget -= cost;
            chunks.push(hit);
        }
    }
    let mut kept_memory = Vec::new();
    for entry in memory.iter().rev() {
        let cost = estimate_tokens(&entry.text);
        if cost > budget {
            break;
        }
        budget -= cost;
        kept_memory.push(entry);
    }
    kept_memory.reverse();

    let mut system = system_head;
    for (i, hit) in chunks.iter().enumerate() {
        system.push_str(&format!("[{}] {}\n", i + 1, hit.text.trim()));
    }
    if chunks.is_empty() {
        system.push_str("(nenhuma informação disponível)\n");
    }
    let mut messages = vec![ChatMessage {
        role: Role::System,
        content: system,
    }];
    messages.extend(kept_memory.iter().map(|m| ChatMessage {
        role: if m.author == Author::Contact {
            Role::User
        } else {
            Role::Assistant
        },
        content: m.text.clone(),
    }));
    messages.push(turn_message);
    LlmRequest {
        model: settings.model.clone(),
        temperature: settings.temperature,
        max_tokens: settings.max_tokens,
        messages,
        dropped_chunks: hits.len() - chunks.len(),
        dropped_memory: memory.len() - kept_memory.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(text: &str) -> Hit {
        Hit {
            chunk: 0,
            text: text.into(),
            score: 0.9,
        }
    }

    fn mem(author: Author, text: &str) -> MemoryEntry {
        MemoryEntry {
            author,
            text: text.into(),
        }
    }

    #[test]
    fn grounding_tone_memory_and_turn_in_order() {
        let settings = TenantSettings {
            tone: Tone::Formal,
            system_prompt: "Seja breve.".into(),
            ..Default::default()
        };
        let req = build(
            "Loja Centro",
            &settings,
            &[hit("Abrimos às 9h.")],
            &[
                mem(Author::Contact, "oi"),
                mem(Author::Assistant, "Olá!"),
                mem(Author::Human, "Sou a Ana."),
            ],
            "que horas abre?",
        );
        let system = &req.messages[0].content;
        assert!(system.starts_with("Seja breve."));
        assert!(system.contains("Loja Centro"));
        assert!(system.contains(GROUNDING_RULE));
        assert!(system.contains(tone_rule(Tone::Formal)));
        assert!(system.contains("[1] Abrimos às 9h."));
        let roles: Vec<Role> = req.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Assistant,
                Role::User
            ]
        );
        assert_eq!(req.messages.last().unwrap().content, "que horas abre?");
        assert_eq!((req.dropped_chunks, req.dropped_memory), (0, 0));
    }

    #[test]
    fn the_budget_cuts_context_never_the_turn() {
        let big = "palavra ".repeat(3000); // about 6,000 tokens
        let turn = "pergunta ".repeat(500);
        let req = build(
            "X",
            &TenantSettings::default(),
            &[hit("curto"), hit(&big)],
            &[mem(Author::Contact, &big), mem(Author::Contact, "recente")],
            &turn,
        );
        assert_eq!(req.messages.last().unwrap().content, turn);
        assert_eq!(req.dropped_chunks, 1);
        assert_eq!(
            req.dropped_memory, 1,
            "the oldest (and huge) memory goes first"
        );
        assert_eq!(req.messages[1].content, "recente");
        let total: usize = req
            .messages
            .iter()
            .map(|m| estimate_tokens(&m.content))
            .sum();
        assert!(
            total <= PROMPT_BUDGET_TOKENS + estimate_tokens(&turn),
            "{total}"
        );
    }
}
