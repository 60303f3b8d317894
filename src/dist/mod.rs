//! Distributed execution: one process per node drives all of that node's GPUs
//! (`docs/MULTI_GPU.md` says why).
//!
//! - [`rendezvous`]: TCP rendezvous of the nodes (`--dist-init-addr`, `--nnodes`, `--node-rank`,
//!   `--dist-timeout`): exchanges GPU counts and the NCCL unique id; failures are one line on
//!   every node, never a hang. Pure `std::net`: always built, tested on the CPU.
//! - [`policy`]: which all-reduce algorithm a message takes (custom one-shot / two-shot, or
//!   NCCL), from its size, the world size, peer access and the node count. Always built.
//! - `device` (features `cuda`, `hip`): [`CommStream`], the vendor-specific pieces (peer access,
//!   flag memory, the raw stream for NCCL / RCCL, graph capture) for CUDA and HIP streams; every
//!   module below is written once against it and builds with either backend or both.
//! - `comm`: [`Communicator`] over the local GPUs of this process (one stream per GPU, peer
//!   access between them; one vendor per communicator).
//! - `allreduce`: the custom all-reduce over peer memory (generated kernels of
//!   `kernels/allreduce.cuh`, CUDA and HIP), graph safe, and [`AllReduce`], the dispatcher that
//!   falls back to NCCL / RCCL.
//! - `nccl`: NCCL or RCCL (same C API) loaded at run time (`libnccl.so.2`, `librccl.so.1`, ...),
//!   one communicator per local GPU, group calls.
//! - `group`: [`open_group`], this node's communicator and all-reduce from the launch flags
//!   (rendezvous + NCCL / RCCL across nodes).
//! - `rank_stream`: [`RankStream`], a rank's communicator stream as the `GpuStream` a model
//!   shard runs on.
//!
//! On AMD, `device` through `rank_stream` are compile-tested only (no AMD GPU at hand); `docs/MULTI_GPU.md`
//! ("AMD / RCCL") says what that covers.

pub mod policy;
pub mod rendezvous;

#[cfg(any(feature = "cuda", feature = "hip"))]
pub mod allreduce;
#[cfg(any(feature = "cuda", feature = "hip"))]
pub mod comm;
#[cfg(any(feature = "cuda", feature = "hip"))]
pub mod device;
#[cfg(any(feature = "cuda", feature = "hip"))]
pub mod group;
#[cfg(any(feature = "cuda", feature = "hip"))]
pub mod nccl;
#[cfg(any(feature = "cuda", feature = "hip"))]
pub mod rank_stream;

pub use policy::{choose, Algo, Policy};
pub use rendezvous::{rendezvous, RendezvousConfig, RendezvousInfo, RendezvousServer};

#[cfg(any(feature = "cuda", feature = "hip"))]
pub use allreduce::{AllReduce, CustomAllReduce};
#[cfg(any(feature = "cuda", feature = "hip"))]
pub use comm::Communicator;
#[cfg(any(feature = "cuda", feature = "hip"))]
pub use device::CommStream;
#[cfg(any(feature = "cuda", feature = "hip"))]
pub use group::{open_group, open_group_on, GroupConfig};
#[cfg(any(feature = "cuda", feature = "hip"))]
pub use nccl::Nccl;
#[cfg(any(feature = "cuda", feature = "hip"))]
pub use rank_stream::RankStream;

#[cfg(any(feature = "cuda", feature = "hip"))]
pub(crate) fn dist_err(what: &'static str, msg: impl Into<String>) -> crate::Error {
    crate::Error::Backend { backend: what, msg: msg.into() }
}
