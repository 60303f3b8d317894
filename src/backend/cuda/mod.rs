//! CUDA backend: cudarc 0.19 with dynamic loading (a binary built with `--features cuda` runs on
//! a machine without CUDA and reports "no CUDA driver" when a CUDA device is asked for).
//!
//! A [`CudaStream`] owns a non-blocking stream on a device's primary context, a caching
//! allocator, the kernel modules it loaded (one per family, in the [`CodeVariant`] it was opened
//! with) and a cuBLAS handle for bf16 GEMMs. Every driver call and launch is checked.

mod nvrtc;

use super::memory::{CachingAllocator, RawAllocator};
use super::registry::{KERNELS, MODULES};
use super::stream::{BlasBatched, GpuStream};
use super::types::*;
use super::{backend_err, Device};
use crate::error::Result;
use cudarc::driver::{result, sys, CudaContext};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

const B: &str = "cuda";

fn derr(what: impl std::fmt::Display, e: result::DriverError) -> crate::Error {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let msg = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    backend_err(B, format!("{what}: {name} ({msg})"))
}

/// Whether the CUDA driver library (libcuda) can be loaded on this machine.
pub fn driver_present() -> bool {
    unsafe { sys::is_culib_present() }
}

/// Number of CUDA devices; an error says why there are none.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(backend_err(B, "no CUDA driver: libcuda.so could not be loaded on this machine"));
    }
    result::init().map_err(|e| derr("cuInit", e))?;
    let n = result::device::get_count().map_err(|e| derr("cuDeviceGetCount", e))?;
    Ok(n as usize)
}

struct CudaRaw {
    ctx: Arc<CudaContext>,
}

impl RawAllocator for CudaRaw {
    fn backend(&self) -> &'static str {
        B
    }
    fn raw_alloc(&self, bytes: usize) -> Result<u64> {
        self.ctx.bind_to_thread().map_err(|e| derr("bind context", e))?;
        unsafe { result::malloc_sync(bytes) }.map_err(|e| derr(format!("cuMemAlloc({bytes} bytes)"), e))
    }
    unsafe fn raw_free(&self, ptr: u64) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| derr("bind context", e))?;
        result::free_sync(ptr).map_err(|e| derr("cuMemFree", e))
    }
}

struct Loaded {
    modules: HashMap<usize, sys::CUmodule>,
    functions: HashMap<usize, sys::CUfunction>,
}

pub struct CudaStream {
    ctx: Arc<CudaContext>,
    stream: sys::CUstream,
    ordinal: usize,
    cc: (i32, i32),
    variant: CodeVariant,
    loaded: Mutex<Loaded>,
    alloc: Arc<CachingAllocator>,
    blas: Mutex<Option<cudarc::cublas::sys::cublasHandle_t>>,
    /// Page-locked staging for large device-to-host copies (the logits of a batch): a copy into
    /// pageable memory runs at a fraction of the link's bandwidth. (pointer, bytes).
    pinned: Mutex<(usize, usize)>,
    /// Launch with programmatic dependent launch ([`pdl_enabled`]).
    pdl: bool,
    /// Multiprocessors, queried once: every stream-K / persistent launch sizes its grid by it.
    sms: usize,
}

/// Whether launches on a device of compute capability `cc` carry the programmatic-dependent-launch
/// attribute: sm_90+ (where every generated entry point begins with `griddepcontrol.wait`, see
/// `grid_dependency_sync` in kernels/include/dsv3/platform.h), unless `DSV3_PDL=0`. A kernel may
/// then be scheduled while its predecessor in the stream finishes (launch latency and prologue
/// hidden), and still reads nothing before the predecessor has completed.
pub fn pdl_enabled(cc: (i32, i32)) -> bool {
    cc.0 >= 9 && std::env::var("DSV3_PDL").map(|v| v != "0").unwrap_or(true)
}

/// A kernel-tuning aid: with `DSV3_KERNEL_OVERRIDE_DIR` set, a `<family>.cubin` (or `.fatbin`)
/// there replaces that family's embedded image in [`CodeVariant::Auto`] — variants compiled with
/// nvcc from edited sources are timed by the unchanged executables (same entry points and
/// signatures required: the manifest's).
fn module_override(family: &str) -> Option<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(std::env::var_os("DSV3_KERNEL_OVERRIDE_DIR")?);
    ["cubin", "fatbin"].iter().map(|ext| dir.join(format!("{family}.{ext}"))).find(|p| p.is_file())
}

/// Device-to-host copies at least this large go through the pinned staging buffer.
const PINNED_MIN_BYTES: usize = 1 << 20;

// The raw handles are used behind the mutexes / by the driver, which is thread-safe.
unsafe impl Send for CudaStream {}
unsafe impl Sync for CudaStream {}

impl CudaStream {
    /// A stream on device `ordinal`, loading kernels in [`CodeVariant::Auto`].
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_variant(ordinal, CodeVariant::Auto)
    }

    pub fn with_variant(ordinal: usize, variant: CodeVariant) -> Result<Self> {
        let n = device_count()?;
        if n == 0 {
            return Err(backend_err(B, "no CUDA device: the driver reports 0 devices"));
        }
        if ordinal >= n {
            return Err(backend_err(B, format!("no CUDA device {ordinal}: {n} device(s) present")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| derr(format!("context on device {ordinal}"), e))?;
        ctx.bind_to_thread().map_err(|e| derr("bind context", e))?;
        let cc = ctx.compute_capability().map_err(|e| derr("compute capability", e))?;
        let sms = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| backend_err(B, format!("cuDeviceGetAttribute(MULTIPROCESSOR_COUNT): {e:?}")))? as usize;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking).map_err(|e| derr("cuStreamCreate", e))?;
        let alloc = CachingAllocator::new(Box::new(CudaRaw { ctx: ctx.clone() }));
        Ok(CudaStream {
            ctx,
            stream,
            ordinal,
            cc,
            variant,
            loaded: Mutex::new(Loaded { modules: HashMap::new(), functions: HashMap::new() }),
            alloc,
            blas: Mutex::new(None),
            pinned: Mutex::new((0, 0)),
            pdl: pdl_enabled(cc),
            sms,
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream
    }
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }
    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_default()
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| derr("bind context", e))
    }

    /// The image bytes (NUL-padded, 8-byte aligned) this stream loads for module `m`.
    fn module_image(&self, m: usize) -> Result<Vec<u64>> {
        let info = &MODULES[m];
        let pick = |arch: &str, kind: ImageKind| {
            info.image(Vendor::Cuda, arch, kind).ok_or_else(|| {
                let have: Vec<String> = info.images.iter().filter(|i| i.vendor == Vendor::Cuda).map(|i| format!("{} {:?}", i.arch, i.kind)).collect();
                backend_err(B, format!("module {}: no {kind:?} for {arch} embedded (this build has: {have:?}; see DSV3_CUDA_ARCHS)", info.family))
            })
        };
        let bytes: Vec<u8> = match &self.variant {
            CodeVariant::Auto => match (module_override(info.family), info.image(Vendor::Cuda, "all", ImageKind::Fatbin)) {
                (Some(path), _) => {
                    tracing::warn!("module {}: loading {} instead of the embedded image (DSV3_KERNEL_OVERRIDE_DIR)", info.family, path.display());
                    std::fs::read(&path).map_err(|e| backend_err(B, format!("module override {}: {e}", path.display())))?
                }
                (None, Some(i)) => i.bytes.to_vec(),
                (None, None) => nvrtc::compile(info, self.cc)?,
            },
            CodeVariant::Cubin(a) => pick(a, ImageKind::Cubin)?.bytes.to_vec(),
            CodeVariant::Ptx(a) => pick(a, ImageKind::Ptx)?.bytes.to_vec(),
            CodeVariant::Nvrtc => nvrtc::compile(info, self.cc)?,
            CodeVariant::CodeObject(_) => return Err(backend_err(B, "code objects are AMD images; use Auto, Cubin, Ptx or Nvrtc")),
        };
        let mut words = vec![0u64; bytes.len() / 8 + 2];
        // SAFETY: words has room for bytes plus at least 8 zero bytes (PTX needs a NUL).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr() as *mut u8, bytes.len()) };
        Ok(words)
    }

    /// The function of registry kernel `k` (loading its module on first use).
    pub fn function(&self, kernel: &'static KernelInfo) -> Result<sys::CUfunction> {
        let k = KERNELS.iter().position(|x| std::ptr::eq(x, kernel)).ok_or_else(|| backend_err(B, format!("{} is not a registry kernel", kernel.name)))?;
        let mut l = self.loaded.lock().unwrap();
        if let Some(f) = l.functions.get(&k) {
            return Ok(*f);
        }
        self.bind()?;
        let module = match l.modules.get(&kernel.module) {
            Some(m) => *m,
            None => {
                let img = self.module_image(kernel.module)?;
                let m = unsafe { result::module::load_data(img.as_ptr() as *const c_void) }.map_err(|e| {
                    derr(format!("loading module {} ({}) on {} (sm_{}{})", MODULES[kernel.module].family, self.variant, self.name(), self.cc.0, self.cc.1), e)
                })?;
                l.modules.insert(kernel.module, m);
                m
            }
        };
        let sym = CString::new(kernel.symbol).unwrap();
        let f = unsafe { result::module::get_function(module, sym) }.map_err(|e| derr(format!("function {}", kernel.symbol), e))?;
        l.functions.insert(k, f);
        Ok(f)
    }

    fn blas_handle(&self) -> Result<cudarc::cublas::sys::cublasHandle_t> {
        let mut h = self.blas.lock().unwrap();
        if let Some(h) = *h {
            return Ok(h);
        }
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(backend_err(B, "cuBLAS library (libcublas) not found"));
        }
        self.bind()?;
        let handle = cudarc::cublas::result::create_handle().map_err(|e| backend_err(B, format!("cublasCreate: {e:?}")))?;
        unsafe { cudarc::cublas::result::set_stream(handle, self.stream as _) }.map_err(|e| backend_err(B, format!("cublasSetStream: {e:?}")))?;
        *h = Some(handle);
        Ok(handle)
    }
}

impl Drop for CudaStream {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        unsafe {
            let _ = result::stream::synchronize(self.stream);
            if let Some(h) = self.blas.lock().unwrap().take() {
                let _ = cudarc::cublas::result::destroy_handle(h);
            }
            let (ptr, _) = *self.pinned.lock().unwrap();
            if ptr != 0 {
                let _ = result::free_host(ptr as *mut c_void);
            }
            for (_, m) in self.loaded.lock().unwrap().modules.drain() {
                let _ = result::module::unload(m);
            }
            let _ = self.alloc.empty_cache();
            let _ = result::stream::destroy(self.stream);
        }
    }
}

/// A graph captured from a [`CudaStream`], replayed on it.
struct CudaGraph {
    ctx: Arc<CudaContext>,
    stream: sys::CUstream,
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
}

// The raw handles are only used through the thread-safe driver.
unsafe impl Send for CudaGraph {}

impl super::stream::StreamGraph for CudaGraph {
    fn replay(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| derr("bind context", e))?;
        unsafe { sys::cuGraphLaunch(self.exec, self.stream) }.result().map_err(|e| derr("cuGraphLaunch", e))
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        unsafe {
            let _ = sys::cuGraphExecDestroy(self.exec);
            let _ = sys::cuGraphDestroy(self.graph);
        }
    }
}

impl Launcher for CudaStream {
    fn vendor(&self) -> Vendor {
        Vendor::Cuda
    }
    unsafe fn launch(&self, kernel: &'static KernelInfo, cfg: LaunchCfg, params: &mut [*mut c_void]) -> Result<()> {
        check_launch(kernel, &cfg, params.len())?;
        let f = self.prepared_function(kernel, &cfg)?;
        let what = || format!("launch {} grid {:?} block {:?} smem {} cluster {}", kernel.name, cfg.grid, cfg.block, cfg.shared_mem, cfg.cluster);
        let mut attrs = launch_attributes(cfg.cluster, self.pdl);
        if attrs.is_empty() {
            return result::launch_kernel(f, cfg.grid, cfg.block, cfg.shared_mem, self.stream, params).map_err(|e| derr(what(), e));
        }
        let config = self.launch_config(&cfg, &mut attrs);
        sys::cuLaunchKernelEx(&config, f, params.as_mut_ptr(), std::ptr::null_mut()).result().map_err(|e| derr(what(), e))
    }
    fn max_active_clusters(&self, kernel: &'static KernelInfo, cfg: &LaunchCfg) -> Result<usize> {
        let f = self.prepared_function(kernel, cfg)?;
        let mut attrs = launch_attributes(cfg.cluster, false);
        let config = self.launch_config(cfg, &mut attrs);
        let mut n: std::ffi::c_int = 0;
        unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f, &config) }
            .result()
            .map_err(|e| derr(format!("cuOccupancyMaxActiveClusters of {} (cluster {}, smem {})", kernel.name, cfg.cluster, cfg.shared_mem), e))?;
        Ok(n.max(0) as usize)
    }
}

/// The launch attributes of clusters of `ctas` CTAs along x (when > 1) and of programmatic
/// dependent launch (when `pdl`); empty: a plain launch.
fn launch_attributes(ctas: u32, pdl: bool) -> Vec<sys::CUlaunchAttribute> {
    // SAFETY: plain C data; zero is a valid bit pattern of every field.
    let zeroed = || -> sys::CUlaunchAttribute { unsafe { std::mem::zeroed() } };
    let mut attrs = Vec::new();
    if ctas > 1 {
        let mut a = zeroed();
        a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        a.value.clusterDim.x = ctas;
        a.value.clusterDim.y = 1;
        a.value.clusterDim.z = 1;
        attrs.push(a);
    }
    if pdl {
        let mut a = zeroed();
        a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        a.value.programmaticStreamSerializationAllowed = 1;
        attrs.push(a);
    }
    attrs
}

impl CudaStream {
    /// The kernel's function, bound, with the dynamic shared memory of `cfg` allowed.
    fn prepared_function(&self, kernel: &'static KernelInfo, cfg: &LaunchCfg) -> Result<sys::CUfunction> {
        let f = self.function(kernel)?;
        self.bind()?;
        // Dynamic plus static shared memory above 48 KB needs the opt-in; the kernel's static part
        // is not known here, so opt in from 32 KB of dynamic memory on.
        if cfg.shared_mem > 32 * 1024 {
            unsafe {
                result::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    cfg.shared_mem as i32,
                )
            }
            .map_err(|e| derr(format!("{}: dynamic shared memory {} bytes", kernel.name, cfg.shared_mem), e))?;
        }
        Ok(f)
    }

    /// `cfg` on this stream as a cuLaunchKernelEx configuration with the attributes `attrs`.
    fn launch_config(&self, cfg: &LaunchCfg, attrs: &mut [sys::CUlaunchAttribute]) -> sys::CUlaunchConfig {
        sys::CUlaunchConfig {
            gridDimX: cfg.grid.0,
            gridDimY: cfg.grid.1,
            gridDimZ: cfg.grid.2,
            blockDimX: cfg.block.0,
            blockDimY: cfg.block.1,
            blockDimZ: cfg.block.2,
            sharedMemBytes: cfg.shared_mem,
            hStream: self.stream,
            attrs: attrs.as_mut_ptr(),
            numAttrs: attrs.len() as u32,
        }
    }
}

impl GpuStream for CudaStream {
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
    fn arch(&self) -> String {
        format!("sm_{}{}", self.cc.0, self.cc.1)
    }
    fn variant(&self) -> CodeVariant {
        self.variant.clone()
    }
    fn allocator(&self) -> &Arc<CachingAllocator> {
        &self.alloc
    }
    unsafe fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        result::memcpy_htod_async(dst, src, self.stream).map_err(|e| derr("cuMemcpyHtoDAsync", e))?;
        self.synchronize()
    }
    unsafe fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.bind()?;
        if dst.len() < PINNED_MIN_BYTES {
            result::memcpy_dtoh_async(dst, src, self.stream).map_err(|e| derr("cuMemcpyDtoHAsync", e))?;
            return self.synchronize();
        }
        self.with_host_copy(src, dst.len(), &mut |staged| {
            dst.copy_from_slice(staged);
            Ok(())
        })
    }
    unsafe fn with_host_copy(&self, src: u64, bytes: usize, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.bind()?;
        let mut pinned = self.pinned.lock().map_err(|_| backend_err(B, "pinned staging lock poisoned"))?;
        if pinned.1 < bytes {
            if pinned.0 != 0 {
                result::free_host(pinned.0 as *mut c_void).map_err(|e| derr("cuMemFreeHost", e))?;
                *pinned = (0, 0);
            }
            let size = bytes.max(PINNED_MIN_BYTES).next_power_of_two();
            let ptr = result::malloc_host(size, 0).map_err(|e| derr(format!("cuMemHostAlloc of {size} bytes"), e))?;
            *pinned = (ptr as usize, size);
        }
        let staging = std::slice::from_raw_parts_mut(pinned.0 as *mut u8, bytes);
        result::memcpy_dtoh_async(staging, src, self.stream).map_err(|e| derr("cuMemcpyDtoHAsync", e))?;
        self.synchronize()?;
        f(staging)
    }
    unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        result::memcpy_dtod_async(dst, src, bytes, self.stream).map_err(|e| derr("cuMemcpyDtoDAsync", e))
    }
    unsafe fn memset_u8(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        self.bind()?;
        result::memset_d8_async(dst, value, bytes, self.stream).map_err(|e| derr("cuMemsetD8Async", e))
    }
    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        unsafe { result::stream::synchronize(self.stream) }.map_err(|e| derr("cuStreamSynchronize (an earlier launch may have failed)", e))
    }
    fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        result::mem_get_info().map_err(|e| derr("cuMemGetInfo", e))
    }
    fn begin_capture(&self) -> Result<()> {
        self.bind()?;
        unsafe { sys::cuStreamBeginCapture_v2(self.stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED) }
            .result()
            .map_err(|e| derr("cuStreamBeginCapture", e))
    }
    fn end_capture(&self) -> Result<Box<dyn super::stream::StreamGraph>> {
        self.bind()?;
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        unsafe { sys::cuStreamEndCapture(self.stream, &mut graph) }.result().map_err(|e| derr("cuStreamEndCapture", e))?;
        let mut exec: sys::CUgraphExec = std::ptr::null_mut();
        if let Err(e) = unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) }.result() {
            unsafe {
                let _ = sys::cuGraphDestroy(graph);
            }
            return Err(derr("cuGraphInstantiateWithFlags", e));
        }
        Ok(Box::new(CudaGraph { ctx: self.ctx.clone(), stream: self.stream, graph, exec }))
    }
    fn record_event(&self) -> Result<Box<dyn super::stream::StreamEvent>> {
        self.bind()?;
        let ev = cudarc::driver::result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(|e| derr("cuEventCreate", e))?;
        let event = CudaEvent { ev, ctx: self.ctx.clone() };
        unsafe { cudarc::driver::result::event::record(ev, self.stream) }.map_err(|e| derr("cuEventRecord", e))?;
        Ok(Box::new(event))
    }
    fn sm_count(&self) -> Result<usize> {
        Ok(self.sms)
    }
    fn max_shared_per_block(&self) -> Result<usize> {
        self.ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map(|n| n as usize)
            .map_err(|e| backend_err(B, format!("cuDeviceGetAttribute(MAX_SHARED_MEMORY_PER_BLOCK_OPTIN): {e:?}")))
    }
    fn tensor_map(&self, t: &TmaTiled) -> Result<TensorMap> {
        let rank = t.dims.len();
        if !(1..=5).contains(&rank) || t.strides.len() + 1 != rank || t.box_dims.len() != rank {
            return Err(backend_err(B, format!("TMA descriptor of {t:?}: dims, strides and box ranks disagree")));
        }
        let elem_strides = [1u32; 5];
        let mut map = sys::CUtensorMap { opaque: [0; 16] };
        self.bind()?;
        unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map,
                sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
                rank as u32,
                t.addr as *mut c_void,
                t.dims.as_ptr(),
                t.strides.as_ptr(),
                t.box_dims.as_ptr(),
                elem_strides.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                match t.swizzle {
                    TmaSwizzle::B128 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                    TmaSwizzle::None => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
                },
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        }
        .result()
        .map_err(|e| derr(format!("cuTensorMapEncodeTiled {t:?}"), e))?;
        Ok(TensorMap(map.opaque))
    }
    fn has_blas(&self) -> bool {
        unsafe { cudarc::cublas::sys::is_culib_present() }
    }
    unsafe fn blas_gemm_f32(&self, y: u64, x: u64, w: u64, t: usize, n: usize, k: usize) -> Result<()> {
        let h = self.blas_handle()?;
        self.bind()?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major y[T,N] = x[T,K]·W[N,K]ᵀ as column-major yᵀ = op(W)·xᵀ (see blas_gemm_bf16).
        cudarc::cublas::result::sgemm(
            h,
            cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
            cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            t as i32,
            k as i32,
            &alpha,
            w as *const f32,
            k as i32,
            x as *const f32,
            k as i32,
            &beta,
            y as *mut f32,
            n as i32,
        )
        .map_err(|e| backend_err(B, format!("cublasSgemm [{t}x{k}]·[{n}x{k}]ᵀ: {e:?}")))
    }
    unsafe fn blas_gemm_bf16_batched(&self, c: BlasBatched, a: BlasBatched, b: BlasBatched, m: usize, n: usize, k: usize, batch: usize, out_f32: bool) -> Result<()> {
        use cudarc::cublas::sys as cb;
        let h = self.blas_handle()?;
        self.bind()?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Per batch z: row-major c_z[M,N] = a_z[M,K]·b_z[N,K]ᵀ, i.e. column-major c_zᵀ = op(b_z)·a_zᵀ.
        cudarc::cublas::result::gemm_strided_batched_ex(
            h,
            cb::cublasOperation_t::CUBLAS_OP_T,
            cb::cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const c_void,
            b.ptr as *const c_void,
            cb::cudaDataType::CUDA_R_16BF,
            b.ld as i32,
            b.batch_stride as i64,
            a.ptr as *const c_void,
            cb::cudaDataType::CUDA_R_16BF,
            a.ld as i32,
            a.batch_stride as i64,
            &beta as *const f32 as *const c_void,
            c.ptr as *mut c_void,
            if out_f32 { cb::cudaDataType::CUDA_R_32F } else { cb::cudaDataType::CUDA_R_16BF },
            c.ld as i32,
            c.batch_stride as i64,
            batch as i32,
            cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
        .map_err(|e| backend_err(B, format!("cublasGemmStridedBatchedEx bf16 {batch}×[{m}x{k}]·[{n}x{k}]ᵀ: {e:?}")))
    }
    unsafe fn blas_gemm_bf16(&self, y: u64, x: u64, w: u64, t: usize, n: usize, k: usize, out_f32: bool) -> Result<()> {
        use cudarc::cublas::sys as cb;
        let h = self.blas_handle()?;
        self.bind()?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major y[T,N] = x[T,K]·W[N,K]ᵀ is column-major yᵀ[N,T] = op(W)·xᵀ with op = transpose.
        cudarc::cublas::result::gemm_ex(
            h,
            cb::cublasOperation_t::CUBLAS_OP_T,
            cb::cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            t as i32,
            k as i32,
            &alpha as *const f32 as *const c_void,
            w as *const c_void,
            cb::cudaDataType::CUDA_R_16BF,
            k as i32,
            x as *const c_void,
            cb::cudaDataType::CUDA_R_16BF,
            k as i32,
            &beta as *const f32 as *const c_void,
            y as *mut c_void,
            if out_f32 { cb::cudaDataType::CUDA_R_32F } else { cb::cudaDataType::CUDA_R_16BF },
            n as i32,
            cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
        .map_err(|e| backend_err(B, format!("cublasGemmEx bf16 [{t}x{k}]·[{n}x{k}]ᵀ: {e:?}")))
    }
}

/// A CUDA timing event (destroyed with its context bound).
struct CudaEvent {
    ev: sys::CUevent,
    ctx: Arc<CudaContext>,
}

// The handle is only used through the driver, which is thread-safe.
unsafe impl Send for CudaEvent {}

impl super::stream::StreamEvent for CudaEvent {
    fn ms_since(&self, earlier: &dyn super::stream::StreamEvent) -> Result<f32> {
        self.ctx.bind_to_thread().map_err(|e| derr("bind context", e))?;
        unsafe { cudarc::driver::result::event::synchronize(self.ev) }.map_err(|e| derr("cuEventSynchronize", e))?;
        unsafe { cudarc::driver::result::event::elapsed(earlier.handle() as sys::CUevent, self.ev) }.map_err(|e| derr("cuEventElapsedTime", e))
    }
    fn handle(&self) -> usize {
        self.ev as usize
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        unsafe {
            let _ = cudarc::driver::result::event::destroy(self.ev);
        }
    }
}
