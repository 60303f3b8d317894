//! HIP backend (feature `hip`): hip-sys runtime calls, code objects embedded at build time
//! (one per family and gfx target), our own generated GEMM for dense linears (Debian ships no
//! hipBLAS / rocBLAS). hip-sys links `libamdhip64`: a `--features hip` binary needs the HIP
//! runtime library installed wherever it runs. hiprtc is not wired yet: without an embedded code
//! object for the device's gfx target, loading reports which targets this build has.
//!
//! Peer GPUs' flags (the custom all-reduce) come from [`HipStream::alloc_signal`]: fine-grained
//! memory, which stays coherent across GPUs while kernels run (`hipMalloc` memory does not).
//!
//! Every runtime call and launch is checked.

use super::memory::{CachingAllocator, RawAllocator};
use super::registry::{KERNELS, MODULES};
use super::stream::GpuStream;
use super::types::*;
use super::{backend_err, Device};
use crate::error::Result;
use hip_sys::hiprt as h;
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::sync::{Arc, Mutex};

const B: &str = "hip";

pub(crate) fn check(what: impl std::fmt::Display, e: h::hipError_t) -> Result<()> {
    if e == h::hipError_t::hipSuccess {
        return Ok(());
    }
    let name = unsafe { CStr::from_ptr(h::hipGetErrorName(e)) }.to_string_lossy().into_owned();
    let msg = unsafe { CStr::from_ptr(h::hipGetErrorString(e)) }.to_string_lossy().into_owned();
    Err(backend_err(B, format!("{what}: {name} ({msg})")))
}

pub fn device_count() -> Result<usize> {
    let mut n = 0;
    let e = unsafe { h::hipGetDeviceCount(&mut n) };
    if e != h::hipError_t::hipSuccess {
        return Err(backend_err(B, format!("no HIP device: hipGetDeviceCount failed ({e:?}); is the amdgpu driver loaded?")));
    }
    Ok(n as usize)
}

struct HipRaw {
    ordinal: i32,
}

impl RawAllocator for HipRaw {
    fn backend(&self) -> &'static str {
        B
    }
    fn raw_alloc(&self, bytes: usize) -> Result<u64> {
        let mut p: *mut c_void = std::ptr::null_mut();
        unsafe {
            check("hipSetDevice", h::hipSetDevice(self.ordinal))?;
            check(format!("hipMalloc({bytes} bytes)"), h::hipMalloc(&mut p, bytes))?;
        }
        Ok(p as u64)
    }
    unsafe fn raw_free(&self, ptr: u64) -> Result<()> {
        check("hipSetDevice", h::hipSetDevice(self.ordinal))?;
        check("hipFree", h::hipFree(ptr as *mut c_void))
    }
}

/// `hipDeviceMallocUncached` of newer ROCm headers (hip-sys binds ROCm 5.2's, which lack it). Not a
/// bit flag: in 5.2, 0x3 would read as fine-grained | `hipMallocSignalMemory`, hence opt-in only.
const HIP_DEVICE_MALLOC_UNCACHED: u32 = 0x3;

/// Device memory that peer GPUs poll while kernels run (the all-reduce's barrier flags and push
/// receive buffers). Plain `hipMalloc` memory is coarse-grained on AMD: a GPU may keep its lines in
/// its L2, so a peer's system-scope atomics and polls are not guaranteed to see its stores before a
/// kernel boundary, and a barrier spin would never end. Fine-grained memory
/// (`hipDeviceMallocFinegrained`) is coherent across GPUs while kernels run: the default.
/// `DSV3_HIP_SIGNAL_MEM=uncached` asks for `hipDeviceMallocUncached` instead (also bypasses the
/// caches; needs a ROCm that knows the flag).
struct HipSignalRaw {
    ordinal: i32,
}

impl HipSignalRaw {
    fn flags_from_env() -> Result<u32> {
        match std::env::var("DSV3_HIP_SIGNAL_MEM").as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("finegrained") => Ok(h::hipDeviceMallocFinegrained),
            Ok("uncached") => Ok(HIP_DEVICE_MALLOC_UNCACHED),
            Ok(v) => Err(backend_err(B, format!("DSV3_HIP_SIGNAL_MEM=`{v}`: expected `finegrained` (default) or `uncached`"))),
        }
    }
}

impl RawAllocator for HipSignalRaw {
    fn backend(&self) -> &'static str {
        B
    }
    fn raw_alloc(&self, bytes: usize) -> Result<u64> {
        let flags = Self::flags_from_env()?;
        let mut p: *mut c_void = std::ptr::null_mut();
        unsafe {
            check("hipSetDevice", h::hipSetDevice(self.ordinal))?;
            check(
                format!("hipExtMallocWithFlags({bytes} bytes, flags {flags:#x}) on hip:{}", self.ordinal),
                h::hipExtMallocWithFlags(&mut p, bytes, flags),
            )?;
        }
        Ok(p as u64)
    }
    unsafe fn raw_free(&self, ptr: u64) -> Result<()> {
        check("hipSetDevice", h::hipSetDevice(self.ordinal))?;
        check("hipFree", h::hipFree(ptr as *mut c_void))
    }
}

struct Loaded {
    modules: HashMap<usize, h::hipModule_t>,
    functions: HashMap<usize, h::hipFunction_t>,
}

pub struct HipStream {
    ordinal: i32,
    stream: h::hipStream_t,
    arch: String,
    variant: CodeVariant,
    loaded: Mutex<Loaded>,
    alloc: Arc<CachingAllocator>,
    /// Fine-grained / uncached memory for cross-GPU flags ([`HipStream::alloc_signal`]).
    signal: Arc<CachingAllocator>,
}

unsafe impl Send for HipStream {}
unsafe impl Sync for HipStream {}

/// The device's gfx target (`gfx90a`, `gfx942`), without feature suffixes.
fn gcn_arch(ordinal: i32) -> Result<String> {
    // hipDeviceProp_t grew across ROCm releases: give the runtime a generous buffer and read the
    // name at the offset of these bindings (ROCm 5.x layout).
    let mut buf = vec![0u64; 4096];
    unsafe { check("hipGetDeviceProperties", h::hipGetDeviceProperties(buf.as_mut_ptr() as *mut h::hipDeviceProp_t, ordinal))? };
    let prop = unsafe { &*(buf.as_ptr() as *const h::hipDeviceProp_t) };
    let name = unsafe { CStr::from_ptr(prop.gcnArchName.as_ptr()) }.to_string_lossy().into_owned();
    Ok(name.split(':').next().unwrap_or("").to_string())
}

impl HipStream {
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_variant(ordinal, CodeVariant::Auto)
    }

    pub fn with_variant(ordinal: usize, variant: CodeVariant) -> Result<Self> {
        let n = device_count()?;
        if ordinal >= n {
            return Err(backend_err(B, format!("no HIP device {ordinal}: {n} device(s) present")));
        }
        let o = ordinal as i32;
        unsafe { check("hipSetDevice", h::hipSetDevice(o))? };
        let arch = gcn_arch(o)?;
        let mut stream: h::hipStream_t = std::ptr::null_mut();
        unsafe { check("hipStreamCreateWithFlags", h::hipStreamCreateWithFlags(&mut stream, 1 /* hipStreamNonBlocking */))? };
        Ok(HipStream {
            ordinal: o,
            stream,
            arch,
            variant,
            loaded: Mutex::new(Loaded { modules: HashMap::new(), functions: HashMap::new() }),
            alloc: CachingAllocator::new(Box::new(HipRaw { ordinal: o })),
            signal: CachingAllocator::new(Box::new(HipSignalRaw { ordinal: o })),
        })
    }

    fn set(&self) -> Result<()> {
        unsafe { check("hipSetDevice", h::hipSetDevice(self.ordinal)) }
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal as usize
    }
    /// The raw HIP stream (what RCCL and graph capture take).
    pub fn hip_stream(&self) -> h::hipStream_t {
        self.stream
    }
    /// Makes this stream's device current on the calling thread (`hipSetDevice`).
    pub fn make_current(&self) -> Result<()> {
        self.set()
    }
    /// `bytes` of device memory that peer GPUs may poll and update with system-scope atomics while
    /// kernels run: uncached or fine-grained, never the coarse-grained memory of
    /// [`GpuStream::alloc`] (see `HipSignalRaw`).
    pub fn alloc_signal(&self, bytes: usize) -> Result<super::memory::DeviceBuffer> {
        self.signal.alloc(bytes)
    }

    fn function(&self, kernel: &'static KernelInfo) -> Result<h::hipFunction_t> {
        let k = KERNELS.iter().position(|x| std::ptr::eq(x, kernel)).ok_or_else(|| backend_err(B, format!("{} is not a registry kernel", kernel.name)))?;
        let mut l = self.loaded.lock().unwrap();
        if let Some(f) = l.functions.get(&k) {
            return Ok(*f);
        }
        self.set()?;
        let module = match l.modules.get(&kernel.module) {
            Some(m) => *m,
            None => {
                let info = &MODULES[kernel.module];
                let arch = match &self.variant {
                    CodeVariant::CodeObject(a) => a.clone(),
                    CodeVariant::Auto => self.arch.clone(),
                    v => return Err(backend_err(B, format!("variant {v} is NVIDIA-only"))),
                };
                let img = info.image(Vendor::Hip, &arch, ImageKind::CodeObject).ok_or_else(|| {
                    let have: Vec<&str> = info.images.iter().filter(|i| i.vendor == Vendor::Hip).map(|i| i.arch).collect();
                    backend_err(B, format!("module {}: no code object for {arch} (this build has {have:?}; set DSV3_HIP_ARCHS; hiprtc is not wired yet)", info.family))
                })?;
                let mut words = vec![0u64; img.bytes.len() / 8 + 1];
                unsafe { std::ptr::copy_nonoverlapping(img.bytes.as_ptr(), words.as_mut_ptr() as *mut u8, img.bytes.len()) };
                let mut m: h::hipModule_t = std::ptr::null_mut();
                unsafe { check(format!("hipModuleLoadData {} {arch}", info.family), h::hipModuleLoadData(&mut m, words.as_ptr() as *const c_void))? };
                l.modules.insert(kernel.module, m);
                m
            }
        };
        let sym = CString::new(kernel.symbol).unwrap();
        let mut f: h::hipFunction_t = std::ptr::null_mut();
        unsafe { check(format!("hipModuleGetFunction {}", kernel.symbol), h::hipModuleGetFunction(&mut f, module, sym.as_ptr()))? };
        l.functions.insert(k, f);
        Ok(f)
    }
}

impl Drop for HipStream {
    fn drop(&mut self) {
        unsafe {
            let _ = h::hipSetDevice(self.ordinal);
            let _ = h::hipStreamSynchronize(self.stream);
            for (_, m) in self.loaded.lock().unwrap().modules.drain() {
                let _ = h::hipModuleUnload(m);
            }
            let _ = self.alloc.empty_cache();
            let _ = self.signal.empty_cache();
            let _ = h::hipStreamDestroy(self.stream);
        }
    }
}

impl Launcher for HipStream {
    fn vendor(&self) -> Vendor {
        Vendor::Hip
    }
    unsafe fn launch(&self, kernel: &'static KernelInfo, cfg: LaunchCfg, params: &mut [*mut c_void]) -> Result<()> {
        check_launch(kernel, &cfg, params.len())?;
        if cfg.cluster != 1 {
            return Err(crate::error::Error::InvalidArgument(format!("launch of {}: HIP has no thread-block clusters ({} asked)", kernel.name, cfg.cluster)));
        }
        let f = self.function(kernel)?;
        self.set()?;
        check(
            format!("launch {} grid {:?} block {:?} smem {}", kernel.name, cfg.grid, cfg.block, cfg.shared_mem),
            h::hipModuleLaunchKernel(
                f,
                cfg.grid.0,
                cfg.grid.1,
                cfg.grid.2,
                cfg.block.0,
                cfg.block.1,
                cfg.block.2,
                cfg.shared_mem,
                self.stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            ),
        )
    }
}

impl GpuStream for HipStream {
    fn device(&self) -> Device {
        Device::Hip(self.ordinal as usize)
    }
    fn arch(&self) -> String {
        self.arch.clone()
    }
    fn variant(&self) -> CodeVariant {
        self.variant.clone()
    }
    fn allocator(&self) -> &Arc<CachingAllocator> {
        &self.alloc
    }
    unsafe fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.set()?;
        check("hipMemcpyAsync H2D", h::hipMemcpyAsync(dst as *mut c_void, src.as_ptr() as *const c_void, src.len(), h::hipMemcpyKind::hipMemcpyHostToDevice, self.stream))?;
        self.synchronize()
    }
    unsafe fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.set()?;
        check("hipMemcpyAsync D2H", h::hipMemcpyAsync(dst.as_mut_ptr() as *mut c_void, src as *const c_void, dst.len(), h::hipMemcpyKind::hipMemcpyDeviceToHost, self.stream))?;
        self.synchronize()
    }
    unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.set()?;
        check("hipMemcpyAsync D2D", h::hipMemcpyAsync(dst as *mut c_void, src as *const c_void, bytes, h::hipMemcpyKind::hipMemcpyDeviceToDevice, self.stream))
    }
    unsafe fn memset_u8(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        self.set()?;
        check("hipMemsetD8Async", h::hipMemsetD8Async(dst as h::hipDeviceptr_t, value, bytes, self.stream))
    }
    fn synchronize(&self) -> Result<()> {
        self.set()?;
        unsafe { check("hipStreamSynchronize (an earlier launch may have failed)", h::hipStreamSynchronize(self.stream)) }
    }
    fn mem_info(&self) -> Result<(usize, usize)> {
        self.set()?;
        let (mut free, mut total) = (0usize, 0usize);
        unsafe { check("hipMemGetInfo", h::hipMemGetInfo(&mut free, &mut total))? };
        Ok((free, total))
    }
    fn sm_count(&self) -> Result<usize> {
        let mut n = 0;
        unsafe {
            check(
                format!("hipDeviceGetAttribute(MultiprocessorCount) on hip:{}", self.ordinal),
                h::hipDeviceGetAttribute(&mut n, h::hipDeviceAttribute_t::hipDeviceAttributeMultiprocessorCount, self.ordinal),
            )?
        };
        Ok(n as usize)
    }
}
