//! Distributed execution: one process per node drives all of that node's GPUs
//! (`docs/MULTI_GPU.md` says why).
//!
//! - [`rendezvous`]: TCP rendezvous of the nodes (`--dist-init-addr`, `--nnodes`, `--node-rank`,
//!   `--dist-timeout`): exchanges GPU counts and the NCCL unique id; failures are one line on
//!   every node, never a hang. Pure `std::net`: always built, tested on the CPU.
//! - [`policy`]: which all-reduce algorithm a message takes (custom one-shot / two-shot, or
//!   NCCL), from its size, the world size, peer access and the node count. Always built.
//! - `comm` (feature `cuda`): [`Communicator`] over the local GPUs of this process (one stream
//!   per GPU, peer access between them).
//! - `allreduce` (feature `cuda`): the custom all-reduce over peer memory (generated kernels of
//!   `kernels/allreduce.cuh`), CUDA-graph safe, and [`AllReduce`], the dispatcher that falls back
//!   to NCCL.
//! - `nccl` (feature `cuda`): NCCL loaded at run time (cudarc's `nccl` types; the library is
//!   opened under `libnccl.so.2` too), one communicator per local GPU, group calls.
//! - `group` (feature `cuda`): [`open_group`], this node's communicator and all-reduce from the
//!   launch flags (rendezvous + NCCL across nodes).
//! - `rank_stream` (feature `cuda`): [`RankStream`], a rank's communicator stream as the
//!   `GpuStream` a model shard runs on.

pub mod policy;
pub mod rendezvous;

#[cfg(feature = "cuda")]
pub mod allreduce;
#[cfg(feature = "cuda")]
pub mod comm;
#[cfg(feature = "cuda")]
pub mod group;
#[cfg(feature = "cuda")]
pub mod nccl;
#[cfg(feature = "cuda")]
pub mod rank_stream;

pub use policy::{choose, Algo, Policy};
pub use rendezvous::{rendezvous, RendezvousConfig, RendezvousInfo, RendezvousServer};

#[cfg(feature = "cuda")]
pub use allreduce::{AllReduce, CustomAllReduce};
#[cfg(feature = "cuda")]
pub use comm::Communicator;
#[cfg(feature = "cuda")]
pub use group::{open_group, GroupConfig};
#[cfg(feature = "cuda")]
pub use nccl::Nccl;
#[cfg(feature = "cuda")]
pub use rank_stream::RankStream;

#[cfg(feature = "cuda")]
pub(crate) fn dist_err(what: &'static str, msg: impl Into<String>) -> crate::Error {
    crate::Error::Backend { backend: what, msg: msg.into() }
}
