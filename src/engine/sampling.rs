//! Per-request token sampling on the CPU: penalties, temperature, top-k, top-p, min-p, a seeded
//! random stream, and log-probabilities. Greedy (temperature 0 or top_k 1) is
//! [`crate::ops::sampling::argmax`] over the penalized logits.
//!
//! Order (as vLLM and SGLang): repetition penalty (prompt and output tokens), frequency and
//! presence penalties (output tokens); then greedy, or temperature → softmax → top-k → top-p →
//! min-p → draw. Log-probabilities come from the raw logits (log-softmax before any of this).
//!
//! A greedy request without penalties and log-probabilities reads nothing of the logits but
//! their argmax ([`Sampler::takes_argmax`]): a GPU step model may then take that argmax on the
//! device and hand back only the token ([`StepOutput::Token`], [`Sampler::pick`]).

use std::collections::HashMap;

use crate::engine::model::StepOutput;
use crate::engine::request::{SampledLogprobs, SamplingParams, TokenLogprob};
use crate::ops::sampling::argmax;

/// xoshiro256** seeded through SplitMix64: small, fast, reproducible across platforms.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e3779b97f4a7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            z ^ (z >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A request's sampler: its parameters, random stream and token counts for the penalties.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Occurrences of each token in the output so far (frequency / presence penalties).
    output_counts: HashMap<u32, u32>,
    /// Tokens seen in the prompt or the output (repetition penalty).
    seen: HashMap<u32, ()>,
}

impl Sampler {
    /// `seed` is used when the parameters carry none.
    pub fn new(params: SamplingParams, prompt: &[u32], seed: u64) -> Sampler {
        let rng = Rng::new(params.seed.unwrap_or(seed));
        let mut seen = HashMap::new();
        if params.repetition_penalty != 1.0 {
            for &t in prompt {
                seen.insert(t, ());
            }
        }
        Sampler { params, rng, output_counts: HashMap::new(), seen }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from one row of logits and records it for the penalties.
    pub fn sample(&mut self, logits: &[f32]) -> (u32, Option<SampledLogprobs>) {
        let mut work = logits.to_vec();
        self.apply_penalties(&mut work);
        let token = if self.params.is_greedy() {
            argmax(&work) as u32
        } else {
            self.draw(&mut work)
        };
        let logprobs = self.params.logprobs.then(|| logprobs_of(logits, token, self.params.top_logprobs));
        self.record(token);
        (token, logprobs)
    }

    /// Whether [`Sampler::sample`] returns exactly `argmax(logits)` and no log-probabilities:
    /// greedy, no log-probabilities, and none of the penalties [`Sampler::apply_penalties`]
    /// applies (the same conditions), so the logits it argmaxes are the raw ones.
    pub fn takes_argmax(&self) -> bool {
        let p = &self.params;
        p.is_greedy() && !p.logprobs && p.repetition_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0
    }

    /// The next token from what a step returned for this sequence: a logits row of `vocab` values
    /// (sampled here), or the argmax a backend took for a sampler that [`Sampler::takes_argmax`]
    /// (recorded as [`Sampler::sample`] records it). `None` for anything else: a row of another
    /// length, an id outside the vocabulary, a token for a sampler that needs the logits.
    pub fn pick(&mut self, out: &StepOutput, vocab: usize) -> Option<(u32, Option<SampledLogprobs>)> {
        match out {
            StepOutput::Logits(l) if l.len() == vocab => Some(self.sample(l)),
            &StepOutput::Token(t) if self.takes_argmax() && (t as usize) < vocab => {
                self.record(t);
                Some((t, None))
            }
            _ => None,
        }
    }

    /// Counts `token` for the penalties.
    fn record(&mut self, token: u32) {
        *self.output_counts.entry(token).or_insert(0) += 1;
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token, ());
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in self.seen.keys() {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &n) in &self.output_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * n as f32 + p.presence_penalty;
                }
            }
        }
    }

    /// Temperature, softmax, top-k, top-p, min-p, then one draw from what is left. Sorting is
    /// limited to what the filters need: none without top-k / top-p, the k best with top-k, and
    /// for top-p the best few hundred unless their mass falls short (a 129K vocabulary costs
    /// O(V), not O(V log V), per token).
    fn draw(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature as f64;
        let max = logits.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return argmax(logits) as u32;
        }
        // Unnormalized probabilities; NaN and -inf get 0 and never win.
        let w: Vec<f64> = logits
            .iter()
            .map(|&l| if l.is_nan() { 0.0 } else { ((l as f64 - max as f64) * inv_t).exp() })
            .collect();
        let desc = |a: &u32, b: &u32| w[*b as usize].total_cmp(&w[*a as usize]).then(a.cmp(b));
        let mut idx: Vec<u32> = (0..w.len() as u32).filter(|&i| w[i as usize] > 0.0).collect();
        let mut sorted = false;
        if p.top_k > 0 && p.top_k < idx.len() {
            idx.select_nth_unstable_by(p.top_k - 1, desc);
            idx.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            let total: f64 = idx.iter().map(|&i| w[i as usize]).sum();
            let target = p.top_p as f64 * total;
            // Try the best few first; sort everything only if they do not reach the target.
            let head = 512.min(idx.len());
            if head < idx.len() {
                idx.select_nth_unstable_by(head - 1, desc);
            }
            idx[..head].sort_by(desc);
            let mut keep = None;
            let mut acc = 0.0;
            for (n, &i) in idx[..head].iter().enumerate() {
                acc += w[i as usize];
                if acc >= target {
                    keep = Some(n + 1);
                    break;
                }
            }
            let keep = match keep {
                Some(k) => k,
                None => {
                    idx.sort_by(desc);
                    let mut acc = 0.0;
                    idx.iter().position(|&i| {
                        acc += w[i as usize];
                        acc >= target
                    })
                    .map_or(idx.len(), |n| n + 1)
                }
            };
            idx.truncate(keep.max(1));
            sorted = true;
        }
        // min-p: relative to the most likely token (whose weight is 1), so order-free.
        if p.min_p > 0.0 {
            let floor = p.min_p as f64;
            idx.retain(|&i| w[i as usize] >= floor);
        }
        if idx.is_empty() {
            return argmax(logits) as u32;
        }
        if !sorted {
            // A fixed order, so that a seed gives the same token whatever the filters' internals.
            idx.sort_unstable();
        }
        let total: f64 = idx.iter().map(|&i| w[i as usize]).sum();
        let mut u = self.rng.next_f64() * total;
        for &i in &idx {
            let q = w[i as usize];
            if u < q {
                return i;
            }
            u -= q;
        }
        idx[idx.len() - 1]
    }
}

/// Log-softmax of `logits` at `token`, and the `top` most likely tokens.
pub fn logprobs_of(logits: &[f32], token: u32, top: usize) -> SampledLogprobs {
    let max = logits.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64 + logits.iter().map(|&v| ((v - max) as f64).exp()).filter(|v| !v.is_nan()).sum::<f64>().ln();
    let lp = |i: u32| (logits[i as usize] as f64 - lse) as f32;
    let mut top_list = Vec::new();
    if top > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).filter(|&i| !logits[i as usize].is_nan()).collect();
        let k = top.min(idx.len());
        if k > 0 {
            idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
            idx.truncate(k);
            idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        }
        top_list = idx.into_iter().map(|i| TokenLogprob { token_id: i, logprob: lp(i) }).collect();
    }
    SampledLogprobs { logprob: lp(token), top: top_list }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![0.5, 2.0, -1.0, 1.9, 0.0, 3.0, -0.5, 1.0]
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy(4), &[], 1);
        assert_eq!(s.sample(&logits()).0, 5);
    }

    #[test]
    fn takes_argmax_exactly_when_sample_is_the_raw_argmax() {
        let nan = f32::NAN;
        let rows: Vec<Vec<f32>> = vec![logits(), vec![nan, -1.0, 4.0, 4.0, nan], vec![f32::NEG_INFINITY; 3], vec![nan; 4]];
        let variants = [
            (SamplingParams::greedy(8), true),
            (SamplingParams { top_k: 1, temperature: 0.7, ..Default::default() }, true),
            (SamplingParams { stop_token_ids: vec![5], ignore_eos: true, ..SamplingParams::greedy(8) }, true),
            (SamplingParams { logprobs: true, ..SamplingParams::greedy(8) }, false),
            (SamplingParams { repetition_penalty: 1.3, ..SamplingParams::greedy(8) }, false),
            (SamplingParams { frequency_penalty: 0.5, ..SamplingParams::greedy(8) }, false),
            (SamplingParams { presence_penalty: -0.5, ..SamplingParams::greedy(8) }, false),
            (SamplingParams { temperature: 1.0, ..Default::default() }, false),
        ];
        for (params, takes) in variants {
            let mut s = Sampler::new(params.clone(), &[1, 5], 3);
            assert_eq!(s.takes_argmax(), takes, "{params:?}");
            if !takes {
                // A token is refused: such a sampler needs the logits.
                assert_eq!(s.pick(&StepOutput::Token(5), 8), None, "{params:?}");
                continue;
            }
            // Several steps, so that penalties (were there any) would have outputs to act on.
            for row in rows.iter().chain(rows.iter()) {
                let mut by_token = s.clone();
                let want = argmax(row) as u32;
                assert_eq!(s.pick(&StepOutput::Logits(row.clone()), row.len()), Some((want, None)), "{params:?} {row:?}");
                assert_eq!(by_token.pick(&StepOutput::Token(want), row.len()), Some((want, None)));
                assert_eq!(by_token.output_counts, s.output_counts, "the device's token is recorded like a sampled one");
            }
        }
    }

    #[test]
    fn pick_refuses_what_does_not_fit_the_vocabulary() {
        let mut s = Sampler::new(SamplingParams::greedy(4), &[], 1);
        assert_eq!(s.pick(&StepOutput::Logits(logits()), 7), None, "row of another length");
        assert_eq!(s.pick(&StepOutput::Token(8), 8), None, "id outside the vocabulary");
        assert_eq!(s.pick(&StepOutput::Token(7), 8), Some((7, None)));
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        for seed in 0..20 {
            let p = SamplingParams { temperature: 1.7, top_k: 1, seed: Some(seed), ..Default::default() };
            let mut s = Sampler::new(p, &[], 0);
            assert_eq!(s.sample(&logits()).0, 5);
        }
    }

    #[test]
    fn seeds_reproduce_and_differ() {
        let p = |seed| SamplingParams { temperature: 1.0, seed: Some(seed), ..Default::default() };
        let run = |seed| {
            let mut s = Sampler::new(p(seed), &[], 0);
            (0..32).map(|_| s.sample(&logits()).0).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_p_and_min_p_restrict_the_support() {
        // top_p tiny keeps only the best token.
        let p = SamplingParams { temperature: 1.0, top_p: 0.01, seed: Some(3), ..Default::default() };
        let mut s = Sampler::new(p, &[], 0);
        assert!((0..50).all(|_| s.sample(&logits()).0 == 5));
        // min_p 0.3: p(1)/p(5) = e^-1 ≈ 0.37 and p(3)/p(5) ≈ 0.33 survive, nothing else does.
        let p = SamplingParams { temperature: 1.0, min_p: 0.3, seed: Some(4), ..Default::default() };
        let mut s = Sampler::new(p, &[], 0);
        assert!((0..200).all(|_| matches!(s.sample(&logits()).0, 1 | 3 | 5)));
    }

    #[test]
    fn penalties_move_greedy_choice() {
        // Presence penalty 2 after token 5 was produced makes token 1 (2.0 > 3.0 - 2.0) win.
        let p = SamplingParams { presence_penalty: 2.0, ..SamplingParams::greedy(8) };
        let mut s = Sampler::new(p, &[], 0);
        assert_eq!(s.sample(&logits()).0, 5);
        assert_eq!(s.sample(&logits()).0, 1);
        // Frequency penalty accumulates: 5, then 5 again (3.0 - 0.5 = 2.5 > 2.0), then 1.
        let p = SamplingParams { frequency_penalty: 0.5, ..SamplingParams::greedy(8) };
        let mut s = Sampler::new(p, &[], 0);
        let got: Vec<u32> = (0..3).map(|_| s.sample(&logits()).0).collect();
        assert_eq!(got, vec![5, 5, 1]);
        // Repetition penalty covers the prompt: 5 in the prompt, 3.0 / 2 = 1.5 < 2.0.
        let p = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy(8) };
        let mut s = Sampler::new(p, &[5], 0);
        assert_eq!(s.sample(&logits()).0, 1);
    }

    #[test]
    fn top_p_over_a_flat_large_vocabulary() {
        // 2000 equal logits: the best 512 hold a quarter of the mass, so top_p = 0.5 needs the
        // full sort; ties break by id, so exactly ids 0..1000 remain.
        let flat = vec![0.25f32; 2000];
        let p = SamplingParams { temperature: 1.0, top_p: 0.5, seed: Some(9), ..Default::default() };
        let mut s = Sampler::new(p, &[], 0);
        let draws: Vec<u32> = (0..400).map(|_| s.sample(&flat).0).collect();
        assert!(draws.iter().all(|&t| t < 1000), "{draws:?}");
        assert!(draws.iter().any(|&t| t >= 512), "the fallback past the first 512 was not used");
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let l = [0.0f32, (2.0f32).ln(), (3.0f32).ln()]; // probabilities 1/6, 2/6, 3/6
        let p = SamplingParams { temperature: 1.0, seed: Some(5), ..Default::default() };
        let mut s = Sampler::new(p, &[], 0);
        let mut counts = [0usize; 3];
        for _ in 0..6000 {
            counts[s.sample(&l).0 as usize] += 1;
        }
        for (c, want) in counts.iter().zip([1000.0, 2000.0, 3000.0]) {
            assert!((*c as f64 - want).abs() < 200.0, "{counts:?}");
        }
    }

    #[test]
    fn logprobs_are_log_softmax() {
        let l = logits();
        let lp = logprobs_of(&l, 5, 3);
        let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
        assert!((lp.logprob as f64 - (3.0 - z.ln())).abs() < 1e-5);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.token_id).collect();
        assert_eq!(ids, vec![5, 1, 3]);
    }
}
