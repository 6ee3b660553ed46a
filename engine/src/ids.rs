//! Identifiers: tenants (slugs), contacts (E.164 digits without `+`) and messages.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// A tenant id: a slug `[a-z0-9][a-z0-9-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, EngineError> {
        let bytes = s.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(EngineError::invalid(
                "id",
                "tenant ids are slugs: lower-case letters, digits and '-', 1 to 63 characters, not starting with '-'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A contact: the phone number as digits only, E.164 without `+` (`5511999999999`), or, for a
/// person WhatsApp addresses by a hidden id and whose number the provider does not tell, that id
/// (`123456789012345@lid`; replies go back to the same id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContactId(String);

impl ContactId {
    /// Parses a phone number typed by a person or an API client: `+55 (11) 99999-9999` → `5511999999999`;
    /// or a hidden id, `123456789012345@lid`.
    pub fn parse(s: &str) -> Result<Self, EngineError> {
        if let Some(user) = s.strip_suffix("@lid") {
            return Self::hidden(user);
        }
        let digits: String = s
            .chars()
            .filter(|c| !matches!(c, '+' | ' ' | '-' | '(' | ')' | '.'))
            .collect();
        if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(digits))
        } else {
            Err(EngineError::invalid(
                "contact",
                "a contact is a phone number in E.164 form: 8 to 15 digits, optionally with a leading '+'",
            ))
        }
    }

    /// Normalises a provider chat id that designates one person: `5511999999999@s.whatsapp.net`,
    /// `5511999999999:12@s.whatsapp.net` (a device suffix), `5511999999999@c.us`, or bare digits
    /// (Meta's `wa_id`). Groups, broadcasts, channels and hidden (`@lid`) ids are not contacts.
    pub fn from_jid(jid: &str) -> Result<Self, EngineError> {
        let (user, server) = match jid.split_once('@') {
            Some((user, server)) => (user, Some(server)),
            None => (jid, None),
        };
        match server {
            None | Some("s.whatsapp.net") | Some("c.us") => {}
            Some("lid") => {
                let user = user.split_once(':').map_or(user, |(u, _device)| u);
                return Self::hidden(user);
            }
            Some(_) => {
                return Err(EngineError::invalid(
                    "contact",
                    "the chat id does not designate a phone number",
                ));
            }
        }
        let user = user.split_once(':').map_or(user, |(u, _device)| u);
        Self::parse(user)
    }

    /// A hidden (`@lid`) id: 5 to 20 digits.
    fn hidden(user: &str) -> Result<Self, EngineError> {
        if (5..=20).contains(&user.len()) && user.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(format!("{user}@lid")))
        } else {
            Err(EngineError::invalid(
                "contact",
                "a hidden WhatsApp id is 5 to 20 digits followed by '@lid'",
            ))
        }
    }

    /// Whether this contact is a hidden (`@lid`) id rather than a phone number.
    pub fn is_hidden(&self) -> bool {
        self.0.ends_with("@lid")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Conversa's own id of a stored message (a UUIDv7 string minted by the caller).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub String);

impl MessageId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_id_impls {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.0
            }
        }
    };
}
string_id_impls!(TenantId);
string_id_impls!(ContactId);
string_id_impls!(MessageId);

impl FromStr for TenantId {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
impl TryFrom<String> for TenantId {
    type Error = EngineError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl FromStr for ContactId {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
impl TryFrom<String> for ContactId {
    type Error = EngineError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_slugs() {
        for ok in ["a", "loja-centro", "0abc", &"a".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "Loja",
            "loja_centro",
            "loja centro",
            &"a".repeat(64),
            "ação",
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[track_caller]
    fn jid(input: &str, expected: Option<&str>) {
        assert_eq!(
            ContactId::from_jid(input)
                .ok()
                .as_ref()
                .map(ContactId::as_str),
            expected
        );
    }

    #[test]
    fn contacts_from_provider_jids() {
        jid("5511999999999@s.whatsapp.net", Some("5511999999999"));
        jid("5511999999999:12@s.whatsapp.net", Some("5511999999999"));
        jid("5511999999999@c.us", Some("5511999999999"));
        jid("5511999999999", Some("5511999999999"));
        jid("120363025246125486@g.us", None);
        jid("status@broadcast", None);
        jid("120363111111111111@newsletter", None);
        jid("123456789012345@lid", Some("123456789012345@lid"));
        jid("123456789012345:3@lid", Some("123456789012345@lid"));
        jid("12a@lid", None);
        jid("abc@s.whatsapp.net", None);
        jid("", None);
    }

    #[test]
    fn contacts_typed_by_people() {
        assert_eq!(
            ContactId::parse("+55 (11) 99999-9999").unwrap().as_str(),
            "5511999999999"
        );
        assert!(ContactId::parse("1234").is_err());
        let hidden = ContactId::parse("123456789012345@lid").unwrap();
        assert!(hidden.is_hidden());
        assert!(!ContactId::parse("5511999999999").unwrap().is_hidden());
        assert!(ContactId::parse("@lid").is_err());
        assert!(ContactId::parse("5511a99999999").is_err());
    }
}
