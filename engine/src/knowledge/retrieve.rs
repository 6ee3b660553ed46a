//! Lexical retrieval over knowledge chunks, with a confidence that means the same thing for
//! every tenant: the IDF-weighted share of the question's content terms that the chunk contains.
//!
//! Chunks are ranked by that coverage, ties broken by BM25. All term statistics are computed in
//! [`KnowledgeIndex::build`], so a search is a few hash look-ups per query term.
//!
//! When every chunk carries an embedding of one model and the question's embedding of that model
//! is given ([`KnowledgeIndex::search_with`]), retrieval is hybrid: each chunk scores the blend of
//! its lexical coverage and its calibrated cosine ([`DenseCalibration::blend`]), still in `[0, 1]`
//! and still compared with the tenant's `confidence_threshold`.

use std::collections::HashMap;

use super::Chunk;
use super::chunk::sentences;
use super::dense::{self, DenseQuery};
use crate::text::{self, WordTerm};

/// BM25 term-frequency saturation.
const BM25_K1: f32 = 1.2;
/// BM25 length normalisation.
const BM25_B: f32 = 0.75;

/// A chunk that matched a query.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hit {
    /// The [`Chunk::id`] of the matching chunk.
    pub chunk: u32,
    pub text: String,
    /// Confidence in `[0, 1]` that the chunk answers the query; see [`KnowledgeIndex::confidence`].
    pub score: f32,
}

/// Chunks with precomputed term statistics, ready to be searched.
#[derive(Debug, Clone, Default)]
pub struct KnowledgeIndex {
    chunks: Vec<Chunk>,
    term_ids: HashMap<String, usize>,
    terms: Vec<TermStats>,
    /// Every distinct content word of the chunks, sorted, for typo tolerance.
    surface_words: Vec<SurfaceWord>,
    /// Number of terms in each chunk, by position in `chunks`.
    chunk_lengths: Vec<f32>,
    average_chunk_length: f32,
    /// The weight of a query term that occurs in no chunk.
    unseen_weight: f32,
    /// Unit-length chunk vectors, by chunk position, when every chunk has one of the same model.
    dense: Option<DenseVectors>,
}

/// The chunks' embeddings, all of one model and one dimension.
#[derive(Debug, Clone)]
struct DenseVectors {
    model: String,
    vectors: Vec<Vec<f32>>,
}

impl DenseVectors {
    /// Takes the embeddings out of `chunks`; `None` unless every chunk has a usable one of the
    /// same model and dimension.
    fn take(chunks: &mut [Chunk]) -> Option<Self> {
        let embeddings: Vec<_> = chunks.iter_mut().map(|c| c.embedding.take()).collect();
        let model = embeddings.first()?.as_ref()?.model.clone();
        let mut vectors = Vec::with_capacity(embeddings.len());
        for embedding in embeddings {
            let embedding = embedding.filter(|e| e.model == model)?;
            let vector = dense::normalized(&embedding.vector)?;
            if vectors
                .first()
                .is_some_and(|first: &Vec<f32>| first.len() != vector.len())
            {
                return None;
            }
            vectors.push(vector);
        }
        Some(Self { model, vectors })
    }
}

/// A content word as written in the knowledge, with what the typo search needs to skip it fast.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SurfaceWord {
    word: String,
    num_chars: usize,
    letters: u32,
    term_id: usize,
}

/// What the index knows about one term.
#[derive(Debug, Clone)]
struct TermStats {
    /// Inverse document frequency, always positive.
    weight: f32,
    /// `(chunk position, term frequency)`, by chunk position.
    postings: Vec<(usize, u32)>,
}

impl KnowledgeIndex {
    /// Indexes `chunks`; their order is kept and their ids are reported in hits. Their embeddings,
    /// when every chunk has one of the same model, make hybrid search possible
    /// ([`KnowledgeIndex::embedding_model`]); the indexed chunks keep no embedding.
    pub fn build(mut chunks: Vec<Chunk>) -> Self {
        let dense = DenseVectors::take(&mut chunks);
        let mut term_ids: HashMap<String, usize> = HashMap::new();
        let mut terms: Vec<TermStats> = Vec::new();
        let mut surface_words: HashMap<String, usize> = HashMap::new();
        let mut chunk_lengths = Vec::with_capacity(chunks.len());
        for (position, chunk) in chunks.iter().enumerate() {
            let chunk_terms = text::word_terms(&chunk.text);
            chunk_lengths.push(chunk_terms.len() as f32);
            for WordTerm { word, term } in chunk_terms {
                let term_id = *term_ids.entry(term).or_insert_with(|| {
                    terms.push(TermStats {
                        weight: 0.0,
                        postings: Vec::new(),
                    });
                    terms.len() - 1
                });
                surface_words.entry(word).or_insert(term_id);
                let postings = &mut terms[term_id].postings;
                match postings.last_mut() {
                    Some((last_position, frequency)) if *last_position == position => {
                        *frequency += 1
                    }
                    _ => postings.push((position, 1)),
                }
            }
        }
        let num_chunks = chunks.len();
        for term in &mut terms {
            term.weight = inverse_document_frequency(num_chunks, term.postings.len());
        }
        let average_chunk_length = if num_chunks == 0 {
            0.0
        } else {
            chunk_lengths.iter().sum::<f32>() / num_chunks as f32
        };
        let mut surface_words: Vec<SurfaceWord> = surface_words
            .into_iter()
            .map(|(word, term_id)| SurfaceWord {
                num_chars: word.chars().count(),
                letters: letter_set(&word),
                word,
                term_id,
            })
            .collect();
        surface_words.sort_unstable();
        Self {
            chunks,
            term_ids,
            terms,
            surface_words,
            chunk_lengths,
            average_chunk_length,
            unseen_weight: inverse_document_frequency(num_chunks, 0),
            dense,
        }
    }

    /// The model of the chunks' embeddings when hybrid search is possible.
    pub fn embedding_model(&self) -> Option<&str> {
        self.dense.as_ref().map(|d| d.model.as_str())
    }

    /// Whether there is no knowledge to search.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The indexed chunks, in the order given to [`KnowledgeIndex::build`].
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// The `k` chunks that best answer `query`, best first; chunks sharing no term are left out.
    pub fn search(&self, query: &str, k: usize) -> Vec<Hit> {
        self.search_with(query, None, k)
    }

    /// Like [`KnowledgeIndex::search`], hybrid when `dense` is given, of the chunks' model, and
    /// the chunks have vectors: each chunk then scores the calibrated blend of its lexical coverage
    /// and its cosine with the question, and a chunk sharing no term can still match on meaning.
    /// A question with no content terms ("?") matches nothing either way.
    pub fn search_with(&self, query: &str, dense: Option<&DenseQuery>, k: usize) -> Vec<Hit> {
        if self.is_empty() || k == 0 {
            return Vec::new();
        }
        let query_terms = query_terms(query);
        if query_terms.is_empty() {
            return Vec::new();
        }
        let vectors = self
            .dense
            .as_ref()
            .zip(dense)
            .filter(|(chunks, query)| chunks.model == query.model);
        let mut total_weight = 0.0;
        let mut matched_weight = vec![0.0_f32; self.chunks.len()];
        let mut bm25 = vec![0.0_f32; self.chunks.len()];
        for query_term in &query_terms {
            let Some(term) = self.resolve(query_term) else {
                total_weight += self.unseen_weight;
                continue;
            };
            total_weight += term.weight;
            for &(position, frequency) in &term.postings {
                matched_weight[position] += term.weight;
                bm25[position] += term.weight * self.saturate(frequency, position);
            }
        }
        let scores: Vec<f32> = (0..self.chunks.len())
            .map(|position| {
                let lexical = (matched_weight[position] / total_weight).clamp(0.0, 1.0);
                match vectors {
                    Some((chunks, query)) => query.calibration.blend(
                        lexical,
                        dense::cosine(&chunks.vectors[position], &query.vector),
                    ),
                    None => lexical,
                }
            })
            .collect();
        let mut ranked: Vec<usize> = (0..self.chunks.len())
            .filter(|&position| scores[position] > 0.0)
            .collect();
        ranked.sort_by(|&left, &right| {
            scores[right]
                .total_cmp(&scores[left])
                .then(bm25[right].total_cmp(&bm25[left]))
                .then(left.cmp(&right))
        });
        ranked
            .into_iter()
            .take(k)
            .map(|position| Hit {
                chunk: self.chunks[position].id,
                text: self.chunks[position].text.clone(),
                score: scores[position],
            })
            .collect()
    }

    /// How sure the index is that the knowledge answers `query`, in `[0, 1]`: the score of the
    /// best hit, or 0.0 when nothing matches or the query has no content terms.
    ///
    /// The score is the IDF-weighted fraction of the query's distinct content terms (stemmed,
    /// stopwords removed) that occur in the best chunk. Terms found nowhere in the knowledge weigh
    /// the most, so a question about something the text never mentions ("sem glúten?") scores
    /// low even when its other words ("pizza") are everywhere. A misspelled word (one edit away
    /// from a word of the knowledge for words of six letters or more, two from ten) counts as the
    /// word it resembles. Coverage does not grow with the size of the knowledge, so one threshold
    /// (the tenant's `confidence_threshold`, 0.5 by default) suits every tenant.
    pub fn confidence(&self, query: &str) -> f32 {
        self.confidence_with(query, None)
    }

    /// [`KnowledgeIndex::confidence`], hybrid as in [`KnowledgeIndex::search_with`].
    pub fn confidence_with(&self, query: &str, dense: Option<&DenseQuery>) -> f32 {
        self.search_with(query, dense, 1)
            .first()
            .map_or(0.0, |hit| hit.score)
    }

    /// The indexed term a query word stands for: its own term, or failing that the term of the
    /// closest word of the knowledge within a small edit distance (typos: "entrga", "maquinihna").
    /// Typos are matched on whole words, not stems, where one edit changes less.
    fn resolve(&self, query: &WordTerm) -> Option<&TermStats> {
        if let Some(&term_id) = self.term_ids.get(&query.term) {
            return Some(&self.terms[term_id]);
        }
        let max_distance = max_typo_distance(&query.word);
        if max_distance == 0 {
            return None;
        }
        // Each edit adds or removes at most two letters from the set of letters in a word, a
        // cheap test that skips almost every word before the real distance is computed.
        let num_chars = query.word.chars().count();
        let letters = letter_set(&query.word);
        self.surface_words
            .iter()
            .filter(|surface| {
                surface.num_chars.abs_diff(num_chars) <= max_distance
                    && (surface.letters ^ letters).count_ones() as usize <= 2 * max_distance
            })
            .filter_map(|surface| {
                edit_distance_within(&query.word, &surface.word, max_distance)
                    .map(|distance| (distance, surface.term_id))
            })
            .min_by_key(|&(distance, term_id)| {
                (
                    distance,
                    std::cmp::Reverse(self.terms[term_id].postings.len()),
                )
            })
            .map(|(_, term_id)| &self.terms[term_id])
    }

    /// The BM25 term-frequency factor of a term occurring `frequency` times in a chunk.
    fn saturate(&self, frequency: u32, position: usize) -> f32 {
        let frequency = frequency as f32;
        let length_ratio = self.chunk_lengths[position] / self.average_chunk_length.max(1.0);
        frequency * (BM25_K1 + 1.0) / (frequency + BM25_K1 * (1.0 - BM25_B + BM25_B * length_ratio))
    }
}

/// The sentences of `chunk_text` that best match `query`, verbatim and in their original order,
/// at most `max_sentences` of them, joined by a space (or a line break where the chunk had one).
///
/// Sentences are ranked by the query terms they contain, each weighted by how few of the chunk's
/// sentences contain it; a heading's terms count, half as much, for the sentences under it, and
/// headings themselves are never returned. Sentences scoring under a third of the best are dropped.
/// When nothing matches, the chunk's first sentence that is not a heading is returned.
pub fn extractive_answer(query: &str, chunk_text: &str, max_sentences: usize) -> String {
    let all_sentences = sentences(chunk_text);
    if max_sentences == 0 || all_sentences.is_empty() {
        return String::new();
    }
    let query_terms = query_terms(query);
    // Which query terms each sentence contains, as a bit per query term.
    let matched: Vec<Vec<bool>> = all_sentences
        .iter()
        .map(|sentence| {
            let sentence_terms = text::word_terms(sentence.text);
            query_terms
                .iter()
                .map(|query| {
                    let max_distance = max_typo_distance(&query.word);
                    sentence_terms.iter().any(|found| {
                        found.term == query.term
                            || edit_distance_within(&query.word, &found.word, max_distance)
                                .is_some()
                    })
                })
                .collect()
        })
        .collect();
    // A query term found in every sentence ("pizza" in a pizzeria) says little about which one answers.
    let num_sentences = all_sentences.len() as f32;
    let weights: Vec<f32> = (0..query_terms.len())
        .map(|term| {
            let num_containing = matched.iter().filter(|terms| terms[term]).count() as f32;
            (1.0 + num_sentences / (1.0 + num_containing)).ln()
        })
        .collect();
    let weight_of = |terms: &[bool]| -> f32 {
        terms
            .iter()
            .zip(&weights)
            .filter(|(found, _)| **found)
            .map(|(_, weight)| weight)
            .sum()
    };
    let mut heading_weight = 0.0;
    let mut scored: Vec<(f32, usize)> = Vec::new();
    for (index, sentence) in all_sentences.iter().enumerate() {
        if sentence.is_heading {
            heading_weight = weight_of(&matched[index]);
        } else {
            let score = 2.0 * weight_of(&matched[index]) + heading_weight;
            if score > 0.0 {
                scored.push((score, index));
            }
        }
    }
    scored.sort_by(|left, right| right.0.total_cmp(&left.0).then(left.1.cmp(&right.1)));
    // Further sentences must score at least a third of the best, or they are noise.
    let best_score = scored.first().map_or(0.0, |(score, _)| *score);
    let mut chosen: Vec<usize> = scored
        .into_iter()
        .take_while(|(score, _)| *score >= best_score / 3.0)
        .take(max_sentences)
        .map(|(_, index)| index)
        .collect();
    if chosen.is_empty() {
        let first = all_sentences
            .iter()
            .position(|sentence| !sentence.is_heading)
            .unwrap_or(0);
        chosen.push(first);
    }
    chosen.sort_unstable();
    let mut answer = String::new();
    for (position, &index) in chosen.iter().enumerate() {
        if position > 0 {
            // Keep list items and lines on their own lines, as the knowledge wrote them.
            let gap = &chunk_text
                [all_sentences[chosen[position - 1]].bytes.1..all_sentences[index].bytes.0];
            answer.push(if gap.contains('\n') { '\n' } else { ' ' });
        }
        answer.push_str(all_sentences[index].text);
    }
    answer
}

/// The content words of a customer's question with their terms, one per distinct term,
/// greetings removed.
fn query_terms(query: &str) -> Vec<WordTerm> {
    let words = text::words(query);
    let mut kept = Vec::with_capacity(words.len());
    let mut index = 0;
    while index < words.len() {
        let is_greeting = matches!(words[index].as_str(), "bom" | "boa")
            && matches!(
                words.get(index + 1).map(String::as_str),
                Some("dia" | "tarde" | "noite")
            );
        if is_greeting {
            index += 2;
        } else {
            kept.push(words[index].as_str());
            index += 1;
        }
    }
    let mut query_terms = text::word_terms(&kept.join(" "));
    let mut seen = std::collections::HashSet::new();
    query_terms.retain(|query| seen.insert(query.term.clone()));
    query_terms
}

/// BM25's inverse document frequency (the Lucene variant, always positive).
fn inverse_document_frequency(num_chunks: usize, document_frequency: usize) -> f32 {
    let num_chunks = num_chunks as f32;
    let document_frequency = document_frequency as f32;
    (1.0 + (num_chunks - document_frequency + 0.5) / (document_frequency + 0.5)).ln()
}

/// How many typos a word may carry and still match: none for short words, where one edit
/// already makes another word ("lente"/"dente", "cobre"/"sobre"), one from six letters, two
/// from ten.
fn max_typo_distance(word: &str) -> usize {
    match word.chars().count() {
        0..=5 => 0,
        6..=9 => 1,
        _ => 2,
    }
}

/// The set of characters in `word` as bits: one per ASCII letter, digits and the rest share
/// the remaining bits.
fn letter_set(word: &str) -> u32 {
    word.chars().fold(0, |set, character| {
        let bit = match character {
            'a'..='z' => u32::from(character) - u32::from('a'),
            '0'..='9' => 26 + (u32::from(character) - u32::from('0')) % 5,
            _ => 31,
        };
        set | (1 << bit)
    })
}

/// Words this long or longer only match exactly; typo tolerance needs no more.
const MAX_TYPO_WORD_CHARS: usize = 32;

/// The optimal-string-alignment distance between `left` and `right` (insertions, deletions,
/// substitutions and adjacent transpositions), or `None` when it exceeds `max_distance`.
fn edit_distance_within(left: &str, right: &str, max_distance: usize) -> Option<usize> {
    if left.is_ascii() && right.is_ascii() {
        bounded_edit_distance(left.as_bytes(), right.as_bytes(), max_distance)
    } else {
        let left: Vec<char> = left.chars().collect();
        let right: Vec<char> = right.chars().collect();
        bounded_edit_distance(&left, &right, max_distance)
    }
}

/// [`edit_distance_within`] over letters, on the stack: three rows of the usual table.
fn bounded_edit_distance<T: PartialEq>(
    left: &[T],
    right: &[T],
    max_distance: usize,
) -> Option<usize> {
    if left.len().abs_diff(right.len()) > max_distance {
        return None;
    }
    if left.len() >= MAX_TYPO_WORD_CHARS || right.len() >= MAX_TYPO_WORD_CHARS {
        return (left == right).then_some(0);
    }
    let width = right.len() + 1;
    let mut rows = [[0_usize; MAX_TYPO_WORD_CHARS]; 3];
    let (mut before_previous, mut previous, mut current) = (0, 1, 2);
    for (j, cell) in rows[previous].iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=left.len() {
        rows[current][0] = i;
        let mut row_minimum = i;
        for j in 1..width {
            let cost = usize::from(left[i - 1] != right[j - 1]);
            let mut distance = (rows[previous][j] + 1)
                .min(rows[current][j - 1] + 1)
                .min(rows[previous][j - 1] + cost);
            if i > 1 && j > 1 && left[i - 1] == right[j - 2] && left[i - 2] == right[j - 1] {
                distance = distance.min(rows[before_previous][j - 2] + 1);
            }
            rows[current][j] = distance;
            row_minimum = row_minimum.min(distance);
        }
        // A row never improves on the one above by more than one edit, so stop once every
        // cell is over the limit.
        if row_minimum > max_distance {
            return None;
        }
        (before_previous, previous, current) = (previous, current, before_previous);
    }
    let distance = rows[previous][width - 1];
    (distance <= max_distance).then_some(distance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knowledge::chunk;

    const PIZZARIA: &str = "Horário\nAbrimos de terça a domingo, das 18h às 23h30. Às segundas-feiras a pizzaria fica fechada.\n\n\
        Pagamento\nAceitamos Pix, dinheiro, cartões de crédito e de débito e vale-refeição. O motoboy leva a maquininha.\n\n\
        Delivery\nEntregamos num raio de 5 km da pizzaria. A taxa de entrega é de R$ 6 até 3 km e de R$ 10 entre 3 e 5 km.";

    fn index_of(sections: &[&str]) -> KnowledgeIndex {
        let chunks = sections
            .iter()
            .enumerate()
            .map(|(id, text)| Chunk::new(id as u32, *text))
            .collect();
        KnowledgeIndex::build(chunks)
    }

    fn pizzaria_index() -> KnowledgeIndex {
        index_of(&PIZZARIA.split("\n\n").collect::<Vec<_>>())
    }

    #[test]
    fn empty_index_has_no_hits_and_no_confidence() {
        let index = KnowledgeIndex::build(vec![]);
        assert!(index.is_empty());
        assert!(index.search("qual o horário?", 3).is_empty());
        assert_eq!(index.confidence("qual o horário?"), 0.0);
        assert!(KnowledgeIndex::default().search("pix", 1).is_empty());
    }

    #[test]
    fn stopword_only_queries_have_no_confidence() {
        let index = pizzaria_index();
        assert!(index.search("oi, boa noite! vocês têm?", 3).is_empty());
        assert_eq!(index.confidence("o que é que vocês?"), 0.0);
        assert_eq!(index.confidence(""), 0.0);
    }

    #[test]
    fn finds_the_section_that_answers() {
        let index = pizzaria_index();
        let hits = index.search("Vcs aceitam PIX??", 3);
        assert_eq!(hits[0].chunk, 1);
        assert_eq!(hits[0].score, 1.0);
        assert_eq!(index.search("qual a taxa de entrega", 1)[0].chunk, 2);
        assert_eq!(index.search("que horas abre no domingo", 1)[0].chunk, 0);
    }

    #[test]
    fn hits_are_best_first_and_limited_to_k() {
        let index = pizzaria_index();
        let hits = index.search("pizzaria entrega pix", 5);
        assert!(hits.len() <= 3 && !hits.is_empty());
        assert!(hits.windows(2).all(|pair| pair[0].score >= pair[1].score));
        assert_eq!(index.search("pizzaria entrega pix", 1).len(), 1);
        assert!(index.search("pizzaria", 0).is_empty());
    }

    #[test]
    fn scores_stay_within_zero_and_one() {
        let index = pizzaria_index();
        for query in [
            "pix pix pix",
            "pizzaria",
            "entrega taxa km raio",
            "gluten",
            "pix e glúten",
        ] {
            for hit in index.search(query, 3) {
                assert!(
                    (0.0..=1.0).contains(&hit.score),
                    "{query:?} → {}",
                    hit.score
                );
            }
        }
    }

    #[test]
    fn unknown_topics_have_low_confidence_even_with_common_words() {
        let index = pizzaria_index();
        assert!(index.confidence("tem pizza sem glúten?") < 0.5);
        assert!(index.confidence("tem estacionamento na pizzaria?") < 0.5);
        assert!(index.confidence("aceita pix?") >= 0.5);
        assert!(index.confidence("aceita vale refeição?") >= 0.5);
    }

    #[test]
    fn accents_case_and_typos_do_not_matter() {
        let index = pizzaria_index();
        assert_eq!(
            index.confidence("VALE REFEICAO"),
            index.confidence("vale-refeição")
        );
        assert!(
            index.confidence("maquinihna") >= 0.5,
            "one transposition away from maquininha"
        );
    }

    #[test]
    fn confidence_means_the_same_for_larger_knowledge() {
        let small = pizzaria_index();
        let filler: Vec<String> = (0..40)
            .map(|index| {
                format!("Seção {index}: informações gerais sobre o cardápio número {index}.")
            })
            .collect();
        let mut sections: Vec<&str> = PIZZARIA.split("\n\n").collect();
        sections.extend(filler.iter().map(String::as_str));
        let large = index_of(&sections);
        for (query, answerable) in [
            ("aceita pix?", true),
            ("taxa de entrega", true),
            ("tem sem glúten?", false),
        ] {
            assert_eq!(
                small.confidence(query) >= 0.5,
                answerable,
                "{query:?} on the small index"
            );
            assert_eq!(
                large.confidence(query) >= 0.5,
                answerable,
                "{query:?} on the large index"
            );
        }
    }

    #[test]
    fn search_is_fast_on_the_largest_knowledge() {
        // Thousands of distinct Portuguese-looking words, the worst case for the typo search.
        const SYLLABLES: [&str; 20] = [
            "ca", "de", "men", "to", "ra", "ção", "ri", "pa", "ga", "sa", "lo", "ne", "tre", "vi",
            "ma", "co", "ta", "ce", "por", "es",
        ];
        let mut state: u64 = 42;
        let mut random = move |below: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % below
        };
        let mut text = String::new();
        while text.chars().count() < crate::knowledge::MAX_KNOWLEDGE_CHARS - 100 {
            for _ in 0..2 + random(4) {
                text.push_str(SYLLABLES[random(SYLLABLES.len())]);
            }
            text.push_str(match random(12) {
                0 => ". ",
                1 => ".\n\n",
                _ => " ",
            });
        }
        text.push_str("Aceitamos Pix e cartão.");
        let index = KnowledgeIndex::build(chunk(&text).unwrap());
        assert!(index.surface_words.len() > 3_000);
        let query =
            "vcs aceitam pix no cartao? e camentoca parademen ricopara tresapor vimaneta cadetora?";
        let num_queries: u32 = 20;
        let started = std::time::Instant::now();
        for _ in 0..num_queries {
            assert!(!index.search(query, 3).is_empty());
        }
        let per_query = started.elapsed() / num_queries;
        println!(
            "{} chunks, {} distinct words, {per_query:?} per search",
            index.chunks().len(),
            index.surface_words.len()
        );
        // Generous for unoptimised test builds; release builds take well under a millisecond.
        assert!(
            per_query < std::time::Duration::from_millis(20),
            "{per_query:?} per search"
        );
    }

    #[test]
    fn edit_distance_counts_transpositions_as_one() {
        assert_eq!(edit_distance_within("entrega", "entrega", 1), Some(0));
        assert_eq!(edit_distance_within("entrgea", "entrega", 1), Some(1));
        assert_eq!(edit_distance_within("entrga", "entrega", 1), Some(1));
        assert_eq!(edit_distance_within("entregador", "entrega", 2), None);
        assert_eq!(edit_distance_within("açaí", "acai", 2), Some(2));
        assert_eq!(edit_distance_within("maçã", "maca", 1), None);
        assert_eq!(edit_distance_within("", "ab", 2), Some(2));
        assert_eq!(edit_distance_within("ab", "", 1), None);
        let long = "x".repeat(40);
        assert_eq!(edit_distance_within(&long, &long, 2), Some(0));
        assert_eq!(edit_distance_within(&long, &"x".repeat(41), 2), None);
    }

    #[test]
    fn extractive_answer_returns_matching_sentences_verbatim_in_order() {
        let chunk_text = "Pagamento\nAceitamos Pix, dinheiro e cartões. O motoboy leva a maquininha. \
            Não aceitamos cheque. Pix tem 5% de desconto.";
        assert_eq!(
            extractive_answer("aceita pix? tem desconto?", chunk_text, 2),
            "Aceitamos Pix, dinheiro e cartões. Pix tem 5% de desconto."
        );
        assert_eq!(
            extractive_answer("o motoboy traz maquininha?", chunk_text, 2),
            "O motoboy leva a maquininha."
        );
        assert_eq!(
            extractive_answer("aceita pix?", chunk_text, 1),
            "Aceitamos Pix, dinheiro e cartões."
        );
    }

    #[test]
    fn extractive_answer_keeps_line_breaks_between_lines() {
        let chunk_text =
            "Serviços\n- Limpeza\n- Clareamento a laser\n\nValores\nClareamento a laser: R$ 1.200.";
        assert_eq!(
            extractive_answer("clareamento a laser", chunk_text, 2),
            "- Clareamento a laser\nClareamento a laser: R$ 1.200."
        );
    }

    #[test]
    fn extractive_answer_uses_headings_to_find_the_section() {
        let chunk_text = "Horário\nAbrimos de terça a domingo, das 18h às 23h30.\n\nBebidas\nRefrigerante lata R$ 7.";
        assert_eq!(
            extractive_answer("qual o horario?", chunk_text, 2),
            "Abrimos de terça a domingo, das 18h às 23h30."
        );
    }

    #[test]
    fn extractive_answer_falls_back_to_the_first_sentence() {
        let chunk_text = "Horário\nAbrimos às 18h. Fechamos às 23h.";
        assert_eq!(
            extractive_answer("tem estacionamento?", chunk_text, 2),
            "Abrimos às 18h."
        );
        assert_eq!(extractive_answer("", chunk_text, 2), "Abrimos às 18h.");
        assert_eq!(extractive_answer("abrimos", chunk_text, 0), "");
        assert_eq!(extractive_answer("abrimos", "  ", 2), "");
    }
}
