//! The assistant's memory: the last `memory_messages` messages of the conversation, oldest first.

use std::collections::VecDeque;

use serde::Serialize;

use crate::message::{Author, StoredMessage};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryEntry {
    pub author: Author,
    pub text: String,
}

/// A bounded window over the conversation's latest messages.
#[derive(Debug, Clone, Default)]
pub struct MemoryWindow {
    capacity: usize,
    entries: VecDeque<MemoryEntry>,
}

impl MemoryWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: VecDeque::with_capacity(capacity.min(64)),
        }
    }

    /// Builds the window from history given newest first (as stores page it).
    pub fn from_newest_first<'a>(
        capacity: usize,
        newest_first: impl IntoIterator<Item = &'a StoredMessage>,
    ) -> Self {
        let mut window = Self::new(capacity);
        let mut picked: Vec<&StoredMessage> = newest_first
            .into_iter()
            .filter(|m| !m.text.trim().is_empty())
            .take(capacity)
            .collect();
        picked.reverse();
        for m in picked {
            window.push(m.author, &m.text);
        }
        window
    }

    pub fn push(&mut self, author: Author, text: &str) {
        if self.capacity == 0 || text.trim().is_empty() {
            return;
        }
        while self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(MemoryEntry {
            author,
            text: text.to_owned(),
        });
    }

    /// Changes the capacity (the tenant changed `memory_messages`), dropping the oldest entries.
    pub fn resize(&mut self, capacity: usize) {
        self.capacity = capacity;
        while self.entries.len() > capacity {
            self.entries.pop_front();
        }
    }

    pub fn entries(&self) -> impl ExactSizeIterator<Item = &MemoryEntry> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_exactly_the_last_n() {
        let mut w = MemoryWindow::new(3);
        for i in 0..5 {
            w.push(Author::Contact, &format!("m{i}"));
        }
        let texts: Vec<_> = w.entries().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["m2", "m3", "m4"]);
        w.resize(1);
        assert_eq!(w.entries().next().unwrap().text, "m4");
        let mut none = MemoryWindow::new(0);
        none.push(Author::Assistant, "x");
        assert!(none.is_empty());
    }
}
