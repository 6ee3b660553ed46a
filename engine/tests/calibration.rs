//! Calibration of the retrieval confidence against labelled customer questions.
//!
//! `fixtures/questions.jsonl` holds WhatsApp-style questions to four sample businesses, each
//! labelled with whether the business's knowledge text answers it. With the default
//! `confidence_threshold` of 0.5 the engine hands off below 0.5; this test measures how well that
//! decision matches the labels (positive class: unanswerable, so hand off) and prints the numbers.
//! Run with `cargo test -p engine --test calibration -- --nocapture` to see them; set
//! `CONVERSA_CALIBRATION_VERBOSE=1` as well to list every question with its confidence.
//! `salao_beleza.txt` and its questions were written after the scorer was tuned on the other three.

use std::collections::BTreeMap;
use std::path::PathBuf;

use engine::knowledge::{KnowledgeIndex, chunk, extractive_answer};

/// The tenant setting's default: hand off when the confidence is below it.
const CONFIDENCE_THRESHOLD: f32 = 0.5;

#[derive(Debug, serde::Deserialize)]
struct LabelledQuestion {
    /// File name of the knowledge text in `tests/fixtures/`.
    knowledge: String,
    question: String,
    /// Whether the knowledge text holds the answer.
    answerable: bool,
}

#[derive(Debug)]
struct Outcome<'a> {
    labelled: &'a LabelledQuestion,
    confidence: f32,
}

impl Outcome<'_> {
    fn hands_off_at(&self, threshold: f32) -> bool {
        self.confidence < threshold
    }

    fn is_correct_at(&self, threshold: f32) -> bool {
        self.hands_off_at(threshold) != self.labelled.answerable
    }
}

#[derive(Debug, Default)]
struct Counts {
    true_positives: usize,
    false_positives: usize,
    false_negatives: usize,
    true_negatives: usize,
}

impl Counts {
    fn of(outcomes: &[&Outcome<'_>], threshold: f32) -> Self {
        let mut counts = Self::default();
        for outcome in outcomes {
            match (outcome.hands_off_at(threshold), outcome.labelled.answerable) {
                (true, false) => counts.true_positives += 1,
                (true, true) => counts.false_positives += 1,
                (false, false) => counts.false_negatives += 1,
                (false, true) => counts.true_negatives += 1,
            }
        }
        counts
    }

    fn total(&self) -> usize {
        self.true_positives + self.false_positives + self.false_negatives + self.true_negatives
    }

    fn precision(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    fn recall(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    fn accuracy(&self) -> f64 {
        ratio(self.true_positives + self.true_negatives, self.total())
    }

    fn summary(&self) -> String {
        format!(
            "handoff precision={:.2} recall={:.2} accuracy={:.2} n={}",
            self.precision(),
            self.recall(),
            self.accuracy(),
            self.total()
        )
    }
}

fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        1.0
    } else {
        numerator as f64 / denominator as f64
    }
}

fn fixture(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", name]
        .iter()
        .collect();
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

fn labelled_questions() -> Vec<LabelledQuestion> {
    fixture("questions.jsonl")
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}")))
        .collect()
}

#[test]
fn confidence_threshold_separates_answerable_questions() {
    let questions = labelled_questions();
    let mut indexes: BTreeMap<&str, KnowledgeIndex> = BTreeMap::new();
    for labelled in &questions {
        indexes
            .entry(labelled.knowledge.as_str())
            .or_insert_with(|| {
                let text = fixture(&labelled.knowledge);
                let num_chars = text.chars().count();
                assert!(
                    (2_000..=6_000).contains(&num_chars),
                    "{} has {num_chars} chars",
                    labelled.knowledge
                );
                KnowledgeIndex::build(chunk(&text).expect("fixture is within the limit"))
            });
    }
    let outcomes: Vec<Outcome<'_>> = questions
        .iter()
        .map(|labelled| Outcome {
            labelled,
            confidence: indexes[labelled.knowledge.as_str()].confidence(&labelled.question),
        })
        .collect();
    let all: Vec<&Outcome<'_>> = outcomes.iter().collect();
    let counts = Counts::of(&all, CONFIDENCE_THRESHOLD);

    println!();
    for (knowledge, index) in &indexes {
        let of_knowledge: Vec<&Outcome<'_>> = outcomes
            .iter()
            .filter(|outcome| outcome.labelled.knowledge == *knowledge)
            .collect();
        println!(
            "{knowledge}: {} chunks; {}",
            index.chunks().len(),
            Counts::of(&of_knowledge, CONFIDENCE_THRESHOLD).summary()
        );
    }
    println!("threshold sweep:");
    for threshold in [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7] {
        println!(
            "  threshold={threshold:.2} {}",
            Counts::of(&all, threshold).summary()
        );
    }
    if std::env::var_os("CONVERSA_CALIBRATION_VERBOSE").is_some() {
        let mut sorted: Vec<&Outcome<'_>> = outcomes.iter().collect();
        sorted.sort_by(|left, right| left.confidence.total_cmp(&right.confidence));
        for outcome in sorted {
            let labelled = outcome.labelled;
            println!(
                "  {:.2} answerable={:5} {:?}",
                outcome.confidence, labelled.answerable, labelled.question
            );
        }
    }
    println!("misclassified at {CONFIDENCE_THRESHOLD}:");
    for outcome in outcomes
        .iter()
        .filter(|outcome| !outcome.is_correct_at(CONFIDENCE_THRESHOLD))
    {
        let labelled = outcome.labelled;
        let index = &indexes[labelled.knowledge.as_str()];
        let answer = index
            .search(&labelled.question, 1)
            .first()
            .map(|hit| extractive_answer(&labelled.question, &hit.text, 2))
            .unwrap_or_default();
        println!(
            "  [{}] confidence={:.2} answerable={} {:?} → {:?}",
            labelled.knowledge, outcome.confidence, labelled.answerable, labelled.question, answer
        );
    }
    println!("{}", counts.summary());

    assert!(
        counts.total() >= 40,
        "the labelled set must have at least 40 questions"
    );
    let num_answerable = questions
        .iter()
        .filter(|labelled| labelled.answerable)
        .count();
    assert!(
        (0.35..=0.65).contains(&ratio(num_answerable, questions.len())),
        "the labelled set must be roughly half answerable"
    );
    assert!(counts.accuracy() >= 0.85, "{}", counts.summary());
    assert!(counts.precision() >= 0.8, "{}", counts.summary());
    assert!(counts.recall() >= 0.8, "{}", counts.summary());
}

#[test]
fn answers_are_verbatim_sentences_of_the_knowledge() {
    let text = fixture("pizzaria.txt");
    let index = KnowledgeIndex::build(chunk(&text).unwrap());
    for question in [
        "qual a taxa de entrega?",
        "aceita vale refeição?",
        "tem pizza vegana?",
        "qnto custa a broto",
    ] {
        let hit = &index.search(question, 1)[0];
        let answer = extractive_answer(question, &hit.text, 2);
        assert!(!answer.is_empty());
        for sentence in answer.lines().flat_map(|line| line.split(". ")) {
            assert!(
                text.contains(sentence.trim_end_matches('.')),
                "{sentence:?} is not in the knowledge"
            );
        }
        println!("{question:?} → {answer:?}");
    }
}
