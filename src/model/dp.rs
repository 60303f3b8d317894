//! DP attention's batch layout (`--enable-dp-attention`): which rank attends for which sequence of
//! a step, and where each rank's tokens sit among the step's rows. Pure, so the CPU suite tests it.
//!
//! A sequence lives on one rank for its whole life: its latent rows are in that rank's page pool
//! alone, so the caller keeps the assignment (the serving engine places requests with
//! [`crate::engine::placement`]) and passes it with every step. The step's rows are the
//! sequences grouped by rank (rank 0's first, each rank's in batch order): rank r's tokens are
//! then one contiguous range, so placing its attention output into the step's [T, hidden] rows
//! before the gathering all-reduce is one copy.

use std::ops::Range;

use crate::error::{Error, Result};

/// Where a DP step's sequences and tokens sit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpLayout {
    /// Batch indices in step order (grouped by rank, batch order within a rank).
    pub order: Vec<usize>,
    /// Per rank: its sequences, as a range of `order`.
    pub seqs: Vec<Range<usize>>,
    /// Per rank: its tokens, as a range of the step's rows.
    pub tokens: Vec<Range<usize>>,
}

impl DpLayout {
    /// The layout of a batch whose sequence `i` has `tokens[i]` new tokens and lives on rank
    /// `ranks[i]` of `world`.
    pub fn new(tokens: &[usize], ranks: &[usize], world: usize) -> Result<DpLayout> {
        if tokens.len() != ranks.len() {
            return Err(Error::InvalidArgument(format!("DP attention: {} sequence(s) but {} rank assignment(s)", tokens.len(), ranks.len())));
        }
        if let Some(&r) = ranks.iter().find(|&&r| r >= world) {
            return Err(Error::InvalidArgument(format!("DP attention: a sequence assigned to rank {r} of a world of {world}")));
        }
        let mut order = Vec::with_capacity(ranks.len());
        let (mut seqs, mut rows) = (Vec::with_capacity(world), Vec::with_capacity(world));
        let mut row = 0;
        for rank in 0..world {
            let (first, first_row) = (order.len(), row);
            for (i, _) in ranks.iter().enumerate().filter(|(_, &r)| r == rank) {
                order.push(i);
                row += tokens[i];
            }
            seqs.push(first..order.len());
            rows.push(first_row..row);
        }
        Ok(DpLayout { order, seqs, tokens: rows })
    }

    /// Tokens of the whole step.
    pub fn total_tokens(&self) -> usize {
        self.tokens.last().map_or(0, |r| r.end)
    }

    /// Per-sequence values in step order back in batch order.
    pub fn to_batch_order<T: Default>(&self, in_step_order: Vec<T>) -> Result<Vec<T>> {
        if in_step_order.len() != self.order.len() {
            return Err(Error::InvalidArgument(format!("DP attention: {} value(s) for {} sequence(s)", in_step_order.len(), self.order.len())));
        }
        let mut out: Vec<T> = (0..self.order.len()).map(|_| T::default()).collect();
        for (v, &i) in in_step_order.into_iter().zip(&self.order) {
            out[i] = v;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_grouped_by_rank_with_contiguous_tokens() {
        // Batch: 11, 5, 70, 2 tokens on ranks 1, 0, 1, 0.
        let l = DpLayout::new(&[11, 5, 70, 2], &[1, 0, 1, 0], 2).unwrap();
        assert_eq!(l.order, vec![1, 3, 0, 2]);
        assert_eq!(l.seqs, vec![0..2, 2..4]);
        assert_eq!(l.tokens, vec![0..7, 7..88]);
        assert_eq!(l.total_tokens(), 88);
        assert_eq!(l.to_batch_order(vec!["b", "d", "a", "c"]).unwrap(), vec!["a", "b", "c", "d"]);
        // A rank with no sequence has empty ranges at its place.
        let l = DpLayout::new(&[3], &[0], 3).unwrap();
        assert_eq!((l.seqs, l.tokens), (vec![0..1, 1..1, 1..1], vec![0..3, 3..3, 3..3]));
        // Bad inputs: one clear error each.
        assert!(DpLayout::new(&[3, 4], &[0], 2).unwrap_err().to_string().contains("rank assignment"));
        assert!(DpLayout::new(&[3], &[2], 2).unwrap_err().to_string().contains("rank 2 of a world of 2"));
        let two = DpLayout::new(&[1, 1], &[0, 1], 2).unwrap();
        assert!(two.to_batch_order(vec![1]).unwrap_err().to_string().contains("1 value(s) for 2"));
    }
}
