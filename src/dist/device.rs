//! The vendor-specific pieces of the distributed layer, behind one trait: [`CommStream`] is what
//! [`super::Communicator`], the custom all-reduce and NCCL / RCCL need of a GPU stream beyond
//! [`GpuStream`] — making its device current, peer access between local GPUs, memory for
//! cross-GPU flags, the raw stream handle NCCL / RCCL take, and graph capture of several streams
//! at once. [`crate::backend::cuda::CudaStream`] (feature `cuda`) and
//! [`crate::backend::hip::HipStream`] (feature `hip`) implement it; everything else in `dist` is
//! written once against it.
//!
//! A communicator holds the GPUs of one vendor. Which one: [`local_vendor`] (the only backend
//! built, else CUDA when CUDA devices are present, else HIP), or the caller's choice
//! ([`super::Communicator::with_vendor`]).

use crate::backend::stream::StreamGraph;
use crate::backend::{CodeVariant, DeviceBuffer, GpuStream, Vendor};
use crate::error::Result;
use std::any::Any;
use std::ffi::c_void;

/// What the distributed layer needs of a vendor's stream beyond [`GpuStream`].
pub trait CommStream: GpuStream + Send + Sync {
    /// The device's ordinal (`cuda:N` / `hip:N`).
    fn ordinal(&self) -> usize;
    /// Makes this stream's device current on the calling thread (CUDA: binds its primary context;
    /// HIP: `hipSetDevice`). NCCL / RCCL calls act on the current device.
    fn make_current(&self) -> Result<()>;
    /// Whether this GPU can read and write `peer`'s memory at `peer`'s addresses.
    fn can_access_peer(&self, peer: &dyn CommStream) -> Result<bool>;
    /// Maps `peer`'s memory (present and future allocations) into this GPU's address space;
    /// already enabled is success.
    fn enable_peer_access(&self, peer: &dyn CommStream) -> Result<()>;
    /// `bytes` of device memory that kernels on peer GPUs poll and update with system-scope
    /// atomics while kernels run (barrier flags, push receive buffers). Ordinary device memory on
    /// NVIDIA; fine-grained (or uncached) memory on AMD, where `hipMalloc` memory is coarse-grained
    /// and a peer's polls need not see its stores before a kernel boundary.
    fn alloc_signal(&self, bytes: usize) -> Result<DeviceBuffer>;
    /// The raw stream handle (`CUstream` = `cudaStream_t`, `hipStream_t`) for NCCL / RCCL.
    fn raw_stream(&self) -> *mut c_void;
    /// Starts capturing this stream's work into a graph, in relaxed mode (several streams are
    /// captured at once, and the work queued between may call capture-unsafe APIs on other
    /// streams).
    fn capture_begin(&self) -> Result<()>;
    /// Ends the capture begun by [`CommStream::capture_begin`]; the graph is not instantiated yet
    /// (every rank's capture ends before any is instantiated).
    fn capture_end(&self) -> Result<Box<dyn CapturedGraph>>;
    /// For downcasting a peer to the concrete stream type of this vendor.
    fn as_any(&self) -> &dyn Any;
}

/// A graph captured from one rank's stream, not instantiated yet; dropping it destroys it.
pub trait CapturedGraph: Send {
    /// Instantiates the graph; the result replays it on the stream it was captured from, and when
    /// dropped waits for that stream, then destroys the graph.
    fn instantiate(self: Box<Self>) -> Result<Box<dyn StreamGraph>>;
}

/// The vendor whose kernels a [`CodeVariant`] names (`None` for [`CodeVariant::Auto`]).
pub fn variant_vendor(v: &CodeVariant) -> Option<Vendor> {
    match v {
        CodeVariant::Auto => None,
        CodeVariant::CodeObject(_) => Some(Vendor::Hip),
        CodeVariant::Cubin(_) | CodeVariant::Ptx(_) | CodeVariant::Nvrtc => Some(Vendor::Cuda),
    }
}

/// The vendor of this machine's GPUs for a communicator: the only GPU backend this build has;
/// with both, CUDA when a CUDA driver reports devices, else HIP.
pub fn local_vendor() -> Result<Vendor> {
    #[cfg(all(feature = "cuda", not(feature = "hip")))]
    return Ok(Vendor::Cuda);
    #[cfg(all(feature = "hip", not(feature = "cuda")))]
    return Ok(Vendor::Hip);
    #[cfg(all(feature = "cuda", feature = "hip"))]
    {
        let cuda = crate::backend::cuda::device_count();
        if matches!(cuda, Ok(n) if n > 0) {
            return Ok(Vendor::Cuda);
        }
        match crate::backend::hip::device_count() {
            Ok(n) if n > 0 => Ok(Vendor::Hip),
            hip => Err(super::dist_err(
                "dist",
                format!(
                    "no GPU for a communicator: CUDA {}, HIP {}",
                    cuda.map(|n| format!("{n} device(s)")).unwrap_or_else(|e| e.to_string()),
                    hip.map(|n| format!("{n} device(s)")).unwrap_or_else(|e| e.to_string())
                ),
            )),
        }
    }
}

/// GPUs of `vendor` on this machine.
pub fn device_count(vendor: Vendor) -> Result<usize> {
    match vendor {
        #[cfg(feature = "cuda")]
        Vendor::Cuda => crate::backend::cuda::device_count(),
        #[cfg(feature = "hip")]
        Vendor::Hip => crate::backend::hip::device_count(),
        #[allow(unreachable_patterns)]
        v => Err(not_built(v)),
    }
}

/// A stream on GPU `ordinal` of `vendor`, loading kernels in `variant`.
pub fn open(vendor: Vendor, ordinal: usize, variant: CodeVariant) -> Result<Box<dyn CommStream>> {
    match vendor {
        #[cfg(feature = "cuda")]
        Vendor::Cuda => Ok(Box::new(crate::backend::cuda::CudaStream::with_variant(ordinal, variant)?)),
        #[cfg(feature = "hip")]
        Vendor::Hip => Ok(Box::new(crate::backend::hip::HipStream::with_variant(ordinal, variant)?)),
        #[allow(unreachable_patterns)]
        v => {
            let _ = (ordinal, variant);
            Err(not_built(v))
        }
    }
}

#[allow(dead_code)] // unused when both backends are built
fn not_built(v: Vendor) -> crate::Error {
    let feature = if v == Vendor::Cuda { "cuda" } else { "hip" };
    super::dist_err("dist", format!("this build of dsv3 has no {v} backend (build with --features {feature})"))
}

/// `peer` as the concrete stream type `S` (one communicator holds one vendor's GPUs).
#[allow(dead_code)] // unused when neither backend is built
fn peer_as<'a, S: 'static>(me: &dyn GpuStream, peer: &'a dyn CommStream) -> Result<&'a S> {
    peer.as_any().downcast_ref::<S>().ok_or_else(|| super::dist_err("dist", format!("{} and {} are GPUs of different vendors", me.device(), peer.device())))
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{peer_as, CapturedGraph, CommStream};
    use crate::backend::cuda::CudaStream;
    use crate::backend::stream::StreamGraph;
    use crate::backend::{DeviceBuffer, GpuStream};
    use crate::dist::dist_err;
    use crate::error::Result;
    use cudarc::driver::{result, sys, CudaContext};
    use std::any::Any;
    use std::ffi::c_void;
    use std::sync::Arc;

    const B: &str = "dist";

    fn drv(what: impl std::fmt::Display, r: sys::CUresult) -> Result<()> {
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            Err(dist_err(B, format!("{what}: {r:?}")))
        }
    }

    impl CommStream for CudaStream {
        fn ordinal(&self) -> usize {
            self.context().ordinal()
        }
        fn make_current(&self) -> Result<()> {
            self.context().bind_to_thread().map_err(|e| dist_err(B, format!("bind cuda:{}: {e:?}", self.context().ordinal())))
        }
        fn can_access_peer(&self, peer: &dyn CommStream) -> Result<bool> {
            let p: &CudaStream = peer_as(self, peer)?;
            let mut can = 0i32;
            drv(
                format!("cuDeviceCanAccessPeer({}, {})", CommStream::ordinal(self), CommStream::ordinal(p)),
                unsafe { sys::cuDeviceCanAccessPeer(&mut can, self.context().cu_device(), p.context().cu_device()) },
            )?;
            Ok(can != 0)
        }
        fn enable_peer_access(&self, peer: &dyn CommStream) -> Result<()> {
            let p: &CudaStream = peer_as(self, peer)?;
            self.make_current()?;
            let r = unsafe { sys::cuCtxEnablePeerAccess(p.context().cu_ctx(), 0) };
            if r != sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED {
                drv(format!("cuCtxEnablePeerAccess(cuda:{} -> cuda:{})", CommStream::ordinal(self), CommStream::ordinal(p)), r)?;
            }
            Ok(())
        }
        fn alloc_signal(&self, bytes: usize) -> Result<DeviceBuffer> {
            // Peers' ld.acquire.sys / st.release.sys on ordinary device memory are coherent.
            self.alloc(bytes)
        }
        fn raw_stream(&self) -> *mut c_void {
            self.cu_stream() as *mut c_void
        }
        fn capture_begin(&self) -> Result<()> {
            self.context().bind_to_thread().map_err(|e| dist_err(B, format!("bind: {e:?}")))?;
            unsafe { result::stream::begin_capture(self.cu_stream(), sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED) }
                .map_err(|e| dist_err(B, format!("cuStreamBeginCapture on cuda:{}: {e:?}", CommStream::ordinal(self))))
        }
        fn capture_end(&self) -> Result<Box<dyn CapturedGraph>> {
            let _ = self.context().bind_to_thread();
            let graph = unsafe { result::stream::end_capture(self.cu_stream()) }
                .map_err(|e| dist_err(B, format!("cuStreamEndCapture on cuda:{}: {e:?}", CommStream::ordinal(self))))?;
            Ok(Box::new(Captured { ctx: self.context().clone(), stream: self.cu_stream(), graph: Some(graph) }))
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    struct Captured {
        ctx: Arc<CudaContext>,
        stream: sys::CUstream,
        graph: Option<sys::CUgraph>,
    }

    // The raw handles are only used through the driver, which is thread-safe.
    unsafe impl Send for Captured {}

    impl CapturedGraph for Captured {
        fn instantiate(mut self: Box<Self>) -> Result<Box<dyn StreamGraph>> {
            let _ = self.ctx.bind_to_thread();
            let g = self.graph.ok_or_else(|| dist_err(B, "graph already instantiated"))?;
            let exec = unsafe { result::graph::instantiate(g, sys::CUgraphInstantiate_flags(0)) }
                .map_err(|e| dist_err(B, format!("cuGraphInstantiate on cuda:{}: {e:?}", self.ctx.ordinal())))?;
            self.graph = None;
            Ok(Box::new(RankGraph { ctx: self.ctx.clone(), stream: self.stream, graph: g, exec }))
        }
    }

    impl Drop for Captured {
        fn drop(&mut self) {
            if let Some(g) = self.graph.take() {
                let _ = self.ctx.bind_to_thread();
                unsafe {
                    let _ = result::graph::destroy(g);
                }
            }
        }
    }

    /// An instantiated graph of one rank.
    struct RankGraph {
        ctx: Arc<CudaContext>,
        stream: sys::CUstream,
        graph: sys::CUgraph,
        exec: sys::CUgraphExec,
    }

    unsafe impl Send for RankGraph {}

    impl StreamGraph for RankGraph {
        fn replay(&self) -> Result<()> {
            self.ctx.bind_to_thread().map_err(|e| dist_err(B, format!("bind: {e:?}")))?;
            unsafe { result::graph::launch(self.exec, self.stream) }.map_err(|e| dist_err(B, format!("cuGraphLaunch on cuda:{}: {e:?}", self.ctx.ordinal())))
        }
    }

    impl Drop for RankGraph {
        fn drop(&mut self) {
            let _ = self.ctx.bind_to_thread();
            unsafe {
                let _ = result::stream::synchronize(self.stream);
                let _ = result::graph::exec_destroy(self.exec);
                let _ = result::graph::destroy(self.graph);
            }
        }
    }
}

#[cfg(feature = "hip")]
mod hip {
    use super::{peer_as, CapturedGraph, CommStream};
    use crate::backend::hip::{check, HipStream};
    use crate::backend::stream::StreamGraph;
    use crate::backend::DeviceBuffer;
    use crate::error::Result;
    use hip_sys::hiprt as h;
    use std::any::Any;
    use std::ffi::c_void;

    impl CommStream for HipStream {
        fn ordinal(&self) -> usize {
            HipStream::ordinal(self)
        }
        fn make_current(&self) -> Result<()> {
            HipStream::make_current(self)
        }
        fn can_access_peer(&self, peer: &dyn CommStream) -> Result<bool> {
            let p: &HipStream = peer_as(self, peer)?;
            let (a, b) = (HipStream::ordinal(self), HipStream::ordinal(p));
            let mut can = 0;
            unsafe { check(format!("hipDeviceCanAccessPeer({a}, {b})"), h::hipDeviceCanAccessPeer(&mut can, a as i32, b as i32))? };
            Ok(can != 0)
        }
        fn enable_peer_access(&self, peer: &dyn CommStream) -> Result<()> {
            let p: &HipStream = peer_as(self, peer)?;
            HipStream::make_current(self)?;
            let e = unsafe { h::hipDeviceEnablePeerAccess(HipStream::ordinal(p) as i32, 0) };
            if e == h::hipError_t::hipErrorPeerAccessAlreadyEnabled {
                // Not an error here; keep it out of hipGetLastError.
                let _ = unsafe { h::hipGetLastError() };
                return Ok(());
            }
            check(format!("hipDeviceEnablePeerAccess(hip:{} -> hip:{})", HipStream::ordinal(self), HipStream::ordinal(p)), e)
        }
        fn alloc_signal(&self, bytes: usize) -> Result<DeviceBuffer> {
            HipStream::alloc_signal(self, bytes)
        }
        fn raw_stream(&self) -> *mut c_void {
            self.hip_stream() as *mut c_void
        }
        fn capture_begin(&self) -> Result<()> {
            HipStream::make_current(self)?;
            unsafe {
                check(
                    format!("hipStreamBeginCapture on hip:{}", HipStream::ordinal(self)),
                    h::hipStreamBeginCapture(self.hip_stream(), h::hipStreamCaptureMode::hipStreamCaptureModeRelaxed),
                )
            }
        }
        fn capture_end(&self) -> Result<Box<dyn CapturedGraph>> {
            let _ = HipStream::make_current(self);
            let mut graph: h::hipGraph_t = std::ptr::null_mut();
            unsafe { check(format!("hipStreamEndCapture on hip:{}", HipStream::ordinal(self)), h::hipStreamEndCapture(self.hip_stream(), &mut graph))? };
            Ok(Box::new(Captured { ordinal: HipStream::ordinal(self) as i32, stream: self.hip_stream(), graph }))
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    struct Captured {
        ordinal: i32,
        stream: h::hipStream_t,
        /// Null once instantiated (the instantiated graph owns it then).
        graph: h::hipGraph_t,
    }

    // The raw handles are only used through the HIP runtime, which is thread-safe.
    unsafe impl Send for Captured {}

    impl CapturedGraph for Captured {
        fn instantiate(mut self: Box<Self>) -> Result<Box<dyn StreamGraph>> {
            let mut exec: h::hipGraphExec_t = std::ptr::null_mut();
            unsafe {
                check("hipSetDevice", h::hipSetDevice(self.ordinal))?;
                check(
                    format!("hipGraphInstantiate on hip:{}", self.ordinal),
                    h::hipGraphInstantiate(&mut exec, self.graph, std::ptr::null_mut(), std::ptr::null_mut(), 0),
                )?;
            }
            let graph = std::mem::replace(&mut self.graph, std::ptr::null_mut());
            Ok(Box::new(RankGraph { ordinal: self.ordinal, stream: self.stream, graph, exec }))
        }
    }

    impl Drop for Captured {
        fn drop(&mut self) {
            if !self.graph.is_null() {
                unsafe {
                    let _ = h::hipSetDevice(self.ordinal);
                    let _ = h::hipGraphDestroy(self.graph);
                }
            }
        }
    }

    /// An instantiated graph of one rank.
    struct RankGraph {
        ordinal: i32,
        stream: h::hipStream_t,
        graph: h::hipGraph_t,
        exec: h::hipGraphExec_t,
    }

    unsafe impl Send for RankGraph {}

    impl StreamGraph for RankGraph {
        fn replay(&self) -> Result<()> {
            unsafe {
                check("hipSetDevice", h::hipSetDevice(self.ordinal))?;
                check(format!("hipGraphLaunch on hip:{}", self.ordinal), h::hipGraphLaunch(self.exec, self.stream))
            }
        }
    }

    impl Drop for RankGraph {
        fn drop(&mut self) {
            unsafe {
                let _ = h::hipSetDevice(self.ordinal);
                let _ = h::hipStreamSynchronize(self.stream);
                let _ = h::hipGraphExecDestroy(self.exec);
                let _ = h::hipGraphDestroy(self.graph);
            }
        }
    }
}
