//! [`Communicator`]: the local GPUs of this process as ranks of a (possibly multi-node) world.
//!
//! One process per node drives every GPU of that node: local rank `i` is GPU `ordinals[i]`,
//! global rank `rank_offset + i`. Each rank has its own stream ([`CommStream`]: a CUDA stream on
//! the device's primary context, which the CUDA runtime and NCCL share, or a HIP stream). Peer
//! access is enabled between every pair of local GPUs that supports it;
//! [`Communicator::peer_access`] says whether all pairs do (the custom all-reduce needs it; NCCL
//! and RCCL do not). The vendor-specific calls live in [`super::device`].

use super::device::{self, local_vendor, variant_vendor, CommStream};
use super::dist_err;
use super::rendezvous::RendezvousInfo;
use crate::backend::stream::StreamGraph;
use crate::backend::{CodeVariant, Vendor};
use crate::error::Result;

const B: &str = "dist";

pub struct Communicator {
    streams: Vec<Box<dyn CommStream>>,
    vendor: Vendor,
    ordinals: Vec<usize>,
    peer_access: bool,
    rank_offset: usize,
    world_size: usize,
    nnodes: usize,
    sm_count: usize,
}

impl Communicator {
    /// The GPUs `ordinals` of this machine as a single-node world (ranks in that order), of the
    /// vendor [`local_vendor`] picks.
    pub fn new(ordinals: &[usize]) -> Result<Self> {
        Self::build(local_vendor()?, ordinals, CodeVariant::Auto, 0, ordinals.len(), 1)
    }

    /// Every GPU of this machine.
    pub fn all_local() -> Result<Self> {
        let vendor = local_vendor()?;
        let n = device::device_count(vendor)?;
        Self::build(vendor, &(0..n).collect::<Vec<_>>(), CodeVariant::Auto, 0, n, 1)
    }

    /// Like [`Communicator::new`], loading kernels in `variant` (a vendor-specific variant picks
    /// that vendor's GPUs).
    pub fn with_variant(ordinals: &[usize], variant: CodeVariant) -> Result<Self> {
        let vendor = match variant_vendor(&variant) {
            Some(v) => v,
            None => local_vendor()?,
        };
        Self::build(vendor, ordinals, variant, 0, ordinals.len(), 1)
    }

    /// The GPUs `ordinals` of `vendor` as a single-node world, loading kernels in `variant`.
    pub fn with_vendor(vendor: Vendor, ordinals: &[usize], variant: CodeVariant) -> Result<Self> {
        Self::build(vendor, ordinals, variant, 0, ordinals.len(), 1)
    }

    /// This node's GPUs as ranks `info.rank_offset..` of the world the rendezvous agreed on.
    pub fn from_rendezvous(ordinals: &[usize], info: &RendezvousInfo) -> Result<Self> {
        Self::from_rendezvous_on(local_vendor()?, ordinals, info)
    }

    /// [`Communicator::from_rendezvous`] over GPUs of `vendor`.
    pub fn from_rendezvous_on(vendor: Vendor, ordinals: &[usize], info: &RendezvousInfo) -> Result<Self> {
        let mine = info.gpus_per_node[info.node_rank];
        if mine != ordinals.len() {
            return Err(dist_err(B, format!("node {} announced {mine} GPU(s) but drives {}", info.node_rank, ordinals.len())));
        }
        Self::build(vendor, ordinals, CodeVariant::Auto, info.rank_offset, info.world_size, info.nnodes)
    }

    fn build(vendor: Vendor, ordinals: &[usize], variant: CodeVariant, rank_offset: usize, world_size: usize, nnodes: usize) -> Result<Self> {
        if ordinals.is_empty() {
            return Err(dist_err(B, "a communicator needs at least one GPU"));
        }
        for (i, o) in ordinals.iter().enumerate() {
            if ordinals[..i].contains(o) {
                return Err(dist_err(B, format!("GPU {o} is listed twice")));
            }
        }
        if let Some(v) = variant_vendor(&variant).filter(|v| *v != vendor) {
            return Err(dist_err(B, format!("kernel variant {variant} is for {v} GPUs, not {vendor}")));
        }
        let streams: Vec<Box<dyn CommStream>> =
            ordinals.iter().map(|&o| device::open(vendor, o, variant.clone())).collect::<Result<_>>()?;
        // Peer access between every pair (both directions).
        let mut peer_access = true;
        for (i, si) in streams.iter().enumerate() {
            for (j, sj) in streams.iter().enumerate() {
                if i == j {
                    continue;
                }
                if !si.can_access_peer(sj.as_ref())? {
                    peer_access = false;
                    continue;
                }
                si.enable_peer_access(sj.as_ref())?;
            }
        }
        let sm_count = streams[0].sm_count()?;
        Ok(Communicator { streams, vendor, ordinals: ordinals.to_vec(), peer_access, rank_offset, world_size, nnodes, sm_count })
    }

    /// GPUs driven by this process.
    pub fn local_size(&self) -> usize {
        self.streams.len()
    }
    /// The vendor of this communicator's GPUs.
    pub fn vendor(&self) -> Vendor {
        self.vendor
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
    pub fn stream(&self, i: usize) -> &dyn CommStream {
        self.streams[i].as_ref()
    }
    pub fn streams(&self) -> &[Box<dyn CommStream>] {
        &self.streams
    }
    /// The stream of local rank `i` as a [`crate::backend::cuda::CudaStream`] (vendor-specific
    /// calls such as CUDA events); an error on a HIP communicator.
    #[cfg(feature = "cuda")]
    pub fn cuda_stream(&self, i: usize) -> Result<&crate::backend::cuda::CudaStream> {
        self.streams[i].as_any().downcast_ref().ok_or_else(|| dist_err(B, format!("rank {i} is a {} GPU, not CUDA", self.vendor)))
    }
    /// The stream of local rank `i` as a [`crate::backend::hip::HipStream`]; an error on a CUDA
    /// communicator.
    #[cfg(feature = "hip")]
    pub fn hip_stream(&self, i: usize) -> Result<&crate::backend::hip::HipStream> {
        self.streams[i].as_any().downcast_ref().ok_or_else(|| dist_err(B, format!("rank {i} is a {} GPU, not HIP", self.vendor)))
    }
    /// Whether every pair of local GPUs has peer access.
    pub fn peer_access(&self) -> bool {
        self.peer_access || self.streams.len() == 1
    }
    /// Multiprocessors (SMs, AMD CUs) of the first GPU (bounds the custom kernels' grids).
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

    /// Captures the work `f` queues on every rank's stream into one graph per rank (CUDA or HIP
    /// graphs). `f` must only queue stream-ordered work (launches, async copies) on these streams.
    pub fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<MultiGraph> {
        for (i, s) in self.streams.iter().enumerate() {
            if let Err(e) = s.capture_begin() {
                // End the captures already begun, so that their streams stay usable.
                for s in &self.streams[..i] {
                    let _ = s.capture_end();
                }
                return Err(e);
            }
        }
        let body = f();
        let mut graphs = Vec::new();
        let mut first_err = body.err();
        for s in &self.streams {
            match s.capture_end() {
                Ok(g) => graphs.push(g),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            // Dropping the captured graphs destroys them.
            return Err(e);
        }
        // On an error the graphs instantiated so far are destroyed with the vector.
        let graphs = graphs.into_iter().map(|g| g.instantiate()).collect::<Result<Vec<_>>>()?;
        Ok(MultiGraph { graphs })
    }
}

/// One instantiated graph per rank (from [`Communicator::capture`]). Dropping it waits for each
/// rank's stream, then destroys that rank's graph.
pub struct MultiGraph {
    graphs: Vec<Box<dyn StreamGraph>>,
}

impl MultiGraph {
    /// Launches every rank's graph on its stream (asynchronously).
    pub fn launch(&self) -> Result<()> {
        for g in &self.graphs {
            g.replay()?;
        }
        Ok(())
    }
}

// The graphs are only used through the driver / runtime, which is thread-safe.
unsafe impl Sync for MultiGraph {}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a communicator refuses before it touches a GPU (runs on the CPU machine).
    #[test]
    fn refuses_bad_ordinals_and_another_vendors_variant() {
        let err = |r: Result<Communicator>| r.err().map(|e| e.to_string()).unwrap_or_default();
        for v in [Vendor::Cuda, Vendor::Hip] {
            assert!(err(Communicator::with_vendor(v, &[], CodeVariant::Auto)).contains("at least one GPU"));
            assert!(err(Communicator::with_vendor(v, &[0, 1, 0], CodeVariant::Auto)).contains("GPU 0 is listed twice"));
        }
        let e = err(Communicator::with_vendor(Vendor::Hip, &[0], CodeVariant::Nvrtc));
        assert!(e.contains("is for cuda GPUs, not hip"), "{e}");
        let e = err(Communicator::with_vendor(Vendor::Cuda, &[0], CodeVariant::CodeObject("gfx942".into())));
        assert!(e.contains("is for hip GPUs, not cuda"), "{e}");
    }

    #[test]
    fn the_only_backend_built_is_the_local_vendor() {
        #[cfg(not(feature = "hip"))]
        assert_eq!(local_vendor().unwrap(), Vendor::Cuda);
        #[cfg(not(feature = "cuda"))]
        assert_eq!(local_vendor().unwrap(), Vendor::Hip);
        assert_eq!(variant_vendor(&CodeVariant::Auto), None);
        assert_eq!(variant_vendor(&CodeVariant::Ptx("compute_80".into())), Some(Vendor::Cuda));
        assert_eq!(variant_vendor(&CodeVariant::CodeObject("gfx90a".into())), Some(Vendor::Hip));
    }
}
