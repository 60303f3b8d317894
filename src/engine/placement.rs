//! Where a request goes under DP attention: the rank whose page pool will hold its latent rows
//! (and which alone attends for it) until it finishes or is preempted; a preempted request is
//! placed again when it is re-admitted. Pure, so the rule is tested on its own. The rule:
//!
//! 1. Candidates: the ranks that admit this step (a rank that had to preempt admits nothing more
//!    in that step), narrowed to those whose free list holds the request's first chunk plus a page
//!    of headroom per running sequence; if none does, every admitting rank (pages held only by the
//!    prefix cache may still make room; the admission check that follows counts them).
//! 2. The candidate holding the longest cached prefix of the request, so that its pages are reused
//!    instead of recomputed, unless that rank runs more than `1 + m/4` sequences beyond the `m` of
//!    the least-loaded candidate (a prompt prefix shared by every request, such as a system
//!    prompt, would otherwise pull all of them onto one rank).
//! 3. Otherwise the least-loaded candidate: fewest running sequences, then most free pages, then
//!    the lowest rank.
//!
//! Without DP attention there is one rank and the rule always gives it.

use std::cmp::Reverse;

/// What the rule knows of one rank for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankLoad {
    /// Sequences running on the rank.
    pub running: usize,
    /// Pages on its free list.
    pub free_pages: usize,
    /// Whole pages of the request's prefix cached on the rank.
    pub hit_pages: usize,
    /// Pages the request's first chunk takes there beyond the cached ones.
    pub need_pages: usize,
}

impl RankLoad {
    /// Whether the free list alone admits the request (an idle rank admits anything it can).
    fn has_room(&self) -> bool {
        self.running == 0 || self.need_pages + self.running <= self.free_pages
    }

    fn load(&self) -> (usize, Reverse<usize>) {
        (self.running, Reverse(self.free_pages))
    }
}

/// The rank for a request; `ranks[r]` is `None` when rank `r` admits nothing this step. `None`
/// when no rank admits.
pub fn place(ranks: &[Option<RankLoad>]) -> Option<usize> {
    let open: Vec<(usize, RankLoad)> = ranks.iter().enumerate().filter_map(|(r, l)| l.map(|l| (r, l))).collect();
    let roomy: Vec<(usize, RankLoad)> = open.iter().copied().filter(|(_, l)| l.has_room()).collect();
    let candidates = if roomy.is_empty() { open } else { roomy };
    let (least, least_load) = candidates.iter().copied().min_by_key(|&(r, l)| (l.load(), r))?;
    let slack = 1 + least_load.running / 4;
    let prefix = candidates
        .iter()
        .filter(|(_, l)| l.hit_pages > 0 && l.running <= least_load.running + slack)
        .min_by_key(|&&(r, l)| (Reverse(l.hit_pages), l.load(), r));
    Some(prefix.map_or(least, |&(r, _)| r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(running: usize, free_pages: usize, hit_pages: usize) -> Option<RankLoad> {
        Some(RankLoad { running, free_pages, hit_pages, need_pages: 1 })
    }

    #[test]
    fn least_loaded_by_running_then_free_pages_then_rank() {
        assert_eq!(place(&[load(0, 8, 0)]), Some(0));
        assert_eq!(place(&[load(2, 8, 0), load(1, 2, 0)]), Some(1));
        assert_eq!(place(&[load(1, 3, 0), load(1, 5, 0)]), Some(1));
        assert_eq!(place(&[load(1, 5, 0), load(1, 5, 0)]), Some(0));
        // A rank that admits nothing this step is skipped; none admitting: no rank.
        assert_eq!(place(&[None, load(3, 1, 0)]), Some(1));
        assert_eq!(place(&[None, None]), None);
        assert_eq!(place(&[]), None);
    }

    #[test]
    fn a_rank_without_room_is_passed_over_while_another_has_room() {
        // Rank 0 runs fewer sequences but its free list cannot hold the chunk and headroom.
        let full = Some(RankLoad { running: 1, free_pages: 2, hit_pages: 0, need_pages: 4 });
        assert_eq!(place(&[full, load(3, 10, 0)]), Some(1));
        // No rank has room on its free list: the least loaded is tried (eviction may make room).
        let full1 = Some(RankLoad { running: 2, free_pages: 1, hit_pages: 0, need_pages: 4 });
        assert_eq!(place(&[full, full1]), Some(0));
    }

    #[test]
    fn the_longest_cached_prefix_wins_within_the_balance_bound() {
        // Rank 1 runs one more sequence than rank 0 but holds 2 pages of the prompt.
        assert_eq!(place(&[load(0, 8, 0), load(1, 8, 2)]), Some(1));
        assert_eq!(place(&[load(1, 8, 1), load(1, 8, 3)]), Some(1));
        // A prefix on a rank without room does not count while another rank has room.
        let no_room = Some(RankLoad { running: 1, free_pages: 1, hit_pages: 3, need_pages: 2 });
        assert_eq!(place(&[no_room, load(1, 8, 0)]), Some(1));
    }

    #[test]
    fn a_shared_prefix_does_not_pull_every_request_onto_one_rank() {
        // Least loaded runs 0: the prefix rank may run 1 more, not 2.
        assert_eq!(place(&[load(1, 8, 4), load(0, 8, 0)]), Some(0));
        assert_eq!(place(&[load(2, 8, 4), load(0, 8, 0)]), Some(1));
        // Least loaded runs 8: the prefix rank may run 1 + 2 more.
        assert_eq!(place(&[load(11, 8, 4), load(8, 8, 0)]), Some(0));
        assert_eq!(place(&[load(12, 8, 4), load(8, 8, 0)]), Some(1));
        // Among prefix holders within the bound, the longer hit wins, then the lighter load.
        assert_eq!(place(&[load(1, 8, 2), load(1, 8, 3), load(0, 8, 0)]), Some(1));
        assert_eq!(place(&[load(1, 8, 3), load(0, 9, 3)]), Some(1));
    }
}
