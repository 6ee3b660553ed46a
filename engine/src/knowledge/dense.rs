//! The dense half of hybrid retrieval: cosine similarity between a question's embedding and each
//! chunk's, mapped onto `[0, 1]` so it can be blended with the lexical coverage without changing
//! what the confidence means.
//!
//! Raw cosines are not comparable across models: one model's "unrelated" is 0.1, another's 0.6.
//! [`DenseCalibration`] maps the cosine linearly from `floor` (nothing in common: 0) to `ceiling`
//! (a chunk that answers the question: 1), and `weight` is the dense share of the blend. The
//! defaults were chosen by a sweep over the labelled questions of `engine/tests/fixtures` (three
//! businesses; the fourth held out) with the bag-of-words hashing embedder of
//! `testsuite::HashingEmbedder`; a different model should be measured the same way (the README
//! says how) and its numbers set in the gateway's settings.

/// How a model's cosine similarities become a score in `[0, 1]`, and how much it counts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DenseCalibration {
    /// The cosine at and below which a chunk scores 0.
    pub floor: f32,
    /// The cosine at and above which a chunk scores 1.
    pub ceiling: f32,
    /// The dense score's share of the hybrid score, in `[0, 1]`; the lexical coverage has the rest.
    pub weight: f32,
}

impl Default for DenseCalibration {
    fn default() -> Self {
        Self {
            floor: 0.0,
            ceiling: 0.30,
            weight: 0.25,
        }
    }
}

impl DenseCalibration {
    /// Why these numbers cannot be used, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        let finite = self.floor.is_finite() && self.ceiling.is_finite() && self.weight.is_finite();
        if !finite || !(-1.0..1.0).contains(&self.floor) || self.ceiling <= self.floor {
            return Err(format!(
                "the cosine floor ({}) must be in [-1, 1) and below the ceiling ({})",
                self.floor, self.ceiling
            ));
        }
        if !(0.0..=1.0).contains(&self.weight) {
            return Err(format!(
                "the dense weight ({}) must be in [0, 1]",
                self.weight
            ));
        }
        Ok(())
    }

    /// The cosine `similarity` on the `[0, 1]` scale.
    pub fn scale(&self, similarity: f32) -> f32 {
        ((similarity - self.floor) / (self.ceiling - self.floor)).clamp(0.0, 1.0)
    }

    /// The hybrid score of a chunk from its lexical coverage and its cosine, in `[0, 1]`.
    pub fn blend(&self, lexical: f32, similarity: f32) -> f32 {
        ((1.0 - self.weight) * lexical + self.weight * self.scale(similarity)).clamp(0.0, 1.0)
    }
}

/// A question's embedding, ready to be compared with chunk vectors of the same model.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseQuery {
    pub model: String,
    /// Unit length (see [`normalized`]).
    pub vector: Vec<f32>,
    pub calibration: DenseCalibration,
}

impl DenseQuery {
    /// `None` when the vector is empty, all zeros or not finite.
    pub fn new(
        model: impl Into<String>,
        vector: &[f32],
        calibration: DenseCalibration,
    ) -> Option<Self> {
        Some(Self {
            model: model.into(),
            vector: normalized(vector)?,
            calibration,
        })
    }
}

/// `vector` scaled to unit length; `None` when it is empty, all zeros or has a non-finite value.
pub fn normalized(vector: &[f32]) -> Option<Vec<f32>> {
    if vector.is_empty() || vector.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > f32::EPSILON).then(|| vector.iter().map(|x| x / norm).collect())
}

/// The dot product of two unit vectors (their cosine); 0.0 when their lengths differ.
pub fn cosine(left: &[f32], right: &[f32]) -> f32 {
    if left.len() != right.len() {
        return 0.0;
    }
    left.iter().zip(right).map(|(a, b)| a * b).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalising_refuses_vectors_without_a_direction() {
        assert_eq!(normalized(&[]), None);
        assert_eq!(normalized(&[0.0, 0.0]), None);
        assert_eq!(normalized(&[1.0, f32::NAN]), None);
        assert_eq!(normalized(&[3.0, 4.0]), Some(vec![0.6, 0.8]));
    }

    #[test]
    fn the_blend_stays_in_the_unit_interval_and_moves_with_both_parts() {
        let c = DenseCalibration {
            floor: 0.2,
            ceiling: 0.6,
            weight: 0.5,
        };
        assert_eq!(c.scale(0.1), 0.0);
        assert_eq!(c.scale(0.9), 1.0);
        assert!((c.scale(0.4) - 0.5).abs() < 1e-6);
        assert_eq!(c.blend(1.0, 1.0), 1.0);
        assert_eq!(c.blend(0.0, -1.0), 0.0);
        assert!(c.blend(0.6, 0.5) > c.blend(0.6, 0.3));
        assert!(c.blend(0.7, 0.3) > c.blend(0.5, 0.3));
    }

    #[test]
    fn bad_calibrations_are_refused() {
        let good = DenseCalibration::default();
        assert!(good.validate().is_ok());
        for bad in [
            DenseCalibration {
                floor: 0.5,
                ceiling: 0.5,
                ..good
            },
            DenseCalibration {
                weight: 1.5,
                ..good
            },
            DenseCalibration {
                floor: f32::NAN,
                ..good
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cosine_of_mismatched_lengths_is_zero() {
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
        assert!((cosine(&[0.6, 0.8], &[0.6, 0.8]) - 1.0).abs() < 1e-6);
    }
}
