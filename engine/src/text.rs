//! Text normalisation shared by retrieval, keyword matching and small-talk detection:
//! case and accent folding, tokenisation, WhatsApp abbreviations, Portuguese stopwords and
//! Snowball stemming. Everything here is pure and allocation-light; no IO.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use rust_stemmers::{Algorithm, Stemmer};
use unicode_normalization::UnicodeNormalization;

/// Lower-cases `s` and removes diacritics (`"Ação"` → `"acao"`).
pub fn fold(s: &str) -> String {
    s.nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Splits folded text into alphanumeric words.
pub fn words(s: &str) -> Vec<String> {
    fold(s)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The index terms of `s`: folded words, common WhatsApp abbreviations expanded
/// (`"vcs"`, `"qto"`, `"hj"`, `"fds"`, `"zap"`, …), Portuguese stopwords and conversational
/// fillers removed, and the rest stemmed with the Snowball Portuguese stemmer.
///
/// Folding happens before stemming so that `"informação"` and `"informacao"` (customers often
/// type without accents) give the same term; a few folded plural endings are normalised first
/// (`"promocoes"` → `"promocao"`, `"garagens"` → `"garagem"`) so the stemmer sees the forms it
/// knows.
pub fn terms(s: &str) -> Vec<String> {
    word_terms(s)
        .into_iter()
        .map(|word_term| word_term.term)
        .collect()
}

/// A content word of a text, as written (folded, abbreviation expanded), and its index term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WordTerm {
    pub(crate) word: String,
    pub(crate) term: String,
}

/// [`terms`] with the word each term came from, for typo-tolerant matching on whole words.
pub(crate) fn word_terms(s: &str) -> Vec<WordTerm> {
    let stemmer = Stemmer::create(Algorithm::Portuguese);
    let mut word_terms = Vec::new();
    for word in words(s) {
        for expanded in expand_abbreviation(&word) {
            if !is_stopword(expanded) {
                let stemmed = stem(&stemmer, expanded);
                let term = match CONCEPT_OF_STEM.get(stemmed.as_str()) {
                    Some(concept) => concept.clone(),
                    None => stemmed,
                };
                word_terms.push(WordTerm {
                    word: expanded.to_owned(),
                    term,
                });
            }
        }
    }
    word_terms
}

/// Whether `phrase` occurs in `text` as a run of whole words, ignoring case, accents and
/// punctuation: `contains_phrase("Quero falar com um ATENDENTE!", "atendente")` is true.
///
/// Matching is on whole words only, so `"atendentes"` does **not** contain `"atendente"`:
/// keyword lists must spell out the variants they want (this keeps `"humano"` from matching
/// `"desumano"`). An empty phrase matches nothing.
pub fn contains_phrase(text: &str, phrase: &str) -> bool {
    let phrase_words = words(phrase);
    if phrase_words.is_empty() {
        return false;
    }
    words(text)
        .windows(phrase_words.len())
        .any(|window| window == phrase_words.as_slice())
}

/// Whether the folded word `word` carries no information for retrieval.
pub(crate) fn is_stopword(word: &str) -> bool {
    STOPWORDS.contains(word)
}

/// Expands a folded WhatsApp abbreviation into the folded word(s) it stands for.
/// Words that are not abbreviations come back unchanged.
pub(crate) fn expand_abbreviation(word: &str) -> Vec<&str> {
    let expansion: &[&str] = match word {
        "vc" | "ce" | "oce" => &["voce"],
        "vcs" | "ces" => &["voces"],
        "q" | "oq" | "oque" => &["que"],
        "pq" | "pqe" => &["porque"],
        "qto" | "qnto" | "qt" | "qnt" => &["quanto"],
        "qta" | "qnta" => &["quanta"],
        "qtos" | "qntos" | "qts" | "qnts" => &["quantos"],
        "qtas" | "qntas" => &["quantas"],
        "qdo" | "qnd" | "qndo" | "qd" => &["quando"],
        "tb" | "tbm" | "tbem" => &["tambem"],
        "hj" => &["hoje"],
        "amnh" => &["amanha"],
        "agr" => &["agora"],
        "dps" => &["depois"],
        "td" => &["tudo"],
        "tds" => &["todos"],
        "mt" | "mto" | "mtu" => &["muito"],
        "msm" => &["mesmo"],
        "pfv" | "pf" | "pfvr" | "pls" | "plz" => &["por", "favor"],
        "obg" | "obgd" | "obgda" | "obgdo" | "brigado" | "brigada" => &["obrigado"],
        "vlw" => &["valeu"],
        "blz" => &["beleza"],
        "msg" => &["mensagem"],
        "fds" => &["fim", "semana"],
        "sab" => &["sabado"],
        "dom" => &["domingo"],
        "seg" => &["segunda"],
        "hr" | "hrs" => &["horas"],
        "end" | "ender" => &["endereco"],
        "pgto" | "pagto" | "pgmto" => &["pagamento"],
        "tel" | "fone" | "tels" => &["telefone"],
        "cel" => &["celular"],
        "zap" | "zapzap" | "wpp" | "whats" | "wts" | "whatsap" => &["whatsapp"],
        "insta" | "ig" => &["instagram"],
        "info" | "infos" => &["informacao"],
        "vlr" => &["valor"],
        "aq" => &["aqui"],
        "ngm" => &["ninguem"],
        "nd" => &["nada"],
        "ctz" => &["certeza"],
        "tava" => &["estava"],
        "ta" => &["esta"],
        "eh" => &["e"],
        _ => return vec![word],
    };
    expansion.to_vec()
}

/// Stems one folded, non-stopword word.
fn stem(stemmer: &Stemmer, word: &str) -> String {
    // Snowball's Portuguese rules expect accented suffixes (`-ção`, `-ões`, `-ão`); folded text
    // lost them, so singularise the folded plurals and put the accents back before stemming.
    let mut prepared = word.to_owned();
    let num_chars = prepared.chars().count();
    if num_chars > 4 {
        if let Some(base) = word.strip_suffix("oes") {
            prepared = format!("{base}ao");
        } else if let Some(base) = word.strip_suffix("ns") {
            prepared = format!("{base}m");
        }
    }
    if prepared.chars().count() > 3 {
        if let Some(base) = prepared.strip_suffix("cao") {
            prepared = format!("{base}ção");
        } else if let Some(base) = prepared.strip_suffix("ao") {
            prepared = format!("{base}ão");
        }
    }
    fold(&stemmer.stem(&prepared))
}

/// Words customers and businesses use interchangeably for the questions every business gets
/// (prices, opening hours, location, delivery, payment, contact, cancellations). The stems of a
/// group all index as the stem of its first word, so "quanto custa" finds "Valores" and "que horas
/// abre" finds "Horário de funcionamento". Deliberately small: only near-synonyms in this domain.
#[rustfmt::skip]
const CONCEPTS: &[&[&str]] = &[
    &[
        "preco", "precos", "valor", "valores", "custa", "custam", "custo", "custos", "custar",
    ],
    &[
        "horario", "horarios", "hora", "horas", "abre", "abrem", "abrimos", "abrir", "aberto",
        "aberta", "abertos", "fecha", "fecham", "fechamos", "fechado", "fechada", "funciona",
        "funcionam", "funcionamos", "funcionamento", "expediente",
    ],
    &[
        "endereco", "enderecos", "onde", "localizacao", "localizado", "localizada", "localiza",
    ],
    &[
        "entrega", "entregas", "entregar", "entregam", "entregamos", "delivery", "envio", "enviar",
        "enviamos", "enviam",
    ],
    &[
        "pagamento", "pagamentos", "pagar", "paga", "pago", "pagam",
    ],
    &[
        "telefone", "telefones", "celular", "contato", "ligar", "ligue", "ligacao",
    ],
    &[
        "cancelar", "cancelamento", "cancelamentos", "desmarcar",
    ],
];

/// Each stem of [`CONCEPTS`] mapped to the stem of its group's first word.
static CONCEPT_OF_STEM: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
    let stemmer = Stemmer::create(Algorithm::Portuguese);
    let mut concept_of_stem = HashMap::new();
    for group in CONCEPTS {
        let concept = stem(&stemmer, group[0]);
        for word in *group {
            concept_of_stem.insert(stem(&stemmer, word), concept.clone());
        }
    }
    concept_of_stem
});

/// Portuguese stopwords (the Snowball list, folded) plus conversational fillers that customers
/// put around every question ("queria saber", "vocês", "aí", "por favor"). All entries are folded.
#[rustfmt::skip]
const STOPWORD_LIST: &[&str] = &[
    // Snowball Portuguese stopwords, folded.
    "a", "ao", "aos", "aquela", "aquelas", "aquele", "aqueles", "aquilo", "as", "ate", "com",
    "como", "da", "das", "de", "dela", "delas", "dele", "deles", "depois", "do", "dos", "e", "ela",
    "elas", "ele", "eles", "em", "entre", "era", "eram", "eramos", "essa", "essas", "esse", "esses",
    "esta", "estamos", "estao", "estas", "estava", "estavam", "estavamos", "este", "esteja",
    "estejam", "estejamos", "estes", "esteve", "estive", "estivemos", "estiver", "estivera",
    "estiveram", "estiveramos", "estiverem", "estivermos", "estivesse", "estivessem",
    "estivessemos", "estou", "eu", "foi", "fomos", "for", "fora", "foram", "foramos", "forem",
    "formos", "fosse", "fossem", "fossemos", "fui", "ha", "haja", "hajam", "hajamos", "hao",
    "havemos", "hei", "houve", "houvemos", "houver", "houvera", "houveram", "houveramos",
    "houverao", "houverei", "houverem", "houveremos", "houveria", "houveriam", "houveriamos",
    "houvermos", "houvesse", "houvessem", "houvessemos", "isso", "isto", "ja", "lhe", "lhes",
    "mais", "mas", "me", "mesmo", "meu", "meus", "minha", "minhas", "muito", "na", "nao", "nas",
    "nem", "no", "nos", "nossa", "nossas", "nosso", "nossos", "num", "numa", "o", "os", "ou",
    "para", "pela", "pelas", "pelo", "pelos", "por", "qual", "quando", "que", "quem", "sao", "se",
    "seja", "sejam", "sejamos", "sem", "ser", "sera", "serao", "serei", "seremos", "seria",
    "seriam", "seriamos", "seu", "seus", "so", "somos", "sou", "sua", "suas", "tambem", "te", "tem",
    "temos", "tenha", "tenham", "tenhamos", "tenho", "ter", "tera", "terao", "terei", "teremos",
    "teria", "teriam", "teriamos", "teu", "teus", "teve", "tinha", "tinham", "tinhamos", "tive",
    "tivemos", "tiver", "tivera", "tiveram", "tiveramos", "tiverem", "tivermos", "tivesse",
    "tivessem", "tivessemos", "tu", "tua", "tuas", "um", "uma", "umas", "uns", "voce", "voces",
    "vos",
    // Contractions and colloquial forms.
    "sobre", "pra", "pro", "pras", "pros", "prum", "pruma", "dum", "duma", "duns", "dumas", "nele",
    "nela", "neles", "nelas", "nesse", "nessa", "nesses", "nessas", "neste", "nesta", "nisso",
    "disso", "desse", "dessa", "deste", "desta", "daquele", "daquela", "naquele", "naquela", "to",
    "tou", "tao", "ne", "la", "lo", "ai", "aqui", "ali", "ca", "entao", "tipo",
    // Question words.
    "aonde", "quanto", "quanta", "quantos", "quantas", "quais", "porque", "cade", "qualquer",
    "algum", "alguma", "alguns", "algumas",
    // Greetings, politeness and acknowledgements.
    "oi", "ola", "opa", "ei", "oie", "favor", "obrigado", "obrigada", "valeu", "ok", "okay", "sim",
    "certo", "beleza", "gente", "pessoal", "moca", "moco", "amigo", "amiga", "querida", "querido",
    "senhor", "senhora", "sr", "sra", "bom", "boa", "tudo", "bem",
    // Light verbs and fillers of customer questions ("queria saber se vocês fazem …").
    "queria", "quero", "quer", "querem", "gostaria", "gostava", "saber", "sabe", "sabem", "poderia",
    "pode", "podem", "posso", "podemos", "consigo", "consegue", "conseguem", "preciso", "precisa",
    "precisava", "faz", "fazem", "fazer", "fazemos", "faco", "faria", "vou", "vai", "vao", "existe",
    "existem", "fica", "ficam", "ficar", "fico", "informacao", "informacoes", "duvida", "duvidas",
    "pergunta", "perguntar", "hoje", "agora", "ainda", "coisa", "coisas",
];

static STOPWORDS: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| STOPWORD_LIST.iter().copied().collect());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_removes_case_and_accents() {
        assert_eq!(fold("Ação ÓTIMA, Não"), "acao otima, nao");
    }

    #[test]
    fn words_splits_on_punctuation_and_emoji() {
        assert_eq!(
            words("Olá!! Tudo bem?😊 R$ 59,90"),
            ["ola", "tudo", "bem", "r", "59", "90"]
        );
        assert!(words("  \n ").is_empty());
    }

    #[test]
    fn terms_fold_before_stemming_so_accents_do_not_matter() {
        assert_eq!(terms("informação"), terms("informacao"));
        assert_eq!(terms("promoções"), terms("promocao"));
        assert_eq!(terms("cartões"), terms("cartao"));
        assert_eq!(terms("Horário"), terms("horarios"));
        assert_eq!(terms("entregamos"), terms("entregam"));
    }

    #[test]
    fn terms_drop_stopwords_and_fillers() {
        assert!(terms("oi, vocês têm o que aí?").is_empty());
        assert!(terms("queria saber por favor").is_empty());
        assert_eq!(terms("qual o horário de vocês?"), terms("horario"));
    }

    #[test]
    fn terms_expand_whatsapp_abbreviations() {
        assert_eq!(terms("vcs abrem fds?"), terms("abrem fim de semana"));
        assert_eq!(terms("qual o end pfv"), terms("endereço"));
        assert_eq!(terms("manda no zap"), terms("manda no whatsapp"));
        assert_eq!(terms("qto custa"), terms("custa"));
    }

    #[test]
    fn terms_merge_near_synonyms_of_common_questions() {
        assert_eq!(terms("quanto custa?"), terms("Valores"));
        assert_eq!(
            terms("que horas vocês abrem"),
            terms("Horário de funcionamento")
        );
        assert_eq!(terms("onde fica?"), terms("Endereço"));
        assert_eq!(terms("delivery"), terms("entregamos"));
        for group in CONCEPTS {
            for word in *group {
                assert_eq!(
                    &fold(word),
                    word,
                    "concept word {word:?} must be written folded"
                );
                assert!(!is_stopword(word), "concept word {word:?} is a stopword");
            }
        }
    }

    #[test]
    fn terms_keep_numbers_and_short_sizes() {
        assert_eq!(terms("tem no P ou 38?"), ["p", "38"]);
    }

    #[test]
    fn stopword_list_is_folded() {
        for word in STOPWORD_LIST {
            assert_eq!(
                &fold(word),
                word,
                "stopword {word:?} must be written folded"
            );
        }
    }

    #[test]
    fn contains_phrase_matches_whole_folded_words() {
        assert!(contains_phrase(
            "Quero falar com um ATENDENTE!",
            "atendente"
        ));
        assert!(contains_phrase(
            "quero falar com uma pessoa",
            "Falar com uma PESSOA"
        ));
        assert!(contains_phrase(
            "cadê o atendimento humano?",
            "atendimento humano"
        ));
        assert!(!contains_phrase("atendentes", "atendente"));
        assert!(!contains_phrase("tratamento desumano", "humano"));
        assert!(!contains_phrase("falar com alguém", "falar com uma pessoa"));
        assert!(!contains_phrase("qualquer coisa", ""));
        assert!(!contains_phrase("", "atendente"));
    }
}
