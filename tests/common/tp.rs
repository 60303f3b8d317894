//! Helpers of the two-GPU tests (tests/gpu_tp*.rs): the group over cuda:0 and cuda:1, a batch of
//! three sequences run as prefill + decode steps through any step function, the TP vs TP=1
//! comparison, and DP attention's sequence placement. Compiled only with the `cuda` feature.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use dsv3::backend::cuda::device_count;
use dsv3::dist::{open_group, AllReduce, GroupConfig};
use dsv3::model::config::ModelConfig;
use dsv3::model::gpu::{BatchSeq, GpuModel, LogitRows, PagePool, TpModel};
use dsv3::ops::sampling::{argmax, top2_margin};
use dsv3::tensor::rel_error;

use super::prompt;

pub const PAGES: usize = 16;
pub const PAGE: usize = 64;

pub fn need_two_gpus() {
    let n = device_count().unwrap_or_else(|e| panic!("no CUDA device: {e}"));
    assert!(n >= 2, "needs 2 CUDA devices; the driver reports {n}");
}

/// The group over cuda:0 and cuda:1, opened once per test binary.
pub fn group() -> Arc<AllReduce> {
    static GROUP: OnceLock<Arc<AllReduce>> = OnceLock::new();
    GROUP
        .get_or_init(|| {
            need_two_gpus();
            Arc::new(open_group(&GroupConfig::single_node(2, 0)).unwrap_or_else(|e| panic!("group over cuda:0, cuda:1: {e}")))
        })
        .clone()
}

/// Whether a model of `c` has MoE layers with at least two routed experts (EP over 2).
pub fn has_experts(c: &ModelConfig) -> bool {
    (0..c.num_hidden_layers).any(|i| c.is_moe_layer(i)) && c.n_routed_experts >= 2
}

/// Three sequences on their own pages (reversed, so paging is exercised), one longer than a page.
pub struct Batch {
    pub prompts: Vec<Vec<u32>>,
    pub tables: Vec<Vec<u32>>,
}

impl Batch {
    pub fn new(vocab: usize, max_positions: usize) -> Batch {
        let long = 70.min(max_positions - 8);
        let prompts = vec![prompt(1, 11, vocab), prompt(2, 5, vocab), prompt(3, long, vocab)];
        let per = PAGES / 4;
        let tables = (0..3).map(|i| ((i * per) as u32..((i + 1) * per) as u32).rev().collect()).collect();
        Batch { prompts, tables }
    }
    pub fn prefill(&self) -> Vec<BatchSeq<'_>> {
        let logits = [LogitRows::All, LogitRows::Last, LogitRows::All];
        (0..3).map(|i| BatchSeq { tokens: &self.prompts[i], start: 0, block_table: &self.tables[i], logits: logits[i] }).collect()
    }
    /// Decode step `step` (0-based): token `next[i]` after sequence i's prompt and `step` tokens.
    pub fn decode<'a>(&'a self, step: usize, next: &'a [[u32; 1]]) -> Vec<BatchSeq<'a>> {
        (0..3).map(|i| BatchSeq { tokens: &next[i], start: self.prompts[i].len() + step, block_table: &self.tables[i], logits: LogitRows::Last }).collect()
    }
}

/// Each sequence's greedy token from its last logits row.
pub fn last_rows(out: &[Vec<f32>], vocab: usize) -> Vec<[u32; 1]> {
    out.iter().map(|l| [argmax(&l[l.len() - vocab..]) as u32]).collect()
}

/// Logits of `b`'s prefill and `steps` decode steps through `step`, per step and sequence. The
/// decode steps are fed the greedy tokens of `feed` (another run of the same batch), or of this
/// run's own logits.
pub fn run_steps(b: &Batch, steps: usize, vocab: usize, feed: Option<&[Vec<Vec<f32>>]>, mut step: impl FnMut(&[BatchSeq<'_>]) -> Vec<Vec<f32>>) -> Vec<Vec<Vec<f32>>> {
    let mut out = vec![step(&b.prefill())];
    for s in 0..steps {
        let next = last_rows(feed.map_or(&out[s], |f| &f[s]), vocab);
        let logits = step(&b.decode(s, &next));
        out.push(logits);
    }
    out
}

/// Logits of TP=2 against TP=1, per sequence; greedy choices agree where TP=1's margin is clear.
#[track_caller]
pub fn check_step(what: &str, single: &[Vec<f32>], tp: &[Vec<f32>], vocab: usize, tol: f64) {
    assert_eq!(single.len(), tp.len(), "{what}: sequences");
    for (i, (a, b)) in single.iter().zip(tp).enumerate() {
        let e = rel_error(b, a);
        assert!(e <= tol, "{what}: sequence {i}: TP vs TP=1 relative error {e:.3e} > {tol:e}");
    }
    check_same_greedy(what, single, tp, vocab, tol);
}

/// Finite logits of the same shape, and the same greedy token wherever `single`'s top-2 margin
/// is clear at `tol` ([`clear_margin`]).
#[track_caller]
pub fn check_same_greedy(what: &str, single: &[Vec<f32>], tp: &[Vec<f32>], vocab: usize, tol: f64) {
    assert_eq!(single.len(), tp.len(), "{what}: sequences");
    for (i, (a, b)) in single.iter().zip(tp).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}: sequence {i}: logits length");
        if let Some(j) = b.iter().position(|x| !x.is_finite()) {
            panic!("{what}: sequence {i}: TP logit {j} is {}", b[j]);
        }
        for (r, (ra, rb)) in a.chunks_exact(vocab).zip(b.chunks_exact(vocab)).enumerate() {
            if clear_margin(ra, tol) {
                assert_eq!(argmax(ra), argmax(rb), "{what}: sequence {i} row {r}: greedy token differs");
            }
        }
    }
}

/// Whether the greedy choice of `row` survives a perturbation of relative size `tol` (its top-2
/// margin is over 10·tol times the row's RMS).
pub fn clear_margin(row: &[f32], tol: f64) -> bool {
    let rms = (row.iter().map(|x| (x * x) as f64).sum::<f64>() / row.len() as f64).sqrt();
    (top2_margin(row) as f64) > 10.0 * tol * rms
}

/// Greedy tokens of TP=1 (single-sequence path) and, per step, whether its margin is clear at
/// `tol` ([`clear_margin`]).
pub fn tp1_greedy(m: &GpuModel, p: &[u32], n: usize, tol: f64) -> Vec<(u32, bool)> {
    let mut cache = m.new_gpu_cache().unwrap();
    let mut row = m.forward_gpu(p, &mut cache).unwrap().row(p.len() - 1).to_vec();
    let mut out = Vec::new();
    loop {
        let tok = argmax(&row) as u32;
        out.push((tok, clear_margin(&row, tol)));
        if out.len() == n {
            return out;
        }
        row = m.forward_gpu(&[tok], &mut cache).unwrap().row(0).to_vec();
    }
}

/// How the group model runs a step of the batch.
pub enum Group<'a> {
    /// Tensor parallel: every rank, the batch's block tables into every pool alike.
    Tp(&'a TpModel),
    /// DP attention: sequence i lives on rank `ranks[i]`, its block table `tables[i]` addresses
    /// that rank's pool.
    Dp { model: &'a TpModel, ranks: Vec<usize>, tables: Vec<Vec<u32>> },
}

impl Group<'_> {
    pub fn model(&self) -> &TpModel {
        match self {
            Group::Tp(m) | Group::Dp { model: m, .. } => m,
        }
    }

    pub fn step(&self, pools: &mut [PagePool], seqs: &[BatchSeq<'_>]) -> dsv3::Result<Vec<Vec<f32>>> {
        match self {
            Group::Tp(m) => m.forward_batch(pools, seqs),
            Group::Dp { model, ranks, tables } => {
                let own: Vec<BatchSeq<'_>> = seqs.iter().zip(tables).map(|(q, t)| BatchSeq { block_table: t, ..*q }).collect();
                model.forward_batch_dp(pools, &own, ranks)
            }
        }
    }

    /// The logits of `b` through the group ([`run_steps`]), fed `feed`'s tokens, in fresh pools.
    pub fn run(&self, b: &Batch, steps: usize, feed: &[Vec<Vec<f32>>], what: &str) -> Vec<Vec<Vec<f32>>> {
        let vocab = self.model().config().vocab_size;
        let mut pools = self.model().new_page_pools(PAGES, PAGE).unwrap();
        run_steps(b, steps, vocab, Some(feed), |seqs| self.step(&mut pools, seqs).unwrap_or_else(|e| panic!("{what}: {e}")))
    }
}

/// The logits of `b` through `m` alone ([`run_steps`]), fed `feed`'s tokens (or its own), in a
/// fresh pool.
pub fn run_single(m: &GpuModel, b: &Batch, steps: usize, feed: Option<&[Vec<Vec<f32>>]>) -> Vec<Vec<Vec<f32>>> {
    let mut pool = m.new_page_pool(PAGES, PAGE).unwrap();
    run_steps(b, steps, m.config().vocab_size, feed, |seqs| m.forward_batch(&mut pool, seqs).unwrap())
}

/// DP attention over `dp`'s ranks for the three sequences of [`Batch`]: ranks balanced by prompt
/// length (both ranks get sequences, one gets two), and each rank's sequences on pages counted
/// from 0 of its own pool, so sequences of different ranks use the same page ids: a write to,
/// or a read from, another rank's pool would show (the pools start poisoned with NaN).
pub fn dp_group<'a>(dp: &'a TpModel, b: &Batch) -> Group<'a> {
    let world = dp.communicator().world_size();
    let ranks: Vec<usize> = (0..b.prompts.len()).map(|i| i % world).collect();
    assert!((0..world).all(|r| ranks.contains(&r)), "every rank gets a sequence: {ranks:?}");
    let tables = own_tables(&ranks, world);
    Group::Dp { model: dp, ranks, tables }
}

/// DP attention: each sequence's block table in its own rank's pool — the k-th sequence of a
/// rank on that pool's pages k·PAGES/4 .., reversed (so paging is exercised).
pub fn own_tables(ranks: &[usize], world: usize) -> Vec<Vec<u32>> {
    let per = PAGES / 4;
    let mut used = vec![0usize; world];
    ranks
        .iter()
        .map(|&r| {
            let k = used[r];
            used[r] += 1;
            ((k * per) as u32..((k + 1) * per) as u32).rev().collect()
        })
        .collect()
}

/// Per step, [`check_step`] of `got` against `want` at `tol[step]`; returns the worst relative
/// error over the whole run.
#[track_caller]
pub fn check_run(what: &str, want: &[Vec<Vec<f32>>], got: &[Vec<Vec<f32>>], vocab: usize, tol: &[f64]) -> f64 {
    for (s, (a, t)) in want.iter().zip(got).enumerate() {
        let step = if s == 0 { "prefill".to_string() } else { format!("decode {}", s - 1) };
        check_step(&format!("{what} {step}"), a, t, vocab, tol[s]);
    }
    rel_error(&flat(got), &flat(want))
}

/// [`check_run`] without the per-sequence closeness bound: where both runs carry quantization
/// noise of the size of `tol` drawn on different partial sums (FP8 activations), only the greedy
/// tokens at clear margins are held equal; returns the worst relative error over the run.
#[track_caller]
pub fn check_greedy_run(what: &str, want: &[Vec<Vec<f32>>], got: &[Vec<Vec<f32>>], vocab: usize, tol: &[f64]) -> f64 {
    for (s, (a, t)) in want.iter().zip(got).enumerate() {
        let step = if s == 0 { "prefill".to_string() } else { format!("decode {}", s - 1) };
        check_same_greedy(&format!("{what} {step}"), a, t, vocab, tol[s]);
    }
    rel_error(&flat(got), &flat(want))
}

/// Every logit of a run, in order.
pub fn flat(run: &[Vec<Vec<f32>>]) -> Vec<f32> {
    run.iter().flatten().flatten().copied().collect()
}

/// The checkpoints the tests run: every fixture, plus [`super::fp8_aligned`]'s (its guard keeps
/// the directory alive).
pub fn fixtures_and_aligned_fp8() -> (Vec<std::path::PathBuf>, super::files::TempDir) {
    let aligned = super::fp8_aligned::checkpoint();
    let mut dirs = super::fixtures();
    dirs.push(aligned.path().to_path_buf());
    (dirs, aligned)
}

/// `dir`'s name for messages.
pub fn name(dir: &Path) -> String {
    dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
}
