//! The custom all-reduce over peer memory and the dispatcher that picks it or NCCL / RCCL.
//!
//! [`CustomAllReduce`] launches the generated kernels of `kernels/allreduce.cuh` (CUDA and HIP
//! variants of one source) on every local rank's stream. Each rank owns three registered
//! (fixed-address, allocated once) buffers:
//!
//! - a signal buffer: a 16 KiB header of barrier counters (zeroed once; the kernels only ever
//!   increment them, so neither many iterations nor graph replays see stale flags), the
//!   watchdog timeout and the push kernel's generation counter, followed by the two-shot scratch
//!   area of `buffer_bytes`;
//! - a staging buffer of `buffer_bytes`: the registered input. A caller may write its data there
//!   directly ([`CustomAllReduce::registered_input`]); the one-shot kernel stages in-place calls
//!   through it (it must not write an output that a peer may still be reading);
//! - a receive buffer for the push kernel: [`PUSH_GENERATIONS`] generations of one slot per rank of
//!   `push_bytes`, filled with the sentinel (0xff bytes) once here; the kernel restores it after
//!   each use.
//!
//! The signal and receive buffers are what peers poll while the kernels run: they come from
//! [`CommStream::alloc_signal`](super::device::CommStream::alloc_signal) (on AMD fine-grained
//! memory, coherent across GPUs during a kernel; on NVIDIA ordinary device memory).
//!
//! Inputs are read straight from the peers' memory (peer access is enabled by the
//! [`Communicator`]), so any device pointer works as an input; every address a launch uses is
//! fixed, and the kernels keep their barrier state in device memory: a captured graph replays
//! correctly as long as the buffers it names stay alive.
//!
//! Results are bit-identical on every rank: each element is summed in f32 in rank order.

use super::comm::Communicator;
use super::dist_err;
use super::nccl::Nccl;
use super::policy::{choose, Algo, Policy};
use crate::backend::registry::KERNELS;
use crate::backend::{DType, DeviceBuffer, KernelInfo, LaunchCfg};
use crate::error::Result;
use std::ffi::c_void;
use std::sync::Arc;

const B: &str = "allreduce";

/// Largest world the kernels take.
pub const MAX_RANKS: usize = 8;
/// Largest grid (the signal header has counters for this many blocks).
pub const MAX_BLOCKS: u32 = 128;
/// Threads per block.
pub const THREADS: u32 = 512;
/// Bytes of the signal header (`AR_SIGNAL_BYTES`); the two-shot scratch follows it.
pub const SIGNAL_BYTES: usize = 16384;
/// Offset of the watchdog timeout (u64 nanoseconds) in the header.
const TIMEOUT_OFFSET: usize = 12288;
/// Generations of a push receive buffer (`AR_PUSH_GENERATIONS`).
pub const PUSH_GENERATIONS: usize = 3;

fn kernel(name: &str) -> Result<&'static KernelInfo> {
    KERNELS.iter().find(|k| k.name == name).ok_or_else(|| dist_err(B, format!("kernel {name} is not in the registry")))
}

fn env_usize(k: &str) -> Option<usize> {
    std::env::var(k).ok().and_then(|v| v.trim().parse().ok())
}

fn overlaps(a: u64, b: u64, bytes: usize) -> bool {
    let n = bytes as u64;
    a < b + n && b < a + n
}

pub struct CustomAllReduce {
    sigs: Vec<DeviceBuffer>,
    staging: Vec<DeviceBuffer>,
    /// Push receive buffers (none when `push_bytes` is 0).
    recv: Vec<DeviceBuffer>,
    comm: Arc<Communicator>,
    buffer_bytes: usize,
    push_bytes: usize,
    max_blocks: u32,
    oneshot: [&'static KernelInfo; 2],
    twoshot: [&'static KernelInfo; 2],
    push: [&'static KernelInfo; 2],
}

impl CustomAllReduce {
    /// Registers the buffers of every local rank of `comm` for one-shot / two-shot messages of up
    /// to `buffer_bytes` and push messages of up to `push_bytes` (0: no push; its receive buffers
    /// take `3 · world · push_bytes` per rank). Needs a single-node world of 1..=8 GPUs with peer
    /// access.
    ///
    /// `DSV3_AR_TIMEOUT_MS` sets the barrier watchdog (default 10000; 0 = wait forever);
    /// `DSV3_AR_MAX_BLOCKS` caps the grid (default: the SM count, at most 128).
    pub fn new(comm: Arc<Communicator>, buffer_bytes: usize, push_bytes: usize) -> Result<Self> {
        let world = comm.local_size();
        if comm.nnodes() != 1 || comm.world_size() != world {
            return Err(dist_err(B, format!(
                "the custom all-reduce works within one node (this world: {} GPU(s) over {} node(s)); use NCCL",
                comm.world_size(),
                comm.nnodes()
            )));
        }
        if world > MAX_RANKS {
            return Err(dist_err(B, format!("{world} GPUs: the custom kernels take at most {MAX_RANKS}")));
        }
        if !comm.peer_access() {
            return Err(dist_err(B, "the GPUs lack peer access to each other; use NCCL"));
        }
        let buffer_bytes = buffer_bytes.max(16).next_multiple_of(256);
        // Slots are whole 16-byte vectors (the kernel's slot_cap is a u32).
        let push_bytes = push_bytes.next_multiple_of(16);
        if PUSH_GENERATIONS * world * push_bytes > u32::MAX as usize {
            return Err(dist_err(B, format!("push messages of {push_bytes} bytes: at most 4 GiB of receive buffer")));
        }
        let timeout_ns = env_usize("DSV3_AR_TIMEOUT_MS").unwrap_or(10_000) as u64 * 1_000_000;
        let mut sigs = Vec::new();
        let mut staging = Vec::new();
        let mut recv = Vec::new();
        for i in 0..world {
            let s = comm.stream(i);
            // Barrier flags (and the two-shot scratch after them) are polled by peers mid-kernel.
            let sig = s.alloc_signal(SIGNAL_BYTES + buffer_bytes)?;
            let stg = s.alloc(buffer_bytes)?;
            unsafe {
                s.memset_u8(sig.ptr(), 0, SIGNAL_BYTES)?;
                s.copy_htod(sig.ptr() + TIMEOUT_OFFSET as u64, &timeout_ns.to_le_bytes())?;
            }
            if push_bytes > 0 {
                let bytes = PUSH_GENERATIONS * world * push_bytes;
                // The push kernel's pollers spin on these bytes: flag memory too.
                let r = s.alloc_signal(bytes)?;
                unsafe { s.memset_u8(r.ptr(), 0xff, bytes)? };
                recv.push(r);
            }
            sigs.push(sig);
            staging.push(stg);
        }
        comm.synchronize()?;
        let max_blocks = env_usize("DSV3_AR_MAX_BLOCKS").unwrap_or(comm.sm_count()).clamp(1, MAX_BLOCKS as usize) as u32;
        Ok(CustomAllReduce {
            sigs,
            staging,
            recv,
            comm,
            buffer_bytes,
            push_bytes,
            max_blocks,
            oneshot: [kernel("allreduce_oneshot_f32")?, kernel("allreduce_oneshot_bf16")?],
            twoshot: [kernel("allreduce_twoshot_f32")?, kernel("allreduce_twoshot_bf16")?],
            push: [kernel("allreduce_push_f32")?, kernel("allreduce_push_bf16")?],
        })
    }

    /// The largest message (bytes per rank) of one-shot and two-shot.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }
    /// The largest message (bytes per rank) `algo` takes (0 for NCCL).
    pub fn max_bytes(&self, algo: Algo) -> usize {
        match algo {
            Algo::Push => self.push_bytes,
            Algo::OneShot | Algo::TwoShot => self.buffer_bytes,
            Algo::Nccl => 0,
        }
    }
    pub fn world(&self) -> usize {
        self.sigs.len()
    }
    pub fn communicator(&self) -> &Arc<Communicator> {
        &self.comm
    }
    /// Local rank `rank`'s registered input buffer (`buffer_bytes`, fixed address): data written
    /// there is reduced without a staging copy, also under CUDA graphs.
    pub fn registered_input(&self, rank: usize) -> u64 {
        self.staging[rank].ptr()
    }

    /// Blocks of a launch (the same on every rank).
    pub fn blocks(&self, algo: Algo, dtype: DType, count: usize) -> u32 {
        let v = 16 / dtype.size();
        let work = if algo == Algo::TwoShot { count.div_ceil(self.world()) } else { count };
        let vecs = work.div_ceil(v).max(1);
        (vecs.div_ceil(THREADS as usize) as u32).clamp(1, self.max_blocks)
    }

    /// Sum all-reduce of `count` elements of `dtype` (f32 or bf16) with `algo` (push, one-shot or
    /// two-shot): `outputs[i] = Σ_r inputs[r]` on every local rank `i`, queued on each rank's
    /// stream. In place (`outputs[i] == inputs[i]`) is allowed; push refuses an output that
    /// overlaps its input otherwise.
    ///
    /// # Safety
    /// `inputs[i]` and `outputs[i]` are device allocations of local rank `i`'s GPU holding
    /// `count` elements; the inputs stay unchanged until the kernels finish.
    pub unsafe fn all_reduce(&self, algo: Algo, dtype: DType, count: usize, inputs: &[u64], outputs: &[u64]) -> Result<()> {
        let world = self.world();
        if inputs.len() != world || outputs.len() != world {
            return Err(dist_err(B, format!("{} inputs and {} outputs for {world} rank(s)", inputs.len(), outputs.len())));
        }
        let di = match dtype {
            DType::F32 => 0,
            DType::Bf16 => 1,
            other => return Err(dist_err(B, format!("the custom all-reduce sums f32 and bf16, not {other}"))),
        };
        if algo == Algo::Nccl {
            return Err(dist_err(B, "the custom all-reduce does not run NCCL; use AllReduce"));
        }
        let bytes = count * dtype.size();
        if bytes > self.max_bytes(algo) {
            return Err(dist_err(B, format!("{}: {bytes} bytes exceed its registered {} bytes", algo.name(), self.max_bytes(algo))));
        }
        if count > u32::MAX as usize {
            return Err(dist_err(B, format!("{count} elements: at most 2^32-1")));
        }
        if count == 0 {
            return Ok(());
        }
        if world == 1 {
            if inputs[0] != outputs[0] {
                self.comm.stream(0).copy_dtod(outputs[0], inputs[0], bytes)?;
            }
            return Ok(());
        }
        let cfg = LaunchCfg::linear(self.blocks(algo, dtype, count), THREADS);
        let (w, n) = (world as u32, count as u32);
        let k = match algo {
            Algo::Push => return self.push(self.push[di], cfg, n, bytes, inputs, outputs),
            Algo::OneShot => self.oneshot[di],
            _ => self.twoshot[di],
        };
        let mut ins = [0u64; MAX_RANKS];
        for (r, slot) in ins.iter_mut().enumerate().take(world) {
            *slot = inputs[r];
            if algo == Algo::OneShot && overlaps(inputs[r], outputs[r], bytes) {
                let stg = self.staging[r].ptr();
                if overlaps(stg, outputs[r], bytes) {
                    return Err(dist_err(B, "one-shot: the output aliases the registered input buffer; use two-shot or another output"));
                }
                self.comm.stream(r).copy_dtod(stg, inputs[r], bytes)?;
                *slot = stg;
            }
        }
        let sigs = ptrs(&self.sigs);
        for (r, &out) in outputs.iter().enumerate() {
            let mut a64 = [0u64; 1 + 2 * MAX_RANKS];
            a64[0] = out;
            a64[1..=MAX_RANKS].copy_from_slice(&ins);
            a64[1 + MAX_RANKS..].copy_from_slice(&sigs);
            self.launch(r, k, cfg, &mut a64, &mut [r as u32, w, n])?;
        }
        Ok(())
    }

    /// The push kernel `k` on every rank (count, size and world already checked).
    unsafe fn push(&self, k: &'static KernelInfo, cfg: LaunchCfg, n: u32, bytes: usize, inputs: &[u64], outputs: &[u64]) -> Result<()> {
        // The thread that reads in[i] is the one that writes out[i]: only an exact alias is safe.
        if inputs.iter().zip(outputs).any(|(&i, &o)| i != o && overlaps(i, o, bytes)) {
            return Err(dist_err(B, "push: an output partly overlaps its input (in place means the same pointer)"));
        }
        let recv = ptrs(&self.recv);
        let w = self.world() as u32;
        for (r, (&inp, &out)) in inputs.iter().zip(outputs).enumerate() {
            let mut a64 = [0u64; 3 + MAX_RANKS];
            a64[0] = out;
            a64[1] = inp;
            a64[2..2 + MAX_RANKS].copy_from_slice(&recv);
            a64[2 + MAX_RANKS] = self.sigs[r].ptr();
            self.launch(r, k, cfg, &mut a64, &mut [r as u32, w, n, self.push_bytes as u32])?;
        }
        Ok(())
    }

    /// Launches `k` on rank `r`'s stream. Every all-reduce kernel takes its 64-bit arguments
    /// first, then its 32-bit ones.
    unsafe fn launch(&self, r: usize, k: &'static KernelInfo, cfg: LaunchCfg, a64: &mut [u64], a32: &mut [u32]) -> Result<()> {
        let mut params: Vec<*mut c_void> =
            a64.iter_mut().map(|p| p as *mut u64 as *mut c_void).chain(a32.iter_mut().map(|p| p as *mut u32 as *mut c_void)).collect();
        self.comm.stream(r).launch(k, cfg, &mut params)
    }
}

/// The buffers' addresses in rank order, unused ranks 0.
fn ptrs(bufs: &[DeviceBuffer]) -> [u64; MAX_RANKS] {
    let mut p = [0u64; MAX_RANKS];
    for (slot, b) in p.iter_mut().zip(bufs) {
        *slot = b.ptr();
    }
    p
}

/// All-reduce with dispatch by message size, world size and topology: the custom kernels
/// where they win (one node, peer access, up to [`Policy::two_shot_max`]), NCCL (RCCL on AMD)
/// elsewhere.
pub struct AllReduce {
    custom: Option<CustomAllReduce>,
    nccl: Option<Nccl>,
    comm: Arc<Communicator>,
    policy: Policy,
}

impl AllReduce {
    /// The custom path is set up when the world allows it (one node, 2..=8 GPUs, peer access);
    /// `nccl` serves everything else. With neither, only world size 1 works.
    pub fn new(comm: Arc<Communicator>, policy: Policy, nccl: Option<Nccl>) -> Result<Self> {
        let w = comm.local_size();
        let custom = if comm.nnodes() == 1 && comm.world_size() == w && (2..=MAX_RANKS).contains(&w) && comm.peer_access() {
            Some(CustomAllReduce::new(comm.clone(), policy.buffer_bytes, policy.push_limit(w))?)
        } else {
            None
        };
        if custom.is_none() && nccl.is_none() && comm.world_size() > 1 {
            return Err(dist_err(B, format!(
                "no all-reduce for this world ({} GPU(s), {} node(s), peer access {}): NCCL is needed",
                comm.world_size(),
                comm.nnodes(),
                comm.peer_access()
            )));
        }
        Ok(AllReduce { custom, nccl, comm, policy })
    }

    pub fn custom(&self) -> Option<&CustomAllReduce> {
        self.custom.as_ref()
    }
    pub fn nccl(&self) -> Option<&Nccl> {
        self.nccl.as_ref()
    }
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
    pub fn communicator(&self) -> &Arc<Communicator> {
        &self.comm
    }

    /// The algorithm a message of `count` elements of `dtype` takes.
    pub fn algo(&self, dtype: DType, count: usize) -> Algo {
        let bytes = count * dtype.size();
        let custom = self.custom.as_ref().filter(|_| matches!(dtype, DType::F32 | DType::Bf16));
        let fits = |a: Algo| custom.is_some_and(|c| bytes <= c.max_bytes(a));
        match choose(&self.policy, bytes, self.comm.world_size(), self.comm.nnodes(), custom.is_some()) {
            Algo::Nccl if self.nccl.is_none() && fits(Algo::TwoShot) => Algo::TwoShot,
            a @ (Algo::Push | Algo::OneShot | Algo::TwoShot) if !fits(a) => Algo::Nccl,
            a => a,
        }
    }

    /// Sum all-reduce; returns the algorithm it took.
    ///
    /// # Safety
    /// As [`CustomAllReduce::all_reduce`].
    pub unsafe fn all_reduce(&self, dtype: DType, count: usize, inputs: &[u64], outputs: &[u64]) -> Result<Algo> {
        if self.comm.world_size() == 1 {
            if inputs[0] != outputs[0] && count > 0 {
                self.comm.stream(0).copy_dtod(outputs[0], inputs[0], count * dtype.size())?;
            }
            return Ok(Algo::OneShot);
        }
        let a = self.algo(dtype, count);
        match (a, &self.custom, &self.nccl) {
            (Algo::Nccl, _, Some(n)) => n.all_reduce(dtype, count, inputs, outputs)?,
            (Algo::Push | Algo::OneShot | Algo::TwoShot, Some(c), _) => c.all_reduce(a, dtype, count, inputs, outputs)?,
            _ => return Err(dist_err(B, format!("no all-reduce path for {count} x {dtype}"))),
        }
        Ok(a)
    }
}
