//! A bag-of-words embedder that computes real vectors with no model: each folded word and each
//! character trigram of the words is hashed (FNV-1a, with a hashed sign) into one of
//! [`HASHING_DIMENSIONS`] dimensions, counts are damped (`1 + ln n`), and the vector is scaled to
//! unit length. Two texts' cosine then measures the words and word pieces they share, so it
//! rewards inflections ("entrega", "entregamos") that whole-word matching misses. The test
//! OpenAI-protocol servers answer `/v1/embeddings` with it, and paused-time actor tests use it
//! directly.

use async_trait::async_trait;

use crate::ids::TenantId;
use crate::knowledge::DenseCalibration;
use crate::ports::{EmbedError, Embedder};
use crate::text;

/// The length of every vector.
pub const HASHING_DIMENSIONS: usize = 512;
/// The model name the embedder reports.
pub const HASHING_MODEL: &str = "conversa-hashing-512";

/// The embedding of `input`; all zeros when it has no letters or digits.
pub fn hashing_embedding(input: &str) -> Vec<f32> {
    let mut counts = vec![0.0_f32; HASHING_DIMENSIONS];
    for word in text::words(input) {
        if word.chars().count() < 3 {
            continue;
        }
        add(&mut counts, &format!("w:{word}"), 1.0);
        let padded: Vec<char> = format!("<{word}>").chars().collect();
        for trigram in padded.windows(3) {
            add(&mut counts, &trigram.iter().collect::<String>(), 0.5);
        }
    }
    let mut vector: Vec<f32> = counts
        .into_iter()
        .map(|c| {
            if c == 0.0 {
                0.0
            } else {
                c.signum() * (1.0 + c.abs().ln())
            }
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

fn add(counts: &mut [f32], feature: &str, weight: f32) {
    let hash = feature.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let index = (hash % HASHING_DIMENSIONS as u64) as usize;
    let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
    counts[index] += sign * weight;
}

/// [`hashing_embedding`] as an [`Embedder`], with the default calibration. `fail(true)` makes
/// every call fail, as a dead endpoint would; `with_delay` makes every call take that long (on
/// Tokio's clock, so paused-time tests control it).
#[derive(Debug, Default, Clone)]
pub struct HashingEmbedder {
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    delay: std::time::Duration,
}

impl HashingEmbedder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_delay(delay: std::time::Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    pub fn fail(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Calls made so far, failed ones included.
    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl Embedder for HashingEmbedder {
    fn model(&self) -> &str {
        HASHING_MODEL
    }

    fn calibration(&self) -> DenseCalibration {
        DenseCalibration::default()
    }

    async fn embed(
        &self,
        _tenant: &TenantId,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(EmbedError("scripted failure".into()));
        }
        Ok(texts.iter().map(|t| hashing_embedding(t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knowledge::dense::cosine;

    #[test]
    fn shared_words_and_word_pieces_raise_the_cosine() {
        let question = hashing_embedding("vocês entregam no centro?");
        let close = hashing_embedding("Fazemos entregas no centro e nos bairros vizinhos.");
        let far = hashing_embedding("Aceitamos Pix e cartão de crédito.");
        assert!(cosine(&question, &close) > cosine(&question, &far) + 0.1);
        let norm: f32 = question.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert!(hashing_embedding("?!").iter().all(|x| *x == 0.0));
    }
}
