//! What every GPU backend's stream offers: kernel launches (through [`Launcher`]), memory from
//! a caching allocator, copies, and dense GEMMs.

use super::memory::{CachingAllocator, DeviceBuffer};
use super::types::*;
use super::Device;
use crate::error::Result;
use std::sync::Arc;

pub trait GpuStream: Launcher {
    fn device(&self) -> Device;
    /// The device's architecture: `sm_90`, `gfx90a`, ...
    fn arch(&self) -> String;
    /// Which compiled form of the kernels this stream loads.
    fn variant(&self) -> CodeVariant;
    fn allocator(&self) -> &Arc<CachingAllocator>;
    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        self.allocator().alloc(bytes)
    }
    /// Copies host bytes to the device; returns when the copy is done.
    ///
    /// # Safety
    /// `dst` must be a live device allocation of at least `src.len()` bytes.
    unsafe fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// Copies device bytes to the host after all work queued on the stream; returns when done.
    ///
    /// # Safety
    /// `src` must be a live device allocation of at least `dst.len()` bytes.
    unsafe fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()>;
    /// Copies `bytes` device bytes at `src` to the host after all queued work and hands them to
    /// `f` (a view valid during the call): a staging buffer the backend keeps, so that large
    /// copies neither run at pageable-memory speed nor fault in a fresh allocation each time.
    ///
    /// # Safety
    /// `src` must be a live device allocation of at least `bytes` bytes.
    unsafe fn with_host_copy(&self, src: u64, bytes: usize, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut v = vec![0u8; bytes];
        self.copy_dtoh(&mut v, src)?;
        f(&v)
    }
    /// Stream-ordered device-to-device copy.
    ///
    /// # Safety
    /// Both ranges must be live device allocations.
    unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// Stream-ordered byte fill.
    ///
    /// # Safety
    /// The range must be a live device allocation.
    unsafe fn memset_u8(&self, dst: u64, value: u8, bytes: usize) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// (free, total) bytes of device memory, as the driver reports them (`cuMemGetInfo`).
    fn mem_info(&self) -> Result<(usize, usize)> {
        Err(super::backend_err("gpu", "this stream cannot report device memory"))
    }
    /// Starts capturing the work queued on this stream into a graph (relaxed capture mode)
    /// instead of running it. Nothing may synchronize until [`GpuStream::end_capture`].
    fn begin_capture(&self) -> Result<()> {
        Err(super::backend_err("gpu", "this stream cannot capture graphs"))
    }
    /// Ends a capture and instantiates the graph; [`StreamGraph::replay`] runs it on this stream.
    fn end_capture(&self) -> Result<Box<dyn StreamGraph>> {
        Err(super::backend_err("gpu", "this stream cannot capture graphs"))
    }
    /// Records a timing event on the stream (stream-ordered): the device time between two of
    /// them is [`StreamEvent::ms_since`] (per-kernel breakdowns of a forward).
    fn record_event(&self) -> Result<Box<dyn StreamEvent>> {
        Err(super::backend_err("gpu", "this stream cannot record timing events"))
    }
    /// Multiprocessors (CUDA SMs, AMD CUs) of the device: sizes split-K and split-KV grids.
    fn sm_count(&self) -> Result<usize> {
        Err(super::backend_err("gpu", "this stream cannot report its multiprocessor count"))
    }
    /// Largest dynamic shared memory one block may request (bytes; NVIDIA: the opt-in limit, 227
    /// KiB on Hopper, 163 KiB on an A100, 99 KiB on Ada): sizes the kernels that adapt to it.
    fn max_shared_per_block(&self) -> Result<usize> {
        Err(super::backend_err("gpu", "this stream cannot report its shared memory per block"))
    }
    /// The TMA descriptor of `t` (NVIDIA sm_90+: cuTensorMapEncodeTiled).
    fn tensor_map(&self, _t: &TmaTiled) -> Result<TensorMap> {
        Err(super::backend_err("gpu", "this stream cannot encode TMA descriptors (NVIDIA sm_90 and later)"))
    }
    /// Whether a vendor BLAS (cuBLAS) backs [`GpuStream::blas_gemm_bf16`].
    fn has_blas(&self) -> bool {
        false
    }
    /// y[T, N] = x[T, K] · W[N, K]ᵀ with bf16 x and W, f32 accumulation, `out_f32` choosing the
    /// output type (f32 or bf16), through the vendor BLAS.
    ///
    /// # Safety
    /// Pointers must be live device allocations of the sizes given.
    #[allow(clippy::too_many_arguments)]
    unsafe fn blas_gemm_bf16(&self, _y: u64, _x: u64, _w: u64, _t: usize, _n: usize, _k: usize, _out_f32: bool) -> Result<()> {
        Err(super::backend_err("gpu", "no vendor BLAS on this stream"))
    }
    /// The same in f32 (f32 accumulation, no TF32) through the vendor BLAS.
    ///
    /// # Safety
    /// As [`GpuStream::blas_gemm_bf16`].
    unsafe fn blas_gemm_f32(&self, _y: u64, _x: u64, _w: u64, _t: usize, _n: usize, _k: usize) -> Result<()> {
        Err(super::backend_err("gpu", "no vendor BLAS on this stream"))
    }
    /// `batch` products c_z[M, N] = a_z[M, K] · b_z[N, K]ᵀ of bf16 operands (row-major views:
    /// row stride `ld`, matrix z at `ptr + z·batch_stride` elements), f32 accumulation, c in f32
    /// or bf16, through the vendor BLAS.
    ///
    /// # Safety
    /// Every view must lie inside a live device allocation.
    #[allow(clippy::too_many_arguments)]
    unsafe fn blas_gemm_bf16_batched(&self, _c: BlasBatched, _a: BlasBatched, _b: BlasBatched, _m: usize, _n: usize, _k: usize, _batch: usize, _out_f32: bool) -> Result<()> {
        Err(super::backend_err("gpu", "no vendor BLAS on this stream"))
    }
}

/// A strided batch of row-major matrices for [`GpuStream::blas_gemm_bf16_batched`]: the first
/// at device address `ptr`, rows `ld` elements apart, matrix z at `z·batch_stride` elements.
#[derive(Clone, Copy, Debug)]
pub struct BlasBatched {
    pub ptr: u64,
    pub ld: usize,
    pub batch_stride: usize,
}

/// A timing event recorded on a stream.
pub trait StreamEvent: Send {
    /// Milliseconds of device time from `earlier` (recorded on the same stream) to this event;
    /// waits until this event has happened.
    fn ms_since(&self, earlier: &dyn StreamEvent) -> Result<f32>;
    /// The vendor's event handle (what `ms_since` of the same backend reads).
    fn handle(&self) -> usize;
}

/// An instantiated graph captured from a stream. It reads and writes the device addresses that
/// the captured work used: every buffer it touches must stay allocated while it can be replayed,
/// and it must be dropped before its stream.
pub trait StreamGraph: Send {
    /// Launches the graph on the stream it was captured from (stream-ordered, asynchronous).
    fn replay(&self) -> Result<()>;
}
