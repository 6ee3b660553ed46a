//! The debounce buffer: quick successive messages of one contact become one turn.
//!
//! A turn is due `debounce_ms` after its last message, and never later than `max_buffer_ms` after
//! its first. A turn is also cut when it reaches `max_turn_messages` or `max_turn_chars`, so that
//! neither a turn nor the memory grows without bound; what arrives after that forms the next turn.
//!
//! The buffer never reads a clock: the caller passes `now` and arms a timer for [`MessageBuffer::deadline`].
//! Every change bumps a generation number, so a timer armed for an older generation can be ignored
//! instead of cancelled.

use crate::time::Timestamp;

/// One fragment of a turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment<T> {
    pub text: String,
    pub at: Timestamp,
    /// Whatever the caller needs back at flush time (an inbox sequence number, a message id).
    pub tag: T,
}

/// Limits of a turn, from the tenant's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    pub debounce_ms: u64,
    pub max_buffer_ms: u64,
    pub max_messages: usize,
    pub max_chars: usize,
}

impl From<&crate::tenant::TenantSettings> for BufferLimits {
    fn from(s: &crate::tenant::TenantSettings) -> Self {
        Self {
            debounce_ms: s.debounce_ms,
            max_buffer_ms: s.max_buffer_ms,
            max_messages: s.max_turn_messages,
            max_chars: s.max_turn_chars,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MessageBuffer<T> {
    fragments: Vec<Fragment<T>>,
    chars: usize,
    generation: u64,
}

impl<T> Default for MessageBuffer<T> {
    fn default() -> Self {
        Self {
            fragments: Vec::new(),
            chars: 0,
            generation: 0,
        }
    }
}

impl<T> MessageBuffer<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.fragments.is_empty()
    }

    pub fn len(&self) -> usize {
        self.fragments.len()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn fragments(&self) -> &[Fragment<T>] {
        &self.fragments
    }

    /// Whether the turn reached its size cap and must be flushed now.
    pub fn is_full(&self, limits: &BufferLimits) -> bool {
        self.fragments.len() >= limits.max_messages || self.chars >= limits.max_chars
    }

    /// Adds a fragment and returns the new generation.
    pub fn push(&mut self, fragment: Fragment<T>) -> u64 {
        self.chars += fragment.text.chars().count();
        self.fragments.push(fragment);
        self.generation += 1;
        self.generation
    }

    /// When the turn is due, or `None` for an empty buffer.
    pub fn deadline(&self, limits: &BufferLimits) -> Option<Timestamp> {
        let first = self.fragments.first()?.at;
        let last = self.fragments.iter().map(|f| f.at).max()?;
        if self.is_full(limits) {
            return Some(last);
        }
        let by_quiet = last.plus_millis(limits.debounce_ms as i64);
        let by_age = first.plus_millis(limits.max_buffer_ms as i64);
        Some(by_quiet.min(by_age))
    }

    pub fn is_due(&self, now: Timestamp, limits: &BufferLimits) -> bool {
        self.deadline(limits)
            .is_some_and(|deadline| now >= deadline)
    }

    /// Puts a taken turn back in front of whatever arrived since (its commit failed), so that
    /// nothing is lost and order is kept.
    pub fn restore(&mut self, mut fragments: Vec<Fragment<T>>) {
        self.chars += fragments
            .iter()
            .map(|f| f.text.chars().count())
            .sum::<usize>();
        fragments.append(&mut self.fragments);
        self.fragments = fragments;
        self.generation += 1;
    }

    /// Replaces the text of the buffered fragments whose tag matches (its author edited the
    /// message, or deleted it: `text` is then empty). Returns whether one matched. The debounce
    /// deadline does not move.
    pub fn amend(&mut self, matches: impl Fn(&T) -> bool, text: &str) -> bool {
        let mut found = false;
        for fragment in self.fragments.iter_mut().filter(|f| matches(&f.tag)) {
            self.chars =
                self.chars - fragment.text.chars().count().min(self.chars) + text.chars().count();
            fragment.text = text.to_owned();
            found = true;
        }
        found
    }

    /// Takes the whole turn out of the buffer.
    pub fn take(&mut self) -> Vec<Fragment<T>> {
        self.chars = 0;
        self.generation += 1;
        std::mem::take(&mut self.fragments)
    }
}

/// Joins a turn's fragments into the one text the assistant answers.
pub fn turn_text<T>(fragments: &[Fragment<T>]) -> String {
    fragments
        .iter()
        .map(|f| f.text.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BufferLimits = BufferLimits {
        debounce_ms: 1500,
        max_buffer_ms: 8000,
        max_messages: 3,
        max_chars: 4000,
    };

    fn frag(text: &str, at: i64) -> Fragment<u32> {
        Fragment {
            text: text.into(),
            at: Timestamp(at),
            tag: 0,
        }
    }

    #[test]
    fn three_quick_messages_are_one_turn() {
        let mut b = MessageBuffer::new();
        b.push(frag("oi", 0));
        b.push(frag("tudo bem?", 1000));
        b.push(frag("qual o horário?", 2000));
        assert_eq!(
            b.deadline(&LIMITS),
            Some(Timestamp(2000)),
            "full at 3 messages"
        );
        let big = BufferLimits {
            max_messages: 50,
            ..LIMITS
        };
        assert_eq!(b.deadline(&big), Some(Timestamp(3500)));
        assert!(!b.is_due(Timestamp(3499), &big));
        assert!(b.is_due(Timestamp(3500), &big));
        let turn = b.take();
        assert_eq!(turn_text(&turn), "oi\ntudo bem?\nqual o horário?");
        assert!(b.is_empty());
        assert_eq!(b.deadline(&big), None);
    }

    #[test]
    fn a_steady_trickle_is_cut_at_max_buffer() {
        let big = BufferLimits {
            max_messages: 50,
            ..LIMITS
        };
        let mut b = MessageBuffer::new();
        for i in 0..10 {
            b.push(frag("mais uma coisa", i * 1000));
        }
        assert_eq!(b.deadline(&big), Some(Timestamp(8000)));
    }

    #[test]
    fn generations_identify_stale_timers() {
        let mut b = MessageBuffer::new();
        let g1 = b.push(frag("a", 0));
        let g2 = b.push(frag("b", 10));
        assert!(g2 > g1);
        b.take();
        assert!(b.generation() > g2);
    }

    #[test]
    fn restore_keeps_order() {
        let mut b = MessageBuffer::new();
        b.push(frag("a", 0));
        let taken = b.take();
        b.push(frag("b", 10));
        b.restore(taken);
        assert_eq!(turn_text(b.fragments()), "a\nb");
        assert_eq!(
            b.deadline(&BufferLimits {
                max_messages: 50,
                ..LIMITS
            }),
            Some(Timestamp(1510))
        );
    }

    #[test]
    fn character_cap() {
        let limits = BufferLimits {
            max_chars: 10,
            max_messages: 50,
            ..LIMITS
        };
        let mut b = MessageBuffer::new();
        b.push(frag("ação ação", 0));
        assert!(!b.is_full(&limits));
        b.push(frag("ok", 5));
        assert!(b.is_full(&limits));
        assert_eq!(b.deadline(&limits), Some(Timestamp(5)));
    }
}
