//! The turn decision: what the assistant does with one buffered turn.
//!
//! In order: a suspended tenant or a human in charge means silence; a handoff keyword hands off;
//! a turn that is only small talk gets a friendly answer and never hands off; otherwise retrieval
//! decides between answering and handing off for low confidence.

use serde::Serialize;

use crate::conversation::{ConversationState, Reason};
use crate::knowledge::{DenseQuery, Hit, KnowledgeIndex, extractive_answer};
use crate::smalltalk::{SmallTalk, small_talk, small_talk_reply};
use crate::tenant::{TenantSettings, TenantStatus};
use crate::text::contains_phrase;

/// How many chunks retrieval hands to the answer (and to an LLM prompt).
pub const TOP_K: usize = 3;
/// How many sentences an extractive answer takes from the best chunk.
pub const EXTRACTIVE_SENTENCES: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Silence {
    /// A human is in charge of the conversation.
    HumanInCharge,
    /// The tenant is suspended.
    Suspended,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum TurnDecision {
    /// Answer from the knowledge. `reply` is the extractive answer; an LLM may replace it using `hits`.
    Answer {
        reply: String,
        confidence: f32,
        hits: Vec<Hit>,
    },
    /// Only a greeting, thanks or goodbye.
    SmallTalk { reply: String, kind: SmallTalkKind },
    /// Hand off to a human with the tenant's `fallback_message`.
    Handoff {
        reason: Reason,
        reply: String,
        confidence: f32,
    },
    /// Say nothing.
    Silent { why: Silence },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmallTalkKind {
    Greeting,
    Thanks,
    Goodbye,
}

impl From<SmallTalk> for SmallTalkKind {
    fn from(k: SmallTalk) -> Self {
        match k {
            SmallTalk::Greeting => Self::Greeting,
            SmallTalk::Thanks => Self::Thanks,
            SmallTalk::Goodbye => Self::Goodbye,
        }
    }
}

impl TurnDecision {
    /// A short label for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Answer { .. } => "answered",
            Self::SmallTalk { .. } => "small_talk",
            Self::Handoff {
                reason: Reason::HandoffKeyword,
                ..
            } => "handoff_keyword",
            Self::Handoff { .. } => "handoff_low_confidence",
            Self::Silent {
                why: Silence::HumanInCharge,
            } => "silent_human",
            Self::Silent {
                why: Silence::Suspended,
            } => "silent_suspended",
        }
    }
}

/// Decides the turn. `text` is the whole buffered turn.
pub fn decide(
    text: &str,
    state: ConversationState,
    status: TenantStatus,
    settings: &TenantSettings,
    index: &KnowledgeIndex,
) -> TurnDecision {
    decide_with(text, state, status, settings, index, None)
}

/// [`decide`] with the turn's embedding, when there is one: retrieval is then hybrid (see
/// [`KnowledgeIndex::search_with`]). Callers embed the turn only when [`needs_retrieval`] says the
/// decision will look at the knowledge.
pub fn decide_with(
    text: &str,
    state: ConversationState,
    status: TenantStatus,
    settings: &TenantSettings,
    index: &KnowledgeIndex,
    dense: Option<&DenseQuery>,
) -> TurnDecision {
    if let Some(decision) = decide_without_knowledge(text, state, status, settings) {
        return decision;
    }
    let hits = index.search_with(text, dense, TOP_K);
    let confidence = hits.first().map_or(0.0, |h| h.score);
    match hits.first() {
        Some(best) if confidence >= settings.confidence_threshold => TurnDecision::Answer {
            reply: extractive_answer(text, &best.text, EXTRACTIVE_SENTENCES),
            confidence,
            hits,
        },
        _ => TurnDecision::Handoff {
            reason: Reason::LowConfidence,
            reply: settings.fallback_message.clone(),
            confidence,
        },
    }
}

/// Whether deciding this turn will search the knowledge (it is not silenced, not a handoff
/// keyword, not small talk).
pub fn needs_retrieval(
    text: &str,
    state: ConversationState,
    status: TenantStatus,
    settings: &TenantSettings,
) -> bool {
    decide_without_knowledge(text, state, status, settings).is_none()
}

/// The decisions that need no knowledge: silence, a handoff keyword, small talk.
fn decide_without_knowledge(
    text: &str,
    state: ConversationState,
    status: TenantStatus,
    settings: &TenantSettings,
) -> Option<TurnDecision> {
    if status == TenantStatus::Suspended {
        return Some(TurnDecision::Silent {
            why: Silence::Suspended,
        });
    }
    if state.human_in_charge() {
        return Some(TurnDecision::Silent {
            why: Silence::HumanInCharge,
        });
    }
    if settings
        .handoff_keywords
        .iter()
        .any(|k| contains_phrase(text, k))
    {
        return Some(TurnDecision::Handoff {
            reason: Reason::HandoffKeyword,
            reply: settings.fallback_message.clone(),
            confidence: 0.0,
        });
    }
    small_talk(text).map(|kind| TurnDecision::SmallTalk {
        reply: small_talk_reply(kind, &settings.greeting),
        kind: kind.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knowledge::chunk;

    fn index() -> KnowledgeIndex {
        KnowledgeIndex::build(
            chunk(
                "Nosso horário de funcionamento é de segunda a sábado, das 9h às 18h. Aos domingos a loja fica fechada.\n\n\
                 Fazemos entregas em toda a cidade de São Paulo. O frete é grátis para compras acima de R$ 200.\n\n\
                 Trocas podem ser feitas em até 30 dias com a nota fiscal.",
            )
            .unwrap(),
        )
    }

    fn decide_active(text: &str) -> TurnDecision {
        decide(
            text,
            ConversationState::IaAtiva,
            TenantStatus::Active,
            &TenantSettings::default(),
            &index(),
        )
    }

    #[test]
    fn answers_what_the_knowledge_covers_with_its_own_sentences() {
        match decide_active("qual o horário de funcionamento da loja?") {
            TurnDecision::Answer {
                reply, confidence, ..
            } => {
                assert!(confidence >= 0.5);
                assert!(reply.contains("segunda a sábado"), "{reply}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hands_off_what_it_does_not_cover() {
        assert!(matches!(
            decide_active("vocês consertam motor de geladeira industrial?"),
            TurnDecision::Handoff {
                reason: Reason::LowConfidence,
                ..
            }
        ));
    }

    #[test]
    fn keyword_beats_everything_but_silence() {
        assert!(matches!(
            decide_active("quero falar com um ATENDENTE sobre o horário"),
            TurnDecision::Handoff {
                reason: Reason::HandoffKeyword,
                ..
            }
        ));
    }

    #[test]
    fn small_talk_never_hands_off() {
        assert_eq!(
            decide_active("Oi, bom dia!"),
            TurnDecision::SmallTalk {
                reply: TenantSettings::default().greeting,
                kind: SmallTalkKind::Greeting
            }
        );
    }

    #[test]
    fn silence_when_a_human_is_in_charge_or_the_tenant_is_suspended() {
        let s = TenantSettings::default();
        for state in [
            ConversationState::AguardandoHumano,
            ConversationState::HumanoRespondeu,
        ] {
            assert_eq!(
                decide("atendente", state, TenantStatus::Active, &s, &index()),
                TurnDecision::Silent {
                    why: Silence::HumanInCharge
                }
            );
        }
        assert_eq!(
            decide(
                "qual o horário?",
                ConversationState::IaAtiva,
                TenantStatus::Suspended,
                &s,
                &index()
            ),
            TurnDecision::Silent {
                why: Silence::Suspended
            }
        );
    }

    #[test]
    fn empty_knowledge_hands_off() {
        let d = decide(
            "qual o horário?",
            ConversationState::IaAtiva,
            TenantStatus::Active,
            &TenantSettings::default(),
            &KnowledgeIndex::default(),
        );
        assert!(matches!(
            d,
            TurnDecision::Handoff {
                reason: Reason::LowConfidence,
                ..
            }
        ));
    }
}
