//! Greetings, thanks and goodbyes: messages that need a friendly reply rather than retrieval.
//!
//! A message is small talk only when every word of it is ("oi", "Olá, bom dia!", "ok obrigada",
//! "tchau, até mais"); "oi, qual o horário de vocês?" is a question and goes to retrieval.
//! Matching folds case and accents, ignores punctuation and emoji, and squeezes repeated letters
//! ("oiii", "obrigadaaa").

use crate::text;

/// The kinds of small talk the assistant answers by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallTalk {
    Greeting,
    Thanks,
    Goodbye,
}

/// The kind of small talk `text` is, or `None` when any part of it is something else.
///
/// A message that mixes kinds takes the one that ends a conversation last: goodbye over thanks
/// over greeting ("obrigado, tchau" is a goodbye). A bare acknowledgement ("ok", "beleza",
/// "entendi") counts as thanks, and so does a message of only 👍, 🙏 or hearts.
pub fn small_talk(text: &str) -> Option<SmallTalk> {
    let words: Vec<String> = text::words(text).iter().map(|word| squeeze(word)).collect();
    if words.is_empty() {
        return emoji_only(text);
    }
    let mut found = Found::default();
    let mut position = 0;
    while position < words.len() {
        let (length, role) = longest_phrase_at(&words[position..])?;
        match role {
            Role::Kind(SmallTalk::Greeting) => found.greeting = true,
            Role::Kind(SmallTalk::Thanks) => found.thanks = true,
            Role::Kind(SmallTalk::Goodbye) => found.goodbye = true,
            Role::Acknowledgement => found.acknowledgement = true,
            Role::Filler => {}
        }
        position += length;
    }
    if found.goodbye {
        Some(SmallTalk::Goodbye)
    } else if found.thanks {
        Some(SmallTalk::Thanks)
    } else if found.greeting {
        Some(SmallTalk::Greeting)
    } else if found.acknowledgement {
        Some(SmallTalk::Thanks)
    } else {
        None
    }
}

/// The reply to small talk: the tenant's `greeting` for a greeting (a default when it is blank),
/// and friendly Brazilian-Portuguese texts for thanks and goodbyes.
pub fn small_talk_reply(kind: SmallTalk, greeting: &str) -> String {
    match kind {
        SmallTalk::Greeting if greeting.trim().is_empty() => {
            "Olá! Como posso ajudar você?".to_owned()
        }
        SmallTalk::Greeting => greeting.trim().to_owned(),
        SmallTalk::Thanks => {
            "Por nada! Se precisar de mais alguma coisa, é só chamar. 😊".to_owned()
        }
        SmallTalk::Goodbye => {
            "Até mais! Quando precisar, é só mandar uma mensagem por aqui. 👋".to_owned()
        }
    }
}

/// What a known phrase contributes to the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Kind(SmallTalk),
    /// "ok", "beleza": small talk, and thanks when alone.
    Acknowledgement,
    /// Words that may surround small talk but are not small talk alone ("pessoal", "pela ajuda").
    Filler,
}

#[derive(Debug, Default)]
struct Found {
    greeting: bool,
    thanks: bool,
    goodbye: bool,
    acknowledgement: bool,
}

/// Known phrases, folded and squeezed, longest match first at each position.
const PHRASES: &[(&str, Role)] = &[
    // Greetings.
    ("oi", Role::Kind(SmallTalk::Greeting)),
    ("oie", Role::Kind(SmallTalk::Greeting)),
    ("ola", Role::Kind(SmallTalk::Greeting)),
    ("alo", Role::Kind(SmallTalk::Greeting)),
    ("opa", Role::Kind(SmallTalk::Greeting)),
    ("hey", Role::Kind(SmallTalk::Greeting)),
    ("hi", Role::Kind(SmallTalk::Greeting)),
    ("salve", Role::Kind(SmallTalk::Greeting)),
    ("eai", Role::Kind(SmallTalk::Greeting)),
    ("eae", Role::Kind(SmallTalk::Greeting)),
    ("iae", Role::Kind(SmallTalk::Greeting)),
    ("e ai", Role::Kind(SmallTalk::Greeting)),
    ("bom dia", Role::Kind(SmallTalk::Greeting)),
    ("boa tarde", Role::Kind(SmallTalk::Greeting)),
    ("boa noite", Role::Kind(SmallTalk::Greeting)),
    ("tudo bem", Role::Kind(SmallTalk::Greeting)),
    ("tudo bom", Role::Kind(SmallTalk::Greeting)),
    ("tudo certo", Role::Kind(SmallTalk::Greeting)),
    ("tudo joia", Role::Kind(SmallTalk::Greeting)),
    ("td bem", Role::Kind(SmallTalk::Greeting)),
    ("td bom", Role::Kind(SmallTalk::Greeting)),
    ("como vai", Role::Kind(SmallTalk::Greeting)),
    ("como esta", Role::Kind(SmallTalk::Greeting)),
    ("como estao", Role::Kind(SmallTalk::Greeting)),
    // Thanks.
    ("obrigado", Role::Kind(SmallTalk::Thanks)),
    ("obrigada", Role::Kind(SmallTalk::Thanks)),
    ("obrigadao", Role::Kind(SmallTalk::Thanks)),
    ("obrigadinho", Role::Kind(SmallTalk::Thanks)),
    ("obrigadinha", Role::Kind(SmallTalk::Thanks)),
    ("brigado", Role::Kind(SmallTalk::Thanks)),
    ("brigada", Role::Kind(SmallTalk::Thanks)),
    ("brigadao", Role::Kind(SmallTalk::Thanks)),
    ("obg", Role::Kind(SmallTalk::Thanks)),
    ("obgd", Role::Kind(SmallTalk::Thanks)),
    ("obgda", Role::Kind(SmallTalk::Thanks)),
    ("obgdo", Role::Kind(SmallTalk::Thanks)),
    ("valeu", Role::Kind(SmallTalk::Thanks)),
    ("vlw", Role::Kind(SmallTalk::Thanks)),
    ("grato", Role::Kind(SmallTalk::Thanks)),
    ("grata", Role::Kind(SmallTalk::Thanks)),
    ("agradeco", Role::Kind(SmallTalk::Thanks)),
    ("agradecido", Role::Kind(SmallTalk::Thanks)),
    ("agradecida", Role::Kind(SmallTalk::Thanks)),
    ("thanks", Role::Kind(SmallTalk::Thanks)),
    ("thx", Role::Kind(SmallTalk::Thanks)),
    // Goodbyes.
    ("tchau", Role::Kind(SmallTalk::Goodbye)),
    ("tchauzinho", Role::Kind(SmallTalk::Goodbye)),
    ("xau", Role::Kind(SmallTalk::Goodbye)),
    ("falou", Role::Kind(SmallTalk::Goodbye)),
    ("flw", Role::Kind(SmallTalk::Goodbye)),
    ("bye", Role::Kind(SmallTalk::Goodbye)),
    ("adeus", Role::Kind(SmallTalk::Goodbye)),
    ("ate", Role::Kind(SmallTalk::Goodbye)),
    ("ate mais", Role::Kind(SmallTalk::Goodbye)),
    ("ate logo", Role::Kind(SmallTalk::Goodbye)),
    ("ate amanha", Role::Kind(SmallTalk::Goodbye)),
    ("ate breve", Role::Kind(SmallTalk::Goodbye)),
    ("ate a proxima", Role::Kind(SmallTalk::Goodbye)),
    ("boa semana", Role::Kind(SmallTalk::Goodbye)),
    ("bom fim de semana", Role::Kind(SmallTalk::Goodbye)),
    ("bom final de semana", Role::Kind(SmallTalk::Goodbye)),
    ("abraco", Role::Kind(SmallTalk::Goodbye)),
    ("abracos", Role::Kind(SmallTalk::Goodbye)),
    ("abs", Role::Kind(SmallTalk::Goodbye)),
    ("beijo", Role::Kind(SmallTalk::Goodbye)),
    ("beijos", Role::Kind(SmallTalk::Goodbye)),
    ("bj", Role::Kind(SmallTalk::Goodbye)),
    ("bjs", Role::Kind(SmallTalk::Goodbye)),
    ("tmj", Role::Kind(SmallTalk::Goodbye)),
    // Acknowledgements.
    ("ok", Role::Acknowledgement),
    ("okay", Role::Acknowledgement),
    ("blz", Role::Acknowledgement),
    ("beleza", Role::Acknowledgement),
    ("certo", Role::Acknowledgement),
    ("entendi", Role::Acknowledgement),
    ("perfeito", Role::Acknowledgement),
    ("otimo", Role::Acknowledgement),
    ("show", Role::Acknowledgement),
    ("joia", Role::Acknowledgement),
    ("top", Role::Acknowledgement),
    ("combinado", Role::Acknowledgement),
    ("ta bom", Role::Acknowledgement),
    ("tabom", Role::Acknowledgement),
    ("ta certo", Role::Acknowledgement),
    // Fillers.
    ("a", Role::Filler),
    ("o", Role::Filler),
    ("e", Role::Filler),
    ("com", Role::Filler),
    ("de", Role::Filler),
    ("pra", Role::Filler),
    ("para", Role::Filler),
    ("por", Role::Filler),
    ("pela", Role::Filler),
    ("pelo", Role::Filler),
    ("sim", Role::Filler),
    ("ah", Role::Filler),
    ("hm", Role::Filler),
    ("ta", Role::Filler),
    ("entao", Role::Filler),
    ("muito", Role::Filler),
    ("mt", Role::Filler),
    ("mto", Role::Filler),
    ("mesmo", Role::Filler),
    ("tambem", Role::Filler),
    ("tb", Role::Filler),
    ("tbm", Role::Filler),
    ("voce", Role::Filler),
    ("voces", Role::Filler),
    ("vc", Role::Filler),
    ("vcs", Role::Filler),
    ("pesoal", Role::Filler),
    ("gente", Role::Filler),
    ("moca", Role::Filler),
    ("moco", Role::Filler),
    ("amigo", Role::Filler),
    ("amiga", Role::Filler),
    ("querida", Role::Filler),
    ("querido", Role::Filler),
    ("dona", Role::Filler),
    ("senhor", Role::Filler),
    ("senhora", Role::Filler),
    ("sr", Role::Filler),
    ("sra", Role::Filler),
    ("ajuda", Role::Filler),
    ("atencao", Role::Filler),
    ("paciencia", Role::Filler),
    ("informacao", Role::Filler),
    ("informacoes", Role::Filler),
    ("retorno", Role::Filler),
    ("resposta", Role::Filler),
    ("atendimento", Role::Filler),
];

/// The longest known phrase that `words` starts with, as (number of words, role).
fn longest_phrase_at(words: &[String]) -> Option<(usize, Role)> {
    if is_laughter(&words[0]) {
        return Some((1, Role::Filler));
    }
    PHRASES
        .iter()
        .filter_map(|(phrase, role)| {
            let phrase_words: Vec<&str> = phrase.split(' ').collect();
            let matches = words.len() >= phrase_words.len()
                && phrase_words
                    .iter()
                    .zip(words)
                    .all(|(expected, word)| expected == word);
            matches.then_some((phrase_words.len(), *role))
        })
        .max_by_key(|(length, _)| *length)
}

/// "kkk", "rsrs", "haha", "hehe".
fn is_laughter(word: &str) -> bool {
    let repeats = |syllable: &[u8], min_len: usize| {
        word.len() >= min_len && word.as_bytes().chunks(2).all(|pair| pair == syllable)
    };
    word.chars().all(|c| c == 'k') || repeats(b"rs", 2) || repeats(b"ha", 4) || repeats(b"he", 4)
}

/// Squeezes runs of one repeated letter ("oiii" → "oi", "obrigadooo" → "obrigado").
/// Phrases are written squeezed, so words with a real double letter ("pessoal") are too.
fn squeeze(word: &str) -> String {
    let mut squeezed = String::with_capacity(word.len());
    for character in word.chars() {
        if !squeezed.ends_with(character) {
            squeezed.push(character);
        }
    }
    squeezed
}

/// Small talk told with emoji alone: 👍, 🙏 and hearts are thanks, 👋 is a greeting.
fn emoji_only(text: &str) -> Option<SmallTalk> {
    if text.contains([
        '👍', '👌', '🙏', '❤', '♥', '😊', '🥰', '😘', '💖', '💕', '👏',
    ]) {
        Some(SmallTalk::Thanks)
    } else if text.contains('👋') {
        Some(SmallTalk::Greeting)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expected: Option<SmallTalk>) {
        assert_eq!(small_talk(text), expected, "{text:?}");
    }

    #[test]
    fn greetings() {
        for text in [
            "oi",
            "Oi!",
            "oiii",
            "OIEEE",
            "Olá, bom dia!",
            "bom dia",
            "Boa tarde!!",
            "boa noite 🌙",
            "tudo bem?",
            "oi, tudo bem?",
            "e aí, td bem?",
            "Bom dia pessoal, tudo bem com vocês?",
            "opa",
            "👋",
        ] {
            check(text, Some(SmallTalk::Greeting));
        }
    }

    #[test]
    fn thanks() {
        for text in [
            "obrigado!!",
            "obrigadaaa",
            "Muito obrigada pela ajuda 😊",
            "obgd",
            "obg",
            "vlw",
            "valeu!",
            "ok obrigada",
            "brigadão",
            "agradeço a atenção",
            "👍",
            "🙏🏽",
            "ok",
            "blz",
            "Beleza, entendi",
            "tá bom",
            "kkk valeu",
        ] {
            check(text, Some(SmallTalk::Thanks));
        }
    }

    #[test]
    fn goodbyes() {
        for text in [
            "tchau",
            "Tchau, até mais!",
            "até logo",
            "falou",
            "flw",
            "obrigado, tchau",
            "valeu, até amanhã",
            "Ok, obrigada! Boa semana 😘",
            "bjs",
            "até!",
        ] {
            check(text, Some(SmallTalk::Goodbye));
        }
    }

    #[test]
    fn questions_and_requests_are_not_small_talk() {
        for text in [
            "oi, qual o horário de vocês?",
            "bom dia, vcs entregam em contagem?",
            "obrigado, e o preço?",
            "quero falar com um atendente",
            "preciso de ajuda",
            "tudo bem? aceitam pix?",
            "",
            "   ",
            "?!",
            "🍕",
            "kkkk",
            "sim",
            "pessoal",
        ] {
            check(text, None);
        }
    }

    #[test]
    fn phrases_are_written_folded_and_squeezed() {
        for (phrase, _) in PHRASES {
            let normalised: Vec<String> = text::words(phrase)
                .iter()
                .map(|word| squeeze(word))
                .collect();
            assert_eq!(normalised.join(" "), *phrase);
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            small_talk_reply(SmallTalk::Greeting, " Olá! Aqui é a Vila Moda. "),
            "Olá! Aqui é a Vila Moda."
        );
        assert_eq!(
            small_talk_reply(SmallTalk::Greeting, ""),
            "Olá! Como posso ajudar você?"
        );
        assert!(small_talk_reply(SmallTalk::Thanks, "Olá!").starts_with("Por nada!"));
        assert!(small_talk_reply(SmallTalk::Goodbye, "Olá!").starts_with("Até mais!"));
    }
}
