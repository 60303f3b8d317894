//! Which all-reduce algorithm a message takes. Pure data, so it is tested on the CPU and the
//! thresholds can be tuned from the benchmark's table (`benches/allreduce.rs`).

/// An all-reduce algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algo {
    /// Every rank stores its input into every rank's receive buffer and polls its own until all
    /// have arrived: no barrier (smallest sizes). Its buffers are sized for [`Policy::push_limit`].
    Push,
    /// Every rank reads every peer's whole input and sums it (latency-bound sizes).
    OneShot,
    /// Reduce-scatter into each rank's scratch + all-gather (mid sizes: each byte crosses the
    /// links twice instead of world-1 times).
    TwoShot,
    /// NCCL (large messages, several nodes, GPUs without peer access).
    Nccl,
}

impl Algo {
    pub fn name(self) -> &'static str {
        match self {
            Algo::Push => "push",
            Algo::OneShot => "one-shot",
            Algo::TwoShot => "two-shot",
            Algo::Nccl => "nccl",
        }
    }
}

/// Size thresholds of the dispatch (bytes of one rank's message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Push up to this size (world 2; 0 = never); for larger worlds it shrinks like one-shot
    /// (each rank stores world-1 copies of its input across the links). See [`Policy::push_limit`].
    pub push_max: usize,
    /// One-shot up to this size (world 2); for larger worlds it shrinks (each rank reads
    /// world-1 peers).
    pub one_shot_max: usize,
    /// Two-shot up to this size; NCCL above.
    pub two_shot_max: usize,
    /// Bytes of the registered buffers (the custom kernels' largest message).
    pub buffer_bytes: usize,
}

impl Default for Policy {
    /// Crossovers measured on H200s over NVLink (docs/perf/results/2026-11-28-h200x2: 2 and 4
    /// GPUs, bf16): at world 4 one-shot and two-shot tie up to 256 KB and two-shot wins above,
    /// and the custom kernels stay ahead of NCCL up to 32 MB (1.8–2.4× at ≤ 256 KB, 1.05× at
    /// 32 MB, slower at 64 MB); one-shot shrinks with the world (each rank reads world-1 peers).
    /// Push up to 2 MB at world 2 (1 MB at 4) is where it measured fastest in CUDA graphs on the
    /// H200 (1.8–1.9× NCCL at ≤ 512 KB, world 2).
    /// `DSV3_AR_PUSH_MAX` / `DSV3_AR_ONE_SHOT_MAX` / `DSV3_AR_TWO_SHOT_MAX` (bytes) override them.
    fn default() -> Self {
        let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        let two_shot_max = env("DSV3_AR_TWO_SHOT_MAX", 32 << 20);
        Policy {
            // Measured (H200, bf16, in graphs): push fastest up to 4 MB at world 2 and 1 MB at
            // world 4 (docs/MULTI_GPU.md); 2 MB scales to 2 MB / 1 MB / 512 KB at 2 / 4 / 8.
            push_max: env("DSV3_AR_PUSH_MAX", 2 << 20),
            one_shot_max: env("DSV3_AR_ONE_SHOT_MAX", 512 << 10),
            two_shot_max,
            buffer_bytes: two_shot_max.max(1 << 20),
        }
    }
}

impl Policy {
    /// The largest message push takes at `world` ranks (what its receive buffers are sized for).
    pub fn push_limit(&self, world: usize) -> usize {
        shrink_with_world(self.push_max, world)
    }
}

/// `max` at world 2; `max · 2 / world` above (each rank moves world-1 copies of its message), but
/// not below 16 KB (latency-bound there whatever the world) unless `max` itself is smaller.
fn shrink_with_world(max: usize, world: usize) -> usize {
    (max * 2 / world.max(2)).max(max.min(16 << 10))
}

/// The algorithm for a message of `bytes` over `world` ranks spread on `nnodes` nodes, where
/// `peer_access` says whether every pair of local GPUs can read each other's memory.
pub fn choose(policy: &Policy, bytes: usize, world: usize, nnodes: usize, peer_access: bool) -> Algo {
    if world <= 1 {
        // Nothing to reduce; the one-shot path degenerates to a copy (the caller skips it).
        return Algo::OneShot;
    }
    if nnodes > 1 || !peer_access || world > 8 {
        return Algo::Nccl;
    }
    if bytes <= policy.push_limit(world) {
        return Algo::Push;
    }
    if bytes > policy.buffer_bytes {
        return Algo::Nccl;
    }
    // At world 2 one-shot moves the same bytes as two-shot (each rank reads its one peer's
    // buffer) with one barrier less: measured fastest at every size up to 64 MB on 2 × H200, it
    // takes the whole custom range.
    let one = if world == 2 { policy.two_shot_max } else { shrink_with_world(policy.one_shot_max, world) };
    if bytes <= one {
        Algo::OneShot
    } else if bytes <= policy.two_shot_max {
        Algo::TwoShot
    } else {
        Algo::Nccl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_by_size_world_and_topology() {
        let p = Policy { push_max: 0, one_shot_max: 512 << 10, two_shot_max: 8 << 20, buffer_bytes: 8 << 20 };
        assert_eq!(choose(&p, 4096, 2, 1, true), Algo::OneShot);
        assert_eq!(choose(&p, 8 << 20, 2, 1, true), Algo::OneShot, "world 2: one-shot over the whole custom range");
        assert_eq!(choose(&p, (8 << 20) + 2, 2, 1, true), Algo::Nccl);
        assert_eq!(choose(&p, 256 << 10, 4, 1, true), Algo::OneShot);
        assert_eq!(choose(&p, (256 << 10) + 2, 4, 1, true), Algo::TwoShot);
        assert_eq!(choose(&p, 256 << 10, 8, 1, true), Algo::TwoShot);
        assert_eq!(choose(&p, 8 << 20, 4, 1, true), Algo::TwoShot);
        assert_eq!(choose(&p, (8 << 20) + 2, 4, 1, true), Algo::Nccl);
        assert_eq!(choose(&p, 4096, 2, 2, true), Algo::Nccl, "across nodes");
        assert_eq!(choose(&p, 4096, 2, 1, false), Algo::Nccl, "no peer access");
        assert_eq!(choose(&p, 4096, 16, 1, true), Algo::Nccl, "more ranks than the kernels take");
        let small = Policy { buffer_bytes: 1 << 20, ..p };
        assert_eq!(choose(&small, 2 << 20, 2, 1, true), Algo::Nccl, "larger than the registered buffer");
    }

    #[test]
    fn push_takes_the_smallest_messages_at_every_world() {
        let p = Policy { push_max: 256 << 10, one_shot_max: 512 << 10, two_shot_max: 8 << 20, buffer_bytes: 8 << 20 };
        for (world, limit) in [(2usize, 256usize << 10), (3, 174_762), (4, 128 << 10), (8, 64 << 10)] {
            assert_eq!(p.push_limit(world), limit, "world {world}");
            assert_eq!(choose(&p, 16, world, 1, true), Algo::Push, "world {world}");
            assert_eq!(choose(&p, limit, world, 1, true), Algo::Push, "world {world}");
            assert_ne!(choose(&p, limit + 2, world, 1, true), Algo::Push, "world {world}");
        }
        assert_eq!(choose(&p, (256 << 10) + 2, 2, 1, true), Algo::OneShot, "one-shot above push at world 2");
        assert_eq!(choose(&p, 4096, 2, 2, true), Algo::Nccl, "push needs one node");
        assert_eq!(choose(&p, 4096, 2, 1, false), Algo::Nccl, "push needs peer access");
        assert_eq!(choose(&p, 4096, 9, 1, true), Algo::Nccl);
        // Not below 16 KB at large worlds, unless push_max itself is smaller; 0 turns push off.
        let tiny = Policy { push_max: 32 << 10, ..p };
        assert_eq!(tiny.push_limit(8), 16 << 10);
        assert_eq!(Policy { push_max: 8 << 10, ..p }.push_limit(8), 8 << 10);
        assert_eq!(Policy { push_max: 0, ..p }.push_limit(2), 0);
        assert_eq!(choose(&Policy { push_max: 0, ..p }, 16, 2, 1, true), Algo::OneShot);
        // Push has buffers of its own: it may go above the one-shot / two-shot buffer.
        let big = Policy { push_max: 2 << 20, buffer_bytes: 1 << 20, ..p };
        assert_eq!(choose(&big, 2 << 20, 2, 1, true), Algo::Push);
    }

    #[test]
    fn default_policy_follows_the_measured_crossovers() {
        let p = Policy::default();
        assert!(p.buffer_bytes >= p.two_shot_max, "the custom range fits the registered buffer");
        assert_eq!(choose(&p, 256 << 10, 2, 1, true), Algo::Push);
        assert_eq!(choose(&p, 64 << 10, 8, 1, true), Algo::Push);
        assert_eq!(choose(&p, 2 << 20, 2, 1, true), Algo::Push);
        assert_eq!(choose(&p, (2 << 20) + 2, 2, 1, true), Algo::OneShot);
        assert_eq!(choose(&p, 16 << 20, 2, 1, true), Algo::OneShot);
        assert_eq!(choose(&p, 1 << 20, 4, 1, true), Algo::Push);
        assert_eq!(choose(&p, (1 << 20) + 2, 4, 1, true), Algo::TwoShot);
        assert_eq!(choose(&p, 64 << 20, 4, 1, true), Algo::Nccl);
    }
}
