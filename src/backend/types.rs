//! Types shared by every backend and by the generated registry: vendors, dtypes, typed device
//! pointers, launch configurations, kernel/module descriptions and the `Launcher` trait.

use crate::error::Result;
use std::fmt;
use std::marker::PhantomData;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vendor {
    Cuda,
    Hip,
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vendor::Cuda => "cuda",
            Vendor::Hip => "hip",
        })
    }
}

/// Element types of device tensors and kernel arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    Bf16,
    F16,
    E4m3fn,
    E4m3fnuz,
    I32,
    U32,
    U64,
    U8,
    /// int8 (INT8 weights and activations).
    I8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::Bf16 | DType::F16 => 2,
            DType::E4m3fn | DType::E4m3fnuz | DType::U8 | DType::I8 => 1,
            DType::U64 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::E4m3fn => "e4m3fn",
            DType::E4m3fnuz => "e4m3fnuz",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::U8 => "u8",
            DType::I8 => "i8",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// float8 e4m3fn bits (NVIDIA / OCP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Fp8E4m3fn(pub u8);
/// float8 e4m3fnuz bits (AMD gfx942).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Fp8E4m3fnuz(pub u8);

/// Host types that name a device element type.
pub trait DeviceElem: Copy + 'static {
    const DTYPE: DType;
}
impl DeviceElem for f32 {
    const DTYPE: DType = DType::F32;
}
impl DeviceElem for half::bf16 {
    const DTYPE: DType = DType::Bf16;
}
impl DeviceElem for half::f16 {
    const DTYPE: DType = DType::F16;
}
impl DeviceElem for Fp8E4m3fn {
    const DTYPE: DType = DType::E4m3fn;
}
impl DeviceElem for Fp8E4m3fnuz {
    const DTYPE: DType = DType::E4m3fnuz;
}
impl DeviceElem for i32 {
    const DTYPE: DType = DType::I32;
}
impl DeviceElem for u32 {
    const DTYPE: DType = DType::U32;
}
impl DeviceElem for u64 {
    const DTYPE: DType = DType::U64;
}
impl DeviceElem for u8 {
    const DTYPE: DType = DType::U8;
}
impl DeviceElem for i8 {
    const DTYPE: DType = DType::I8;
}

/// A device address of `T` elements, read-only to the kernel. Passed by value to kernels
/// (same layout as a C pointer).
#[repr(transparent)]
pub struct DevPtr<T> {
    pub raw: u64,
    _t: PhantomData<*const T>,
}
/// A device address of `T` elements the kernel writes.
#[repr(transparent)]
pub struct DevPtrMut<T> {
    pub raw: u64,
    _t: PhantomData<*mut T>,
}

impl<T> Clone for DevPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DevPtr<T> {}
impl<T> Clone for DevPtrMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DevPtrMut<T> {}
impl<T> fmt::Debug for DevPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevPtr({:#x})", self.raw)
    }
}
impl<T> fmt::Debug for DevPtrMut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevPtrMut({:#x})", self.raw)
    }
}

impl<T> DevPtr<T> {
    pub const NULL: DevPtr<T> = DevPtr { raw: 0, _t: PhantomData };
    pub fn from_raw(raw: u64) -> Self {
        DevPtr { raw, _t: PhantomData }
    }
    /// The address `n` elements further.
    pub fn offset(self, n: usize) -> Self {
        DevPtr::from_raw(self.raw + (n * std::mem::size_of::<T>()) as u64)
    }
}
impl<T> DevPtrMut<T> {
    pub fn from_raw(raw: u64) -> Self {
        DevPtrMut { raw, _t: PhantomData }
    }
    pub fn offset(self, n: usize) -> Self {
        DevPtrMut::from_raw(self.raw + (n * std::mem::size_of::<T>()) as u64)
    }
    pub fn as_const(self) -> DevPtr<T> {
        DevPtr::from_raw(self.raw)
    }
}

/// A TMA descriptor (CUtensorMap) passed to a kernel by value (`const __grid_constant__` on the
/// device): 128 opaque bytes encoded by the driver ([`GpuStream::tensor_map`](super::GpuStream::tensor_map)).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorMap(pub [u64; 16]);

impl TensorMap {
    /// A descriptor a kernel does not read (an unused operand).
    pub const UNUSED: TensorMap = TensorMap([0; 16]);
}

/// A byte tensor to describe as a [`TensorMap`]: `dims` elements per dimension, innermost first
/// (dimension 0 contiguous), `strides[i]` bytes between consecutive indices of dimension i + 1
/// (multiples of 16), copied in boxes of `box_dims` into shared memory laid out as `swizzle`
/// says; elements outside the tensor read as zeros (and still count as the box's bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TmaTiled {
    pub addr: u64,
    pub dims: Vec<u64>,
    pub strides: Vec<u64>,
    pub box_dims: Vec<u32>,
    pub swizzle: TmaSwizzle,
}

/// How a [`TmaTiled`] box lands in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TmaSwizzle {
    /// The 128-byte swizzle (chunk c of box row r at chunk c ^ (r % 8)): what the wgmma
    /// descriptors read. Box rows of at most 128 bytes.
    B128,
    /// None: the box's rows packed one after the other as in memory (rows of up to 256 bytes, a
    /// multiple of 16), for operands read by ordinary shared-memory loads.
    None,
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_mem: u32,
    /// CTAs per thread-block cluster along x (1: no cluster; > 1 needs sm_90+ and a grid.0 that
    /// it divides).
    pub cluster: u32,
}

impl LaunchCfg {
    pub fn new(grid: (u32, u32, u32), block: (u32, u32, u32), shared_mem: u32) -> Self {
        LaunchCfg { grid, block, shared_mem, cluster: 1 }
    }
    /// 1-D grid of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        LaunchCfg::new((blocks, 1, 1), (threads, 1, 1), 0)
    }
    /// The group-128 quantizers' launch (kernels/act_quant.cuh `quant_groups128`): 16 lanes per
    /// (row, 128-group) item, 16 items per 256-thread block (at least one block).
    pub fn quant_groups128(rows: usize, cols: usize) -> Result<Self> {
        let items = rows.checked_mul(cols.div_ceil(128)).filter(|&i| i <= u32::MAX as usize);
        let items = items.ok_or_else(|| crate::error::Error::InvalidArgument(format!("quantizer: {rows} rows of {cols} values exceed the u32 item index")))?;
        Ok(LaunchCfg::linear(items.div_ceil(16).max(1) as u32, 256))
    }
    pub fn with_shared(mut self, bytes: u32) -> Self {
        self.shared_mem = bytes;
        self
    }
    pub fn with_cluster(mut self, ctas: u32) -> Self {
        self.cluster = ctas;
        self
    }
    pub fn threads(&self) -> u32 {
        self.block.0 * self.block.1 * self.block.2
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgType {
    Ptr(DType),
    PtrMut(DType),
    Scalar(DType),
    TensorMap,
}

#[derive(Clone, Copy, Debug)]
pub struct ArgInfo {
    pub name: &'static str,
    pub ty: ArgType,
}

/// One kernel instance of the manifest.
#[derive(Debug)]
pub struct KernelInfo {
    pub family: &'static str,
    /// Index into `registry::MODULES`.
    pub module: usize,
    pub name: &'static str,
    /// The `extern "C"` entry point.
    pub symbol: &'static str,
    /// Grid point: (axis, value).
    pub params: &'static [(&'static str, &'static str)],
    pub args: &'static [ArgInfo],
    pub max_threads: u32,
    pub vendors: &'static [Vendor],
    /// The CUDA targets the manifest restricts this kernel to (empty: every target of the build).
    /// A list means architecture-specific code (sm_90a: TMA, wgmma) whose entry only traps in the
    /// other variants; see [`super::registry::runs_on`].
    pub cuda_archs: &'static [&'static str],
    pub doc: &'static str,
}

impl KernelInfo {
    pub fn param(&self, axis: &str) -> Option<&'static str> {
        self.params.iter().find(|(k, _)| *k == axis).map(|(_, v)| *v)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    Cubin,
    Ptx,
    Fatbin,
    CodeObject,
}

/// A compiled image embedded in the binary.
pub struct ImageInfo {
    pub vendor: Vendor,
    /// `sm_90a`, `compute_80`, `gfx90a`, `all` (fatbin).
    pub arch: &'static str,
    pub kind: ImageKind,
    pub bytes: &'static [u8],
}

impl fmt::Debug for ImageInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageInfo({} {} {:?}, {} bytes)", self.vendor, self.arch, self.kind, self.bytes.len())
    }
}

/// One kernel family's module: sources (for NVRTC / hiprtc) and compiled images.
#[derive(Debug)]
pub struct ModuleInfo {
    pub family: &'static str,
    pub source_file: &'static str,
    pub cuda_source: Option<&'static str>,
    pub hip_source: Option<&'static str>,
    pub images: &'static [ImageInfo],
}

impl ModuleInfo {
    pub fn image(&self, vendor: Vendor, arch: &str, kind: ImageKind) -> Option<&'static ImageInfo> {
        self.images.iter().find(|i| i.vendor == vendor && i.arch == arch && i.kind == kind)
    }
}

/// Which compiled form of the kernels a CUDA stream loads (tests select each explicitly).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeVariant {
    /// The fatbin (the driver picks the best SASS or JITs PTX); NVRTC when none is embedded.
    Auto,
    /// The SASS for this real arch (`sm_90a`) only.
    Cubin(String),
    /// The PTX for this virtual arch (`compute_80`) only, JIT-compiled by the driver.
    Ptx(String),
    /// Compile the embedded source with NVRTC for the device (cached on disk).
    Nvrtc,
    /// AMD code object for this gfx target (default: the device's).
    CodeObject(String),
}

impl fmt::Display for CodeVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeVariant::Auto => f.write_str("auto"),
            CodeVariant::Cubin(a) => write!(f, "cubin {a}"),
            CodeVariant::Ptx(a) => write!(f, "ptx {a}"),
            CodeVariant::Nvrtc => f.write_str("nvrtc"),
            CodeVariant::CodeObject(a) => write!(f, "code object {a}"),
        }
    }
}

/// Launches registry kernels. Implemented by each backend's stream; the generated typed
/// wrappers (`registry::launch::*`) call it.
pub trait Launcher {
    fn vendor(&self) -> Vendor;
    /// Launches `kernel` with `params` (pointers to each argument's value, in order).
    ///
    /// # Safety
    /// `params` must match the kernel's argument list; device pointers must be valid.
    unsafe fn launch(&self, kernel: &'static KernelInfo, cfg: LaunchCfg, params: &mut [*mut std::ffi::c_void]) -> Result<()>;
    /// How many clusters of `cfg.cluster` CTAs of `kernel` (with `cfg`'s block and shared memory)
    /// can be resident at once: the grid of a persistent cluster kernel. Backends without
    /// clusters refuse.
    fn max_active_clusters(&self, kernel: &'static KernelInfo, cfg: &LaunchCfg) -> Result<usize> {
        Err(crate::error::Error::InvalidArgument(format!(
            "{}: thread-block clusters of {} are not supported on {}",
            kernel.name,
            cfg.cluster,
            self.vendor()
        )))
    }
}

/// Checks a launch configuration against a kernel's limits (shared by the backends).
pub fn check_launch(kernel: &KernelInfo, cfg: &LaunchCfg, nparams: usize) -> Result<()> {
    let err = |m: String| crate::error::Error::InvalidArgument(format!("launch of {}: {m}", kernel.name));
    if nparams != kernel.args.len() {
        return Err(err(format!("{} arguments given, {} expected", nparams, kernel.args.len())));
    }
    let t = cfg.threads();
    if t == 0 || t > kernel.max_threads {
        return Err(err(format!("block {:?} has {t} threads; the kernel takes 1..={}", cfg.block, kernel.max_threads)));
    }
    if cfg.grid.0 == 0 || cfg.grid.1 == 0 || cfg.grid.2 == 0 {
        return Err(err(format!("empty grid {:?}", cfg.grid)));
    }
    if cfg.grid.1 > 65535 || cfg.grid.2 > 65535 {
        return Err(err(format!("grid {:?}: y and z must be <= 65535", cfg.grid)));
    }
    if cfg.cluster == 0 || !cfg.grid.0.is_multiple_of(cfg.cluster) {
        return Err(err(format!("grid {:?} is not made of clusters of {} along x", cfg.grid, cfg.cluster)));
    }
    Ok(())
}
