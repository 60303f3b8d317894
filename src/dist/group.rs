//! Opening this node's part of a tensor-parallel group from the launch flags (`--tp`,
//! `--base-gpu-id`, `--nnodes`, `--node-rank`, `--dist-init-addr`, `--dist-timeout`): the
//! communicator over the node's GPUs and the all-reduce the model uses. Several nodes meet
//! through the TCP rendezvous, which hands node 0's NCCL unique id to every node; the
//! all-reduce then takes NCCL (the custom kernels work within one node). The same on AMD GPUs,
//! with RCCL for NCCL; the vendor is [`local_vendor`]'s (every node must have the same).

use std::sync::Arc;
use std::time::Duration;

use super::device::local_vendor;
use super::rendezvous::{rendezvous, RendezvousConfig};
use super::{dist_err, nccl, AllReduce, Communicator, Nccl, Policy};
use crate::backend::{CodeVariant, Vendor};
use crate::error::Result;

/// This node's view of the group.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// World size over all nodes (`--tp`).
    pub tp: usize,
    /// First GPU ordinal this node drives (`--base-gpu-id`); it drives `tp / nnodes` GPUs.
    pub base_gpu_id: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub dist_init_addr: Option<String>,
    pub timeout: Duration,
}

impl GroupConfig {
    /// One node driving GPUs `base_gpu_id..base_gpu_id + tp`.
    pub fn single_node(tp: usize, base_gpu_id: usize) -> GroupConfig {
        GroupConfig { tp, base_gpu_id, nnodes: 1, node_rank: 0, dist_init_addr: None, timeout: Duration::from_secs(300) }
    }

    /// GPUs this node drives: `tp / nnodes` (every node brings as many).
    #[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80
    pub fn local_gpus(&self) -> Result<usize> {
        if self.tp == 0 || self.nnodes == 0 || self.tp % self.nnodes != 0 {
            return Err(dist_err("dist", format!("--tp {} must be a positive multiple of --nnodes {} (each node drives tp/nnodes GPUs)", self.tp, self.nnodes)));
        }
        Ok(self.tp / self.nnodes)
    }
}

/// The all-reduce over this node's GPUs of the group (its communicator inside), on the GPUs
/// [`local_vendor`] picks.
pub fn open_group(cfg: &GroupConfig) -> Result<AllReduce> {
    open_group_on(local_vendor()?, cfg)
}

/// [`open_group`] over GPUs of `vendor` (CUDA with NCCL, HIP with RCCL).
pub fn open_group_on(vendor: Vendor, cfg: &GroupConfig) -> Result<AllReduce> {
    let n = cfg.local_gpus()?;
    let ordinals: Vec<usize> = (cfg.base_gpu_id..cfg.base_gpu_id + n).collect();
    if cfg.nnodes == 1 {
        let comm = Arc::new(Communicator::with_vendor(vendor, &ordinals, CodeVariant::Auto)?);
        // NCCL serves what the custom kernels do not (messages above their buffer, GPUs without
        // peer access); without it those fail with a clear error.
        let nccl = if n > 1 {
            Nccl::single_node(comm.clone()).map_err(|e| tracing::warn!("NCCL / RCCL unavailable ({e}); all-reduces use the custom kernels only")).ok()
        } else {
            None
        };
        return AllReduce::new(comm, Policy::default(), nccl);
    }
    let addr = cfg.dist_init_addr.clone().ok_or_else(|| dist_err("dist", "--dist-init-addr host:port is required with --nnodes > 1"))?;
    let id = if cfg.node_rank == 0 { nccl::unique_id_for(vendor)? } else { Vec::new() };
    let rc = RendezvousConfig::new(addr, cfg.node_rank, cfg.nnodes, n).with_world_size(cfg.tp).with_timeout(cfg.timeout);
    let info = rendezvous(&rc, &id)?;
    let comm = Arc::new(Communicator::from_rendezvous_on(vendor, &ordinals, &info)?);
    let nccl = Nccl::new(comm.clone(), &info.payload)?;
    AllReduce::new(comm, Policy::default(), Some(nccl))
}
