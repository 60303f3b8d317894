//! [`Communicator`]: the local GPUs of this process as ranks of a (possibly multi-node) world.
//!
//! One process per node drives every GPU of that node: local rank `i` is GPU `ordinals[i]`,
//! global rank `rank_offset + i`. Each rank has its own [`CudaStream`] (a non-blocking stream on
//! the device's primary context, which the CUDA runtime and NCCL share). Peer access is enabled
//! between every pair of local GPUs that supports it; [`Communicator::peer_access`] says whether
//! all pairs do (the custom all-reduce needs it; NCCL does not).

use super::dist_err;
use super::rendezvous::RendezvousInfo;
use crate::backend::cuda::{device_count, CudaStream};
use crate::backend::{CodeVariant, GpuStream};
use crate::error::Result;
use cudarc::driver::{result, sys};

const B: &str = "dist";

fn drv(what: impl std::fmt::Display, r: sys::CUresult) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(dist_err(B, format!("{what}: {r:?}")))
    }
}

pub struct Communicator {
    streams: Vec<CudaStream>,
    ordinals: Vec<usize>,
    peer_access: bool,
    rank_offset: usize,
    world_size: usize,
    nnodes: usize,
    sm_count: usize,
}

impl Communicator {
    /// The GPUs `ordinals` of this machine as a single-node world (ranks in that order).
    pub fn new(ordinals: &[usize]) -> Result<Self> {
        Self::build(ordinals, CodeVariant::Auto, 0, ordinals.len(), 1)
    }

    /// Every GPU of this machine.
    pub fn all_local() -> Result<Self> {
        let n = device_count()?;
        Self::new(&(0..n).collect::<Vec<_>>())
    }

    /// Like [`Communicator::new`], loading kernels in `variant`.
    pub fn with_variant(ordinals: &[usize], variant: CodeVariant) -> Result<Self> {
        Self::build(ordinals, variant, 0, ordinals.len(), 1)
    }

    /// This node's GPUs as ranks `info.rank_offset..` of the world the rendezvous agreed on.
    pub fn from_rendezvous(ordinals: &[usize], info: &RendezvousInfo) -> Result<Self> {
        let mine = info.gpus_per_node[info.node_rank];
        if mine != ordinals.len() {
            return Err(dist_err(B, format!("node {} announced {mine} GPU(s) but drives {}", info.node_rank, ordinals.len())));
        }
        Self::build(ordinals, CodeVariant::Auto, info.rank_offset, info.world_size, info.nnodes)
    }

    fn build(ordinals: &[usize], variant: CodeVariant, rank_offset: usize, world_size: usize, nnodes: usize) -> Result<Self> {
        if ordinals.is_empty() {
            return Err(dist_err(B, "a communicator needs at least one GPU"));
        }
        for (i, o) in ordinals.iter().enumerate() {
            if ordinals[..i].contains(o) {
                return Err(dist_err(B, format!("GPU {o} is listed twice")));
            }
        }
        let streams: Vec<CudaStream> =
            ordinals.iter().map(|&o| CudaStream::with_variant(o, variant.clone())).collect::<Result<_>>()?;
        // Peer access between every pair (both directions).
        let mut peer_access = true;
        for (i, si) in streams.iter().enumerate() {
            for (j, sj) in streams.iter().enumerate() {
                if i == j {
                    continue;
                }
                let mut can = 0i32;
                drv(
                    format!("cuDeviceCanAccessPeer({}, {})", ordinals[i], ordinals[j]),
                    unsafe { sys::cuDeviceCanAccessPeer(&mut can, si.context().cu_device(), sj.context().cu_device()) },
                )?;
                if can == 0 {
                    peer_access = false;
                    continue;
                }
                si.context().bind_to_thread().map_err(|e| dist_err(B, format!("bind cuda:{}: {e:?}", ordinals[i])))?;
                let r = unsafe { sys::cuCtxEnablePeerAccess(sj.context().cu_ctx(), 0) };
                if r != sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED {
                    drv(format!("cuCtxEnablePeerAccess(cuda:{} -> cuda:{})", ordinals[i], ordinals[j]), r)?;
                }
            }
        }
        let sm_count = streams[0]
            .context()
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| dist_err(B, format!("SM count: {e:?}")))? as usize;
        Ok(Communicator { streams, ordinals: ordinals.to_vec(), peer_access, rank_offset, world_size, nnodes, sm_count })
    }

    /// GPUs driven by this process.
    pub fn local_size(&self) -> usize {
        self.streams.len()
    }
    /// GPUs of the whole world (all nodes).
    pub fn world_size(&self) -> usize {
        self.world_size
    }
    pub fn nnodes(&self) -> usize {
        self.nnodes
    }
    /// Global rank of this node's first GPU.
    pub fn rank_offset(&self) -> usize {
        self.rank_offset
    }
    /// Global rank of local rank `i`.
    pub fn global_rank(&self, i: usize) -> usize {
        self.rank_offset + i
    }
    pub fn ordinals(&self) -> &[usize] {
        &self.ordinals
    }
    /// The stream of local rank `i`.
    pub fn stream(&self, i: usize) -> &CudaStream {
        &self.streams[i]
    }
    pub fn streams(&self) -> &[CudaStream] {
        &self.streams
    }
    /// Whether every pair of local GPUs has peer access.
    pub fn peer_access(&self) -> bool {
        self.peer_access || self.streams.len() == 1
    }
    /// Multiprocessors of the first GPU (bounds the custom kernels' grids).
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// Waits for all work queued on every rank's stream.
    pub fn synchronize(&self) -> Result<()> {
        for s in &self.streams {
            s.synchronize()?;
        }
        Ok(())
    }

    /// Captures the work `f` queues on every rank's stream into one CUDA graph per rank.
    /// `f` must only queue stream-ordered work (launches, async copies) on these streams.
    pub fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<MultiGraph> {
        for (i, s) in self.streams.iter().enumerate() {
            s.context().bind_to_thread().map_err(|e| dist_err(B, format!("bind: {e:?}")))?;
            unsafe { result::stream::begin_capture(s.cu_stream(), sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED) }
                .map_err(|e| dist_err(B, format!("cuStreamBeginCapture on rank {i}: {e:?}")))?;
        }
        let body = f();
        let mut graphs = Vec::new();
        let mut first_err = body.err();
        for (i, s) in self.streams.iter().enumerate() {
            let _ = s.context().bind_to_thread();
            match unsafe { result::stream::end_capture(s.cu_stream()) } {
                Ok(g) => graphs.push(g),
                Err(e) => {
                    first_err.get_or_insert(dist_err(B, format!("cuStreamEndCapture on rank {i}: {e:?}")));
                }
            }
        }
        if let Some(e) = first_err {
            for g in graphs {
                unsafe {
                    let _ = result::graph::destroy(g);
                }
            }
            return Err(e);
        }
        let mut execs = Vec::new();
        for (i, g) in graphs.iter().enumerate() {
            let _ = self.streams[i].context().bind_to_thread();
            let x = unsafe { result::graph::instantiate(*g, sys::CUgraphInstantiate_flags(0)) }
                .map_err(|e| dist_err(B, format!("cuGraphInstantiate on rank {i}: {e:?}")));
            match x {
                Ok(x) => execs.push(x),
                Err(e) => {
                    for g in &graphs {
                        unsafe {
                            let _ = result::graph::destroy(*g);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(MultiGraph { graphs, execs, streams: self.streams.iter().map(|s| (s.context().clone(), s.cu_stream())).collect() })
    }
}

/// One instantiated CUDA graph per rank (from [`Communicator::capture`]).
pub struct MultiGraph {
    graphs: Vec<sys::CUgraph>,
    execs: Vec<sys::CUgraphExec>,
    streams: Vec<(std::sync::Arc<cudarc::driver::CudaContext>, sys::CUstream)>,
}

impl MultiGraph {
    /// Launches every rank's graph on its stream (asynchronously).
    pub fn launch(&self) -> Result<()> {
        for (i, (x, (ctx, s))) in self.execs.iter().zip(&self.streams).enumerate() {
            ctx.bind_to_thread().map_err(|e| dist_err(B, format!("bind: {e:?}")))?;
            unsafe { result::graph::launch(*x, *s) }.map_err(|e| dist_err(B, format!("cuGraphLaunch on rank {i}: {e:?}")))?;
        }
        Ok(())
    }
}

impl Drop for MultiGraph {
    fn drop(&mut self) {
        for (i, (ctx, s)) in self.streams.iter().enumerate() {
            let _ = ctx.bind_to_thread();
            unsafe {
                let _ = result::stream::synchronize(*s);
                let _ = result::graph::exec_destroy(self.execs[i]);
                let _ = result::graph::destroy(self.graphs[i]);
            }
        }
    }
}

// The raw handles are only used through the driver, which is thread-safe.
unsafe impl Send for MultiGraph {}
unsafe impl Sync for MultiGraph {}
