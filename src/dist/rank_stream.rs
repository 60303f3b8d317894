//! [`RankStream`]: local rank `i`'s stream of a [`Communicator`] as a [`GpuStream`], so that a
//! model shard ([`crate::model::gpu::GpuModel::load_shard`]) queues its kernels on the very
//! stream that the all-reduce of that rank runs on (stream order is what makes the collective
//! read finished partial sums). It delegates every call to that stream (CUDA or HIP); the
//! communicator lives as long as the shards that use it.

use super::comm::Communicator;
use super::device::CommStream;
use crate::backend::stream::{BlasBatched, StreamEvent, StreamGraph};
use crate::backend::{CachingAllocator, CodeVariant, Device, GpuStream, KernelInfo, LaunchCfg, Launcher, TensorMap, TmaTiled, Vendor};
use crate::error::Result;
use std::ffi::c_void;
use std::sync::Arc;

pub struct RankStream {
    comm: Arc<Communicator>,
    rank: usize,
}

impl RankStream {
    /// Local rank `rank`'s stream of `comm`.
    pub fn new(comm: Arc<Communicator>, rank: usize) -> Result<RankStream> {
        if rank >= comm.local_size() {
            return Err(super::dist_err("dist", format!("local rank {rank} of a communicator of {} GPU(s)", comm.local_size())));
        }
        Ok(RankStream { comm, rank })
    }

    fn s(&self) -> &dyn CommStream {
        self.comm.stream(self.rank)
    }
}

impl Launcher for RankStream {
    fn vendor(&self) -> Vendor {
        self.s().vendor()
    }
    unsafe fn launch(&self, kernel: &'static KernelInfo, cfg: LaunchCfg, params: &mut [*mut c_void]) -> Result<()> {
        self.s().launch(kernel, cfg, params)
    }
    fn max_active_clusters(&self, kernel: &'static KernelInfo, cfg: &LaunchCfg) -> Result<usize> {
        self.s().max_active_clusters(kernel, cfg)
    }
}

impl GpuStream for RankStream {
    fn device(&self) -> Device {
        self.s().device()
    }
    fn arch(&self) -> String {
        self.s().arch()
    }
    fn variant(&self) -> CodeVariant {
        self.s().variant()
    }
    fn allocator(&self) -> &Arc<CachingAllocator> {
        self.s().allocator()
    }
    unsafe fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.s().copy_htod(dst, src)
    }
    unsafe fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.s().copy_dtoh(dst, src)
    }
    unsafe fn with_host_copy(&self, src: u64, bytes: usize, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.s().with_host_copy(src, bytes, f)
    }
    unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.s().copy_dtod(dst, src, bytes)
    }
    unsafe fn memset_u8(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        self.s().memset_u8(dst, value, bytes)
    }
    fn synchronize(&self) -> Result<()> {
        self.s().synchronize()
    }
    fn mem_info(&self) -> Result<(usize, usize)> {
        self.s().mem_info()
    }
    fn begin_capture(&self) -> Result<()> {
        self.s().begin_capture()
    }
    fn end_capture(&self) -> Result<Box<dyn StreamGraph>> {
        self.s().end_capture()
    }
    fn has_blas(&self) -> bool {
        self.s().has_blas()
    }
    unsafe fn blas_gemm_bf16(&self, y: u64, x: u64, w: u64, t: usize, n: usize, k: usize, out_f32: bool) -> Result<()> {
        self.s().blas_gemm_bf16(y, x, w, t, n, k, out_f32)
    }
    unsafe fn blas_gemm_f32(&self, y: u64, x: u64, w: u64, t: usize, n: usize, k: usize) -> Result<()> {
        self.s().blas_gemm_f32(y, x, w, t, n, k)
    }
    unsafe fn blas_gemm_bf16_batched(&self, c: BlasBatched, a: BlasBatched, b: BlasBatched, m: usize, n: usize, k: usize, batch: usize, out_f32: bool) -> Result<()> {
        self.s().blas_gemm_bf16_batched(c, a, b, m, n, k, batch, out_f32)
    }
    fn sm_count(&self) -> Result<usize> {
        self.s().sm_count()
    }
    fn tensor_map(&self, t: &TmaTiled) -> Result<TensorMap> {
        self.s().tensor_map(t)
    }
    fn record_event(&self) -> Result<Box<dyn StreamEvent>> {
        self.s().record_event()
    }
}
