//! The conversation state machine: three states, eight reasons, one [`transition`] function.
//!
//! ```text
//!             low_confidence | handoff_keyword | llm_failure | operator_takeover
//!   IA_ATIVA ───────────────────────────────────────────────────────────────▶ AGUARDANDO_HUMANO
//!      ▲  ▲                                                                       │
//!      │  └──────────── human_timeout | operator_release ────────────────────────┤ human_reply | phone_reply
//!      │                                                                          ▼
//!      └─────────────── human_timeout | operator_release ─────────────── HUMANO_RESPONDEU
//! ```
//! `human_reply` and `phone_reply` also move `IA_ATIVA` straight to `HUMANO_RESPONDEU`: a human who
//! writes to the customer is in charge from that moment.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{ContactId, TenantId};
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConversationState {
    /// The assistant answers.
    #[serde(rename = "IA_ATIVA")]
    IaAtiva,
    /// The assistant is silent; a human is expected.
    #[serde(rename = "AGUARDANDO_HUMANO")]
    AguardandoHumano,
    /// A human answered; the assistant stays silent.
    #[serde(rename = "HUMANO_RESPONDEU")]
    HumanoRespondeu,
}

impl ConversationState {
    pub const ALL: [ConversationState; 3] =
        [Self::IaAtiva, Self::AguardandoHumano, Self::HumanoRespondeu];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::IaAtiva => "IA_ATIVA",
            Self::AguardandoHumano => "AGUARDANDO_HUMANO",
            Self::HumanoRespondeu => "HUMANO_RESPONDEU",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Whether a human is in charge (the assistant must stay silent).
    pub fn human_in_charge(self) -> bool {
        self != Self::IaAtiva
    }
}

impl fmt::Display for ConversationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a conversation changed state: also the event that asks for the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    LowConfidence,
    HandoffKeyword,
    OperatorTakeover,
    HumanReply,
    PhoneReply,
    HumanTimeout,
    OperatorRelease,
    LlmFailure,
    /// The provider refuses free-form answers (WhatsApp's 24-hour customer service window is
    /// closed): a human has to take it from here, with a template or once the customer writes.
    OutsideWindow,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Self::LowConfidence,
        Self::HandoffKeyword,
        Self::OperatorTakeover,
        Self::HumanReply,
        Self::PhoneReply,
        Self::HumanTimeout,
        Self::OperatorRelease,
        Self::LlmFailure,
        Self::OutsideWindow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LowConfidence => "low_confidence",
            Self::HandoffKeyword => "handoff_keyword",
            Self::OperatorTakeover => "operator_takeover",
            Self::HumanReply => "human_reply",
            Self::PhoneReply => "phone_reply",
            Self::HumanTimeout => "human_timeout",
            Self::OperatorRelease => "operator_release",
            Self::LlmFailure => "llm_failure",
            Self::OutsideWindow => "outside_window",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this reason is an act of a human (it refreshes the human-timeout deadline).
    pub fn is_human_activity(self) -> bool {
        matches!(
            self,
            Self::OperatorTakeover | Self::HumanReply | Self::PhoneReply
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: ConversationState,
    pub to: ConversationState,
    pub reason: Reason,
}

/// The result of asking for a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The state changes.
    Move(Transition),
    /// The event is valid but the state is already where it leads (a second takeover, a release of
    /// a conversation the assistant already holds, a second human reply).
    Stay,
    /// The event makes no sense in this state (a human timeout while the assistant is active, an
    /// assistant handoff while a human is in charge): ignore it.
    Invalid,
}

/// The state machine. Pure and total.
pub fn transition(from: ConversationState, reason: Reason) -> Outcome {
    use ConversationState::*;
    use Reason::*;
    let to = match (from, reason) {
        (
            IaAtiva,
            LowConfidence | HandoffKeyword | LlmFailure | OperatorTakeover | OutsideWindow,
        ) => AguardandoHumano,
        (_, LowConfidence | HandoffKeyword | LlmFailure) => return Outcome::Invalid,
        (AguardandoHumano | HumanoRespondeu, OutsideWindow) => return Outcome::Stay,
        (AguardandoHumano | HumanoRespondeu, OperatorTakeover) => return Outcome::Stay,
        (_, HumanReply | PhoneReply) => HumanoRespondeu,
        (AguardandoHumano | HumanoRespondeu, HumanTimeout | OperatorRelease) => IaAtiva,
        (IaAtiva, HumanTimeout) => return Outcome::Invalid,
        (IaAtiva, OperatorRelease) => return Outcome::Stay,
    };
    if to == from {
        Outcome::Stay
    } else {
        Outcome::Move(Transition { from, to, reason })
    }
}

/// The durable record of one conversation (its history lives apart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub tenant: TenantId,
    pub contact: ContactId,
    pub state: ConversationState,
    /// The reason of the last state change, if any.
    pub reason: Option<Reason>,
    pub updated_at: Timestamp,
    pub last_message_at: Option<Timestamp>,
    /// When the assistant takes the conversation back (set while a human is in charge).
    pub human_deadline: Option<Timestamp>,
    /// Whether a human wrote to the customer since the last handoff (chooses `return_message`
    /// over `no_human_message` at the timeout).
    pub human_answered: bool,
}

impl Conversation {
    pub fn new(tenant: TenantId, contact: ContactId, now: Timestamp) -> Self {
        Self {
            tenant,
            contact,
            state: ConversationState::IaAtiva,
            reason: None,
            updated_at: now,
            last_message_at: None,
            human_deadline: None,
            human_answered: false,
        }
    }

    /// Applies `reason` at `now`: the state, the deadline and the human flag move together.
    /// Returns the transition when the state changed. Human activity that keeps the state (a second
    /// human reply) still refreshes the deadline.
    pub fn apply(&mut self, reason: Reason, now: Timestamp, human_timeout_hours: f64) -> Outcome {
        let outcome = transition(self.state, reason);
        match outcome {
            Outcome::Invalid => return outcome,
            Outcome::Move(t) => {
                self.state = t.to;
                self.reason = Some(reason);
                if t.from == ConversationState::IaAtiva {
                    // A new handoff: nobody has answered this one yet.
                    self.human_answered = false;
                }
            }
            Outcome::Stay => {}
        }
        if matches!(reason, Reason::HumanReply | Reason::PhoneReply) {
            self.human_answered = true;
        }
        if self.state.human_in_charge() {
            if matches!(outcome, Outcome::Move(_)) || reason.is_human_activity() {
                self.human_deadline = Some(now.plus_hours(human_timeout_hours));
            }
        } else {
            self.human_deadline = None;
            self.human_answered = false;
        }
        self.updated_at = now;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::ConversationState::*;
    use super::Reason::*;
    use super::*;

    #[track_caller]
    fn check(from: ConversationState, reason: Reason, expected: Option<ConversationState>) {
        let got = match transition(from, reason) {
            Outcome::Move(t) => {
                assert_eq!((t.from, t.reason), (from, reason));
                Some(t.to)
            }
            Outcome::Stay => Some(from),
            Outcome::Invalid => None,
        };
        assert_eq!(got, expected, "{from} --{reason}-->");
    }

    #[test]
    fn every_state_and_reason() {
        check(IaAtiva, LowConfidence, Some(AguardandoHumano));
        check(IaAtiva, HandoffKeyword, Some(AguardandoHumano));
        check(IaAtiva, LlmFailure, Some(AguardandoHumano));
        check(IaAtiva, OutsideWindow, Some(AguardandoHumano));
        check(IaAtiva, OperatorTakeover, Some(AguardandoHumano));
        check(IaAtiva, HumanReply, Some(HumanoRespondeu));
        check(IaAtiva, PhoneReply, Some(HumanoRespondeu));
        check(IaAtiva, HumanTimeout, None);
        check(IaAtiva, OperatorRelease, Some(IaAtiva));

        for human in [AguardandoHumano, HumanoRespondeu] {
            check(human, LowConfidence, None);
            check(human, HandoffKeyword, None);
            check(human, LlmFailure, None);
            check(human, OutsideWindow, Some(human));
            check(human, OperatorTakeover, Some(human));
            check(human, HumanReply, Some(HumanoRespondeu));
            check(human, PhoneReply, Some(HumanoRespondeu));
            check(human, HumanTimeout, Some(IaAtiva));
            check(human, OperatorRelease, Some(IaAtiva));
        }
    }

    #[test]
    fn strings_match_the_contract() {
        assert_eq!(
            serde_json::to_string(&AguardandoHumano).unwrap(),
            "\"AGUARDANDO_HUMANO\""
        );
        assert_eq!(
            serde_json::to_string(&PhoneReply).unwrap(),
            "\"phone_reply\""
        );
        for s in ConversationState::ALL {
            assert_eq!(ConversationState::parse(s.as_str()), Some(s));
        }
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    fn conv() -> Conversation {
        Conversation::new(
            TenantId::parse("t").unwrap(),
            ContactId::parse("5511999999999").unwrap(),
            Timestamp(0),
        )
    }

    #[test]
    fn deadline_follows_human_activity() {
        let hour = 3_600_000;
        let mut c = conv();
        c.apply(LowConfidence, Timestamp(0), 24.0);
        assert_eq!(c.human_deadline, Some(Timestamp(24 * hour)));
        assert!(!c.human_answered);

        // A customer writing again does not touch the deadline; a human reply refreshes it.
        c.apply(HumanReply, Timestamp(hour), 24.0);
        assert_eq!(c.state, HumanoRespondeu);
        assert_eq!(c.human_deadline, Some(Timestamp(25 * hour)));
        assert!(c.human_answered);
        c.apply(HumanReply, Timestamp(2 * hour), 24.0);
        assert_eq!(c.human_deadline, Some(Timestamp(26 * hour)));

        c.apply(HumanTimeout, Timestamp(26 * hour), 24.0);
        assert_eq!(
            (c.state, c.human_deadline, c.human_answered),
            (IaAtiva, None, false)
        );
        assert_eq!(c.reason, Some(HumanTimeout));
    }

    #[test]
    fn fractional_timeout_hours() {
        let mut c = conv();
        c.apply(OperatorTakeover, Timestamp(0), 0.5);
        assert_eq!(c.human_deadline, Some(Timestamp(1_800_000)));
    }

    #[test]
    fn invalid_events_change_nothing() {
        let mut c = conv();
        let before = c.clone();
        assert_eq!(c.apply(HumanTimeout, Timestamp(5), 24.0), Outcome::Invalid);
        assert_eq!(c, before);
    }
}
