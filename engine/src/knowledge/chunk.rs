//! Splitting a tenant's knowledge text into overlapping chunks with stable ids.
//!
//! Chunks are about [`TARGET_CHUNK_CHARS`] characters, end at the strongest boundary available
//! (paragraph, then line, then sentence, then word) and repeat about 20% of the previous chunk so
//! an answer that straddles a boundary is still found whole. Words are never cut.

use super::{Chunk, KnowledgeError, MAX_KNOWLEDGE_CHARS};

/// The size a chunk aims for, in characters.
pub const TARGET_CHUNK_CHARS: usize = 800;

/// How much of the previous chunk the next one repeats, in characters (20% of the target).
pub const OVERLAP_CHARS: usize = TARGET_CHUNK_CHARS / 5;

/// A chunk may end at a strong boundary (paragraph, line) early, but not before it is this full.
const MIN_FILL_CHARS: usize = TARGET_CHUNK_CHARS / 2;

/// A sentence-aligned overlap may be longer than [`OVERLAP_CHARS`], up to this.
const MAX_OVERLAP_CHARS: usize = OVERLAP_CHARS * 3 / 2;

/// A line this short without final punctuation is a heading and stays with the text after it.
const MAX_HEADING_CHARS: usize = 60;

/// Splits `text` into chunks of about [`TARGET_CHUNK_CHARS`] characters with ids `0..n`.
///
/// Each chunk is a verbatim slice of `text` that starts and ends on a word. A single word longer
/// than the target (a long URL) becomes a chunk of its own rather than being cut. Whitespace-only
/// text gives no chunks; text over [`MAX_KNOWLEDGE_CHARS`] characters is refused.
pub fn chunk(text: &str) -> Result<Vec<Chunk>, KnowledgeError> {
    let num_chars = text.chars().count();
    if num_chars > MAX_KNOWLEDGE_CHARS {
        return Err(KnowledgeError::TooLong {
            chars: num_chars,
            max: MAX_KNOWLEDGE_CHARS,
        });
    }
    let words = scan(text);
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < words.len() {
        let end = chunk_end(&words, start);
        let id = u32::try_from(chunks.len()).expect("at most 50,000 chunks");
        chunks.push(Chunk::new(
            id,
            &text[words[start].bytes.0..words[end].bytes.1],
        ));
        if end + 1 == words.len() {
            break;
        }
        start = overlap_start(&words, start, end);
    }
    Ok(chunks)
}

/// The sentences of `text` in order, trimmed and verbatim, for extractive answers.
/// A line break always ends a sentence; headings and list items are sentences of their own.
pub(crate) fn sentences(text: &str) -> Vec<Sentence<'_>> {
    let words = scan(text);
    let mut sentences = Vec::new();
    let mut first = 0;
    for (index, word) in words.iter().enumerate() {
        if word.ends_sentence || word.ends_line || index + 1 == words.len() {
            let bytes = (words[first].bytes.0, word.bytes.1);
            sentences.push(Sentence {
                text: &text[bytes.0..bytes.1],
                bytes,
                is_heading: word.ends_heading,
            });
            first = index + 1;
        }
    }
    sentences
}

/// One sentence of a chunk, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sentence<'a> {
    pub(crate) text: &'a str,
    /// Byte range of `text` in the text it was taken from.
    pub(crate) bytes: (usize, usize),
    /// A short line without final punctuation ("Horário de funcionamento").
    pub(crate) is_heading: bool,
}

/// How good a place the gap after a word is to end a chunk; higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Boundary {
    Word,
    Sentence,
    Line,
    Paragraph,
}

/// A maximal run of non-whitespace, with its position and the boundary after it.
#[derive(Debug, Clone, Copy)]
struct Word {
    /// Byte range in the text, always on char boundaries.
    bytes: (usize, usize),
    /// Char range in the text, for measuring sizes in characters.
    chars: (usize, usize),
    ends_sentence: bool,
    ends_line: bool,
    ends_paragraph: bool,
    ends_heading: bool,
}

impl Word {
    fn boundary(&self) -> Boundary {
        // A heading belongs with the text below it, so the gap after it is a poor place to cut.
        if self.ends_heading {
            Boundary::Word
        } else if self.ends_paragraph {
            Boundary::Paragraph
        } else if self.ends_line {
            Boundary::Line
        } else if self.ends_sentence {
            Boundary::Sentence
        } else {
            Boundary::Word
        }
    }
}

/// Finds the words of `text` and classifies the gap after each one.
fn scan(text: &str) -> Vec<Word> {
    let mut words: Vec<Word> = Vec::new();
    let mut word_start: Option<(usize, usize)> = None;
    let mut newlines_in_gap = 0;
    let mut line_first_word = 0;
    let mut num_chars = 0;
    for (byte, character) in text.char_indices() {
        if character.is_whitespace() {
            if let Some((start_byte, start_char)) = word_start.take() {
                words.push(new_word(text, (start_byte, byte), (start_char, num_chars)));
                newlines_in_gap = 0;
            }
            if character == '\n' {
                newlines_in_gap += 1;
                if let Some(last) = words.last_mut() {
                    last.ends_line = true;
                    last.ends_paragraph = newlines_in_gap >= 2;
                }
                if newlines_in_gap == 1 && !words.is_empty() {
                    let last_index = words.len() - 1;
                    let is_heading = is_heading(text, &words[line_first_word..=last_index]);
                    words[last_index].ends_heading = is_heading;
                    line_first_word = words.len();
                }
            }
        } else if word_start.is_none() {
            word_start = Some((byte, num_chars));
        }
        num_chars += 1;
    }
    if let Some((start_byte, start_char)) = word_start {
        words.push(new_word(
            text,
            (start_byte, text.len()),
            (start_char, num_chars),
        ));
    }
    words
}

fn new_word(text: &str, bytes: (usize, usize), chars: (usize, usize)) -> Word {
    let trimmed =
        text[bytes.0..bytes.1].trim_end_matches(['"', '\'', ')', ']', '”', '’', '»', '*', '_']);
    Word {
        bytes,
        chars,
        ends_sentence: trimmed.ends_with(['.', '!', '?', '…']),
        ends_line: false,
        ends_paragraph: false,
        ends_heading: false,
    }
}

/// A line is a heading when it is short, does not end a sentence and is not a list item.
fn is_heading(text: &str, line: &[Word]) -> bool {
    let (Some(first), Some(last)) = (line.first(), line.last()) else {
        return false;
    };
    let first_word = &text[first.bytes.0..first.bytes.1];
    let is_list_item = first_word.starts_with(['-', '*', '•', '–', '—'])
        || first_word
            .trim_end_matches(['.', ')'])
            .chars()
            .all(|c| c.is_ascii_digit());
    last.chars.1 - first.chars.0 <= MAX_HEADING_CHARS && !last.ends_sentence && !is_list_item
}

/// The last word of the chunk that starts at `start`.
fn chunk_end(words: &[Word], start: usize) -> usize {
    let span = |end: usize| words[end].chars.1 - words[start].chars.0;
    let mut furthest = start;
    while furthest + 1 < words.len() && span(furthest + 1) <= TARGET_CHUNK_CHARS {
        furthest += 1;
    }
    if furthest + 1 == words.len() {
        return furthest;
    }
    (start..=furthest)
        .filter(|&end| span(end) >= MIN_FILL_CHARS)
        .max_by_key(|&end| (words[end].boundary(), end))
        .unwrap_or(furthest)
}

/// The first word of the chunk after the one spanning `start..=end`, repeating about
/// [`OVERLAP_CHARS`] of it: whole sentences when they fit, else whole words. The next chunk must
/// still reach past `end`, so a huge word right after the chunk means no overlap.
fn overlap_start(words: &[Word], start: usize, end: usize) -> usize {
    let overlap = |first: usize| words[end].chars.1 - words[first].chars.0;
    let reaches_past_end =
        |first: usize| words[end + 1].chars.1 - words[first].chars.0 <= TARGET_CHUNK_CHARS;
    let candidates = || {
        (start + 1..=end)
            .filter(move |&first| overlap(first) <= MAX_OVERLAP_CHARS && reaches_past_end(first))
    };
    let starts_sentence = |first: usize| {
        let previous = &words[first - 1];
        previous.boundary() > Boundary::Word || previous.ends_sentence
    };
    let sentence_start = candidates()
        .filter(|&first| starts_sentence(first) && overlap(first) >= OVERLAP_CHARS / 2)
        .min_by_key(|&first| overlap(first).abs_diff(OVERLAP_CHARS));
    sentence_start
        .or_else(|| candidates().find(|&first| overlap(first) <= OVERLAP_CHARS))
        .unwrap_or(end + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(chunks: &[Chunk]) -> Vec<&str> {
        chunks.iter().map(|chunk| chunk.text.as_str()).collect()
    }

    /// `num` sentences of about 60 characters each, numbered so they are all different.
    fn sentences_text(num: usize, separator: &str) -> String {
        (0..num)
            .map(|index| {
                format!("Frase número {index} sobre entregas, trocas e pagamentos da loja.")
            })
            .collect::<Vec<_>>()
            .join(separator)
    }

    #[test]
    fn whitespace_only_text_has_no_chunks() {
        assert_eq!(chunk(""), Ok(vec![]));
        assert_eq!(chunk(" \n\t \n "), Ok(vec![]));
    }

    #[test]
    fn short_text_is_one_trimmed_chunk() {
        let chunks = chunk("\n  Abrimos de terça a domingo.\n\nFechamos às 23h.  \n").unwrap();
        assert_eq!(
            texts(&chunks),
            ["Abrimos de terça a domingo.\n\nFechamos às 23h."]
        );
        assert_eq!(chunks[0].id, 0);
    }

    #[test]
    fn limit_counts_characters_not_bytes() {
        // 50,000 two-byte characters are 100,000 bytes and still allowed.
        let at_limit = "ã".repeat(MAX_KNOWLEDGE_CHARS);
        assert!(chunk(&at_limit).is_ok());
        let over = "a".repeat(MAX_KNOWLEDGE_CHARS + 1);
        assert_eq!(
            chunk(&over),
            Err(KnowledgeError::TooLong {
                chars: MAX_KNOWLEDGE_CHARS + 1,
                max: MAX_KNOWLEDGE_CHARS
            })
        );
    }

    #[test]
    fn ids_are_sequential_and_chunks_are_near_the_target_size() {
        let text = sentences_text(200, " ");
        let chunks = chunk(&text).unwrap();
        assert!(chunks.len() > 10);
        for (index, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.id as usize, index);
            let num_chars = chunk.text.chars().count();
            assert!(
                num_chars <= TARGET_CHUNK_CHARS,
                "chunk {index} has {num_chars} chars"
            );
            if index + 1 < chunks.len() {
                assert!(
                    num_chars >= MIN_FILL_CHARS,
                    "chunk {index} has {num_chars} chars"
                );
            }
        }
    }

    #[test]
    fn chunks_never_cut_words() {
        let text = sentences_text(120, " ").replace(". ", " ");
        let words: Vec<&str> = text.split_whitespace().collect();
        for chunk in chunk(&text).unwrap() {
            for word in chunk.text.split_whitespace() {
                assert!(
                    words.contains(&word),
                    "{word:?} is not a whole word of the text"
                );
            }
            assert_eq!(chunk.text, chunk.text.trim());
        }
    }

    #[test]
    fn consecutive_chunks_overlap_by_about_a_fifth() {
        let text = sentences_text(100, " ");
        let chunks = chunk(&text).unwrap();
        for pair in chunks.windows(2) {
            let (previous, next) = (&pair[0].text, &pair[1].text);
            let overlap = (1..=previous.len().min(next.len()))
                .filter(|&len| previous.is_char_boundary(previous.len() - len))
                .filter(|&len| next.is_char_boundary(len))
                .filter(|&len| previous.ends_with(&next[..len]))
                .max()
                .unwrap_or(0);
            let overlap_chars = next[..overlap].chars().count();
            assert!(
                (OVERLAP_CHARS / 2..=MAX_OVERLAP_CHARS).contains(&overlap_chars),
                "overlap of {overlap_chars} chars between {previous:?} and {next:?}"
            );
            // Sentence-sized text overlaps on whole sentences.
            assert!(next.starts_with("Frase"), "{next:?}");
        }
    }

    #[test]
    fn chunks_end_at_paragraphs_when_one_is_near() {
        let first_paragraph = sentences_text(9, " ");
        let second_paragraph = sentences_text(9, " ").replace("Frase", "Linha");
        let text = format!("{first_paragraph}\n\n{second_paragraph}");
        assert!(first_paragraph.chars().count() < TARGET_CHUNK_CHARS);
        let chunks = chunk(&text).unwrap();
        assert_eq!(chunks[0].text, first_paragraph);
    }

    #[test]
    fn chunks_end_at_sentences_rather_than_inside_them() {
        let text = sentences_text(40, " ");
        for chunk in chunk(&text).unwrap() {
            assert!(
                chunk.text.starts_with("Frase") && chunk.text.ends_with('.'),
                "{:?}",
                chunk.text
            );
        }
    }

    #[test]
    fn headings_stay_with_the_text_below_them() {
        let body = sentences_text(7, " ");
        let text = format!("{body}\n\nHorário de funcionamento\n{body}");
        let chunks = chunk(&text).unwrap();
        assert!(
            chunks
                .iter()
                .all(|chunk| !chunk.text.ends_with("funcionamento"))
        );
        assert!(
            chunks
                .iter()
                .any(|chunk| chunk.text.contains("funcionamento\nFrase"))
        );
    }

    #[test]
    fn multibyte_text_never_panics_and_is_preserved() {
        let text = "Promoção de verão: camisões, calções e açaí à vontade! 🍕🎉 Ênfase em ções. "
            .repeat(400);
        let text = &text[..text.len() - 1];
        let chunks = chunk(text).unwrap();
        assert!(chunks.len() > 30);
        for chunk in &chunks {
            assert!(chunk.text.chars().count() <= TARGET_CHUNK_CHARS);
            assert!(text.contains(&chunk.text));
        }
        assert!(text.starts_with(&chunks[0].text));
        assert!(text.ends_with(&chunks.last().unwrap().text));
    }

    #[test]
    fn text_without_spaces_or_punctuation_still_chunks() {
        let long_word = "x".repeat(2_000);
        assert_eq!(texts(&chunk(&long_word).unwrap()), [long_word.as_str()]);
        let emoji_words = "😀😀😀 ".repeat(1_000);
        let chunks = chunk(&emoji_words).unwrap();
        assert!(chunks.len() > 4);
        assert!(
            chunks
                .iter()
                .all(|chunk| chunk.text.chars().count() <= TARGET_CHUNK_CHARS)
        );
    }

    #[test]
    fn sentences_split_on_punctuation_and_lines() {
        assert_eq!(sentences("Um; dois. Três")[0].bytes, (0, 9));
        let found: Vec<(&str, bool)> =
            sentences("Horário\nAbrimos às 18h. Fechamos às 23h!\n- Pix\n- Cartão")
                .into_iter()
                .map(|sentence| (sentence.text, sentence.is_heading))
                .collect();
        assert_eq!(
            found,
            [
                ("Horário", true),
                ("Abrimos às 18h.", false),
                ("Fechamos às 23h!", false),
                ("- Pix", false),
                ("- Cartão", false),
            ]
        );
    }
}
