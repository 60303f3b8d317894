//! The vocabulary of the manifest: element types, argument types, parameter grids, kernel
//! specs and families, and their expansion into concrete instances.

use std::fmt;

/// A GPU vendor: one translation unit dialect and one runtime each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Vendor {
    Cuda,
    Hip,
}

impl Vendor {
    pub const ALL: [Vendor; 2] = [Vendor::Cuda, Vendor::Hip];
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Cuda => "cuda",
            Vendor::Hip => "hip",
        }
    }
    /// File extension of this vendor's translation units.
    pub fn extension(self) -> &'static str {
        match self {
            Vendor::Cuda => "cu",
            Vendor::Hip => "hip",
        }
    }
    /// The Rust path of this vendor in the generated registry.
    pub fn rust_variant(self) -> &'static str {
        match self {
            Vendor::Cuda => "Vendor::Cuda",
            Vendor::Hip => "Vendor::Hip",
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Element types a kernel argument may point to or carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    Bf16,
    F16,
    E4m3fn,
    E4m3fnuz,
    I32,
    U32,
    U64,
    /// Raw bytes (records of mixed types, e.g. the MLA fp8 cache rows).
    U8,
    /// int8 (INT8 weights and activations).
    I8,
}

impl Elem {
    pub const ALL: [Elem; 10] =
        [Elem::F32, Elem::Bf16, Elem::F16, Elem::E4m3fn, Elem::E4m3fnuz, Elem::I32, Elem::U32, Elem::U64, Elem::U8, Elem::I8];

    /// Name used in the manifest, in kernel names and in the registry.
    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::Bf16 => "bf16",
            Elem::F16 => "f16",
            Elem::E4m3fn => "e4m3fn",
            Elem::E4m3fnuz => "e4m3fnuz",
            Elem::I32 => "i32",
            Elem::U32 => "u32",
            Elem::U64 => "u64",
            Elem::U8 => "u8",
            Elem::I8 => "i8",
        }
    }
    pub fn parse(s: &str) -> Option<Elem> {
        Elem::ALL.iter().copied().find(|e| e.name() == s)
    }
    /// The C++ type in the portability layer.
    pub fn cpp(self) -> &'static str {
        match self {
            Elem::F32 => "float",
            Elem::Bf16 => "dsv3::bf16",
            Elem::F16 => "dsv3::f16",
            Elem::E4m3fn => "dsv3::e4m3fn",
            Elem::E4m3fnuz => "dsv3::e4m3fnuz",
            Elem::I32 => "dsv3::i32",
            Elem::U32 => "dsv3::u32",
            Elem::U64 => "dsv3::u64",
            Elem::U8 => "dsv3::u8",
            Elem::I8 => "dsv3::i8",
        }
    }
    /// The host-side Rust type (element marker of a device pointer, or scalar type).
    pub fn rust(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::Bf16 => "half::bf16",
            Elem::F16 => "half::f16",
            Elem::E4m3fn => "Fp8E4m3fn",
            Elem::E4m3fnuz => "Fp8E4m3fnuz",
            Elem::I32 => "i32",
            Elem::U32 => "u32",
            Elem::U64 => "u64",
            Elem::U8 => "u8",
            Elem::I8 => "i8",
        }
    }
    /// The `DType` variant in the generated registry.
    pub fn rust_dtype(self) -> &'static str {
        match self {
            Elem::F32 => "DType::F32",
            Elem::Bf16 => "DType::Bf16",
            Elem::F16 => "DType::F16",
            Elem::E4m3fn => "DType::E4m3fn",
            Elem::E4m3fnuz => "DType::E4m3fnuz",
            Elem::I32 => "DType::I32",
            Elem::U32 => "DType::U32",
            Elem::U64 => "DType::U64",
            Elem::U8 => "DType::U8",
            Elem::I8 => "DType::I8",
        }
    }
    /// Types a kernel may take by value.
    pub fn is_scalar_ok(self) -> bool {
        matches!(self, Elem::F32 | Elem::I32 | Elem::U32 | Elem::U64)
    }
}

/// An argument's type in the manifest. The string is an element name (`"f32"`) or a grid axis
/// in braces (`"{T}"`), resolved per instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// `const T*`
    Ptr(&'static str),
    /// `T*`
    PtrMut(&'static str),
    /// `T` by value
    Scalar(&'static str),
    /// A TMA descriptor by value (`const DSV3_GRID_CONST dsv3::TmaMap`; Rust `TensorMap`).
    TensorMap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arg {
    pub name: &'static str,
    pub ty: Ty,
}

/// Shorthands for manifest tables.
pub const fn ptr(name: &'static str, ty: &'static str) -> Arg {
    Arg { name, ty: Ty::Ptr(ty) }
}
pub const fn ptr_mut(name: &'static str, ty: &'static str) -> Arg {
    Arg { name, ty: Ty::PtrMut(ty) }
}
pub const fn scalar(name: &'static str, ty: &'static str) -> Arg {
    Arg { name, ty: Ty::Scalar(ty) }
}
pub const fn tensor_map(name: &'static str) -> Arg {
    Arg { name, ty: Ty::TensorMap }
}

/// One axis of a parameter grid: a name and its values. Values that are element names are
/// element types (`"bf16"` becomes `dsv3::bf16` in C++); other values are pasted as they are
/// (tile sizes, head dims).
#[derive(Clone, Copy, Debug)]
pub struct Axis {
    pub name: &'static str,
    pub values: &'static [&'static str],
}

/// Architectures a kernel is built for, per vendor. `ALL` takes whatever the build targets
/// (`DSV3_CUDA_ARCHS`, `DSV3_HIP_ARCHS`); a list restricts it (e.g. wgmma kernels: `["sm_90a"]`).
#[derive(Clone, Copy, Debug)]
pub struct Archs {
    pub cuda: Option<&'static [&'static str]>,
    pub hip: Option<&'static [&'static str]>,
}

impl Archs {
    pub const ALL: Archs = Archs { cuda: Some(&[]), hip: Some(&[]) };
    /// Hopper-specific code (TMA, wgmma, setmaxnreg): the sm_90a cubin only, no HIP entry. The
    /// entry is compiled into the other CUDA variants too (where it traps); the registry's
    /// `cuda_archs` tells the host which cubin it needs.
    pub const SM90A: Archs = Archs { cuda: Some(&["sm_90a"]), hip: None };
    /// The subset of `targets` this kernel is built for (empty when the vendor is excluded).
    pub fn select(&self, vendor: Vendor, targets: &[String]) -> Vec<String> {
        let sel = match vendor {
            Vendor::Cuda => self.cuda,
            Vendor::Hip => self.hip,
        };
        match sel {
            None => vec![],
            Some([]) => targets.to_vec(),
            Some(list) => targets.iter().filter(|t| list.contains(&t.as_str())).cloned().collect(),
        }
    }
    pub fn has_vendor(&self, vendor: Vendor) -> bool {
        match vendor {
            Vendor::Cuda => self.cuda.is_some(),
            Vendor::Hip => self.hip.is_some(),
        }
    }
}

/// One kernel of a family, as a template over a parameter grid.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    /// Instance name pattern, e.g. `"rms_norm_{T}"`; the entry point is `dsv3_` + the name.
    pub name: &'static str,
    /// The C++ call, e.g. `"dsv3::rms_norm<{T}, 256>"`; it is called with the arguments in order.
    pub template: &'static str,
    /// Parameter axes; the instances are their cartesian product unless `points` lists them.
    pub grid: &'static [Axis],
    /// Explicit grid points (one value per axis, in axis order); empty = the full product.
    pub points: &'static [&'static [&'static str]],
    pub args: &'static [Arg],
    /// Upper bound of threads per block (emitted as launch bounds, checked at launch).
    pub max_threads: u32,
    /// CUDA: minimum resident blocks per SM in the launch bounds (0: not emitted). The
    /// warp-specialized sm_90a entries that move registers between warpgroups (setmaxnreg) need 1:
    /// ptxas honours setmaxnreg only when the entry's register count is pinned (65536 /
    /// max_threads) and otherwise warns C7508 ("setmaxnreg ignored") and may serialize the wgmma
    /// (C7518). Not emitted for HIP (its second bound means waves per EU).
    pub min_blocks: u32,
    pub archs: Archs,
    /// Where the entry waits for the previous kernel of its stream (programmatic dependent launch).
    pub pdl: Pdl,
    pub doc: &'static str,
}

/// Where a kernel synchronizes with the grid before it on its stream (PDL, sm_90+; see
/// `grid_dependency_sync` in kernels/include/dsv3/platform.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pdl {
    /// The generated entry waits (and lets the next grid launch) before calling the kernel.
    AtEntry,
    /// The kernel calls `grid_dependency_wait` / `grid_dependency_launch` itself: it may do work
    /// that reads nothing the previous grid writes (e.g. stream constant weights) before waiting.
    InKernel,
}

/// A kernel family: one template source, one translation unit (one fatbin / code object) per
/// vendor and architecture.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    /// Source file under `kernels/`.
    pub source: &'static str,
    pub doc: &'static str,
    pub kernels: &'static [KernelSpec],
}

/// A resolved argument type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgType {
    Ptr(Elem),
    PtrMut(Elem),
    Scalar(Elem),
    TensorMap,
}

impl ArgType {
    pub fn cpp(&self) -> String {
        match self {
            ArgType::Ptr(e) => format!("const {}*", e.cpp()),
            ArgType::PtrMut(e) => format!("{}*", e.cpp()),
            ArgType::Scalar(e) => e.cpp().to_string(),
            // Stays in parameter space: the device hands its address to the copy engine.
            ArgType::TensorMap => "const DSV3_GRID_CONST dsv3::TmaMap".to_string(),
        }
    }
    pub fn rust(&self) -> String {
        match self {
            ArgType::Ptr(e) => format!("DevPtr<{}>", e.rust()),
            ArgType::PtrMut(e) => format!("DevPtrMut<{}>", e.rust()),
            ArgType::Scalar(e) => e.rust().to_string(),
            ArgType::TensorMap => "TensorMap".to_string(),
        }
    }
    pub fn rust_info(&self) -> String {
        match self {
            ArgType::Ptr(e) => format!("ArgType::Ptr({})", e.rust_dtype()),
            ArgType::PtrMut(e) => format!("ArgType::PtrMut({})", e.rust_dtype()),
            ArgType::Scalar(e) => format!("ArgType::Scalar({})", e.rust_dtype()),
            ArgType::TensorMap => "ArgType::TensorMap".to_string(),
        }
    }
}

/// A concrete kernel: one grid point of one spec.
#[derive(Clone, Debug)]
pub struct Instance {
    pub family: &'static str,
    pub spec: &'static KernelSpec,
    /// e.g. `rms_norm_bf16`
    pub name: String,
    /// `extern "C"` entry point, e.g. `dsv3_rms_norm_bf16`
    pub symbol: String,
    /// e.g. `dsv3::rms_norm<dsv3::bf16, 256>`
    pub call: String,
    pub params: Vec<(&'static str, &'static str)>,
    pub args: Vec<(&'static str, ArgType)>,
}

/// Errors in the manifest (caught by codegen's unit tests and by build.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError(pub String);

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel manifest: {}", self.0)
    }
}
impl std::error::Error for ManifestError {}

fn substitute(pattern: &str, params: &[(&str, &str)], cpp: bool) -> Result<String, ManifestError> {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| ManifestError(format!("unclosed `{{` in `{pattern}`")))?
            + open;
        let key = &rest[open + 1..close];
        let (_, value) = params
            .iter()
            .find(|(k, _)| *k == key)
            .ok_or_else(|| ManifestError(format!("`{pattern}` names axis `{key}`, which the grid lacks")))?;
        match (cpp, Elem::parse(value)) {
            (true, Some(e)) => out.push_str(e.cpp()),
            _ => out.push_str(value),
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve_elem(s: &str, params: &[(&str, &str)]) -> Result<Elem, ManifestError> {
    let name = substitute(s, params, false)?;
    Elem::parse(&name).ok_or_else(|| ManifestError(format!("`{s}` resolves to `{name}`, not an element type")))
}

impl KernelSpec {
    /// The grid points of this spec (each a value per axis, in axis order).
    pub fn points(&self) -> Result<Vec<Vec<&'static str>>, ManifestError> {
        if !self.points.is_empty() {
            for p in self.points {
                if p.len() != self.grid.len() {
                    return Err(ManifestError(format!("{}: point {p:?} has {} values for {} axes", self.name, p.len(), self.grid.len())));
                }
                for (v, ax) in p.iter().zip(self.grid) {
                    if !ax.values.contains(v) {
                        return Err(ManifestError(format!("{}: point value `{v}` is not on axis `{}`", self.name, ax.name)));
                    }
                }
            }
            return Ok(self.points.iter().map(|p| p.to_vec()).collect());
        }
        let mut out: Vec<Vec<&'static str>> = vec![vec![]];
        for ax in self.grid {
            if ax.values.is_empty() {
                return Err(ManifestError(format!("{}: axis `{}` has no values", self.name, ax.name)));
            }
            out = out
                .into_iter()
                .flat_map(|p| ax.values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push(*v);
                    q
                }))
                .collect();
        }
        Ok(out)
    }

    pub fn instances(&'static self, family: &'static str) -> Result<Vec<Instance>, ManifestError> {
        let mut out = Vec::new();
        for point in self.points()? {
            let params: Vec<(&'static str, &'static str)> = self.grid.iter().map(|a| a.name).zip(point).collect();
            let name = substitute(self.name, &params, false)?;
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ManifestError(format!("kernel name `{name}` is not an identifier")));
            }
            let call = substitute(self.template, &params, true)?;
            let mut args = Vec::new();
            for a in self.args {
                let ty = match a.ty {
                    Ty::Ptr(s) => ArgType::Ptr(resolve_elem(s, &params)?),
                    Ty::PtrMut(s) => ArgType::PtrMut(resolve_elem(s, &params)?),
                    Ty::Scalar(s) => {
                        let e = resolve_elem(s, &params)?;
                        if !e.is_scalar_ok() {
                            return Err(ManifestError(format!("{name}: scalar `{}` of type {} (pass f32/i32/u32/u64)", a.name, e.name())));
                        }
                        ArgType::Scalar(e)
                    }
                    Ty::TensorMap => ArgType::TensorMap,
                };
                args.push((a.name, ty));
            }
            out.push(Instance { family, spec: self, symbol: format!("dsv3_{name}"), name, call, params, args });
        }
        Ok(out)
    }
}

impl Family {
    pub fn instances(&'static self) -> Result<Vec<Instance>, ManifestError> {
        let mut out = Vec::new();
        for k in self.kernels {
            out.extend(k.instances(self.name)?);
        }
        Ok(out)
    }
}

/// Expands every family and checks the whole manifest: unique family names, unique kernel
/// names, identifiers everywhere.
pub fn expand(families: &'static [Family]) -> Result<Vec<Instance>, ManifestError> {
    let mut all = Vec::new();
    let mut fams = std::collections::HashSet::new();
    for f in families {
        if !fams.insert(f.name) {
            return Err(ManifestError(format!("family `{}` listed twice", f.name)));
        }
        all.extend(f.instances()?);
    }
    let mut names = std::collections::HashSet::new();
    for i in &all {
        if !names.insert(i.name.clone()) {
            return Err(ManifestError(format!("kernel `{}` is instantiated twice", i.name)));
        }
    }
    Ok(all)
}
