//! Sending like a person: long answers become several WhatsApp messages split on paragraph
//! boundaries, each preceded by a typing pause proportional to its length and bounded.

use crate::tenant::TenantSettings;

/// WhatsApp's limit for one text message (Meta's Cloud API refuses more).
pub const MAX_MESSAGE_CHARS: usize = 4096;

/// The messages an answer is sent as. With `split_paragraphs`, each paragraph (separated by a blank
/// line) is its own message; otherwise the answer is one message. Either way no part exceeds
/// [`MAX_MESSAGE_CHARS`] (an over-long paragraph is cut at the last space before the limit).
pub fn parts(answer: &str, settings: &TenantSettings) -> Vec<String> {
    let answer = answer.trim();
    if answer.is_empty() {
        return Vec::new();
    }
    let paragraphs: Vec<&str> = if settings.split_paragraphs {
        answer
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect()
    } else {
        vec![answer]
    };
    paragraphs.into_iter().flat_map(cut).collect()
}

fn cut(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.chars().count() > MAX_MESSAGE_CHARS {
        let limit = rest
            .char_indices()
            .nth(MAX_MESSAGE_CHARS)
            .map_or(rest.len(), |(i, _)| i);
        let at = rest[..limit]
            .rfind(char::is_whitespace)
            .filter(|&i| i > 0)
            .unwrap_or(limit);
        out.push(rest[..at].trim_end().to_owned());
        rest = rest[at..].trim_start();
    }
    if !rest.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

/// How long "typing…" shows before a message of `text`: `typing_ms_per_char` per character,
/// at most `typing_max_ms`.
pub fn typing_delay_ms(text: &str, settings: &TenantSettings) -> u64 {
    (text.chars().count() as u64)
        .saturating_mul(settings.typing_ms_per_char)
        .min(settings.typing_max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_become_messages() {
        let s = TenantSettings::default();
        assert_eq!(
            parts("Olá!\n\nAbrimos às 9h.\n\n\n  Até mais.  ", &s),
            ["Olá!", "Abrimos às 9h.", "Até mais."]
        );
        let one = TenantSettings {
            split_paragraphs: false,
            ..TenantSettings::default()
        };
        assert_eq!(parts("a\n\nb", &one), ["a\n\nb"]);
        assert!(parts("  \n\n ", &s).is_empty());
    }

    #[test]
    fn no_part_exceeds_the_whatsapp_limit_and_words_stay_whole() {
        let s = TenantSettings::default();
        let long = "palavra ".repeat(1200);
        let p = parts(&long, &s);
        assert!(p.len() >= 2);
        assert!(
            p.iter()
                .all(|x| x.chars().count() <= MAX_MESSAGE_CHARS && !x.ends_with(' '))
        );
        assert!(p.iter().all(|x| x.split(' ').all(|w| w == "palavra")));
        assert_eq!(p.concat().matches("palavra").count(), 1200);
    }

    #[test]
    fn typing_is_proportional_and_bounded() {
        let s = TenantSettings {
            typing_ms_per_char: 20,
            typing_max_ms: 2000,
            ..TenantSettings::default()
        };
        assert_eq!(typing_delay_ms("abcde", &s), 100);
        assert_eq!(typing_delay_ms(&"x".repeat(1000), &s), 2000);
    }
}
