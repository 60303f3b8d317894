//! NCCL (NVIDIA) or RCCL (AMD: the same C API) loaded at run time, one communicator per local
//! GPU.
//!
//! The few C types dsv3 needs are declared here, not taken from a vendor's bindings, so that one
//! loader serves both: `ncclUniqueId` is 128 bytes passed by value, `ncclComm_t` an opaque
//! pointer, data types and reduction ops are C enums (ints) with the same values in NCCL and
//! RCCL, and the stream argument of `ncclAllReduce` is the vendor's opaque stream pointer
//! (`cudaStream_t` / `hipStream_t`, from [`CommStream::raw_stream`](super::device::CommStream::raw_stream)).
//!
//! The library is opened here because NCCL's runtime package installs only its SONAME
//! (`libnccl.so.2`). Search order for a CUDA communicator: `$DSV3_NCCL_LIB`, `libnccl.so.2`,
//! `libnccl.so`, `librccl.so.1`, `librccl.so`, then cudarc's candidates; for a HIP one:
//! `$DSV3_NCCL_LIB`, `librccl.so.1`, `librccl.so`, `/opt/rocm/lib/librccl.so.1`. A machine without
//! the library gets an error naming them.
//!
//! One process drives all its local GPUs, so every collective is one NCCL group: the calls of
//! all local ranks between `ncclGroupStart` / `ncclGroupEnd` (each with its GPU current).
//! NVLink SHARP / multicast stays off: `NCCL_NVLS_ENABLE=0` is set unless the caller set it (the
//! shared test machines require it; RCCL ignores it).

use super::comm::Communicator;
use super::device::local_vendor;
use super::dist_err;
use crate::backend::{DType, Vendor};
use crate::error::Result;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, OnceLock};

const B: &str = "nccl";

/// `ncclUniqueId`: 128 opaque bytes (`NCCL_UNIQUE_ID_BYTES`), passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; UNIQUE_ID_BYTES],
}

const UNIQUE_ID_BYTES: usize = 128;

/// `ncclComm_t`.
type CommHandle = *mut c_void;

/// `ncclDataType_t` values (NCCL's `nccl.h`; RCCL's `rccl.h` has the same).
mod data_type {
    pub const UINT8: i32 = 1;
    pub const INT32: i32 = 2;
    pub const UINT32: i32 = 3;
    pub const UINT64: i32 = 5;
    pub const FLOAT16: i32 = 6;
    pub const FLOAT32: i32 = 7;
    pub const BFLOAT16: i32 = 9;
}

/// `ncclRedOp_t::ncclSum`.
const OP_SUM: c_int = 0;

type FnVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type FnUniqueId = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type FnInitRank = unsafe extern "C" fn(*mut CommHandle, c_int, UniqueId, c_int) -> c_int;
/// The last argument is the vendor's stream (`cudaStream_t` / `hipStream_t`).
type FnAllReduce = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, CommHandle, *mut c_void) -> c_int;
type FnVoid = unsafe extern "C" fn() -> c_int;
type FnComm = unsafe extern "C" fn(CommHandle) -> c_int;
type FnErrStr = unsafe extern "C" fn(c_int) -> *const c_char;
type FnAsyncErr = unsafe extern "C" fn(CommHandle, *mut c_int) -> c_int;

/// The NCCL / RCCL entry points dsv3 uses.
pub struct NcclLib {
    pub path: String,
    pub version: i32,
    get_unique_id: FnUniqueId,
    comm_init_rank: FnInitRank,
    all_reduce: FnAllReduce,
    group_start: FnVoid,
    group_end: FnVoid,
    comm_destroy: FnComm,
    comm_abort: FnComm,
    get_error_string: FnErrStr,
    comm_get_async_error: FnAsyncErr,
}

/// The library's name in messages.
fn lib_name(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Hip => "RCCL",
        _ => "NCCL",
    }
}

fn candidates(vendor: Vendor) -> Vec<String> {
    let mut v: Vec<String> = std::env::var("DSV3_NCCL_LIB").ok().into_iter().collect();
    let names: &[&str] = match vendor {
        Vendor::Hip => &["librccl.so.1", "librccl.so", "/opt/rocm/lib/librccl.so.1"],
        _ => &["libnccl.so.2", "libnccl.so", "librccl.so.1", "librccl.so"],
    };
    v.extend(names.iter().map(|n| n.to_string()));
    #[cfg(feature = "cuda")]
    if vendor == Vendor::Cuda {
        for n in cudarc::get_lib_name_candidates("nccl") {
            if !v.contains(&n) {
                v.push(n);
            }
        }
    }
    v
}

fn load(vendor: Vendor) -> std::result::Result<NcclLib, String> {
    let names = candidates(vendor);
    let mut tried = Vec::new();
    for name in &names {
        let lib = match unsafe { libloading::Library::new(name) } {
            Ok(l) => l,
            Err(e) => {
                tried.push(format!("{name} ({e})"));
                continue;
            }
        };
        // The library stays loaded for the life of the process.
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        unsafe fn sym<T: Copy>(lib: &'static libloading::Library, name: &str, path: &str) -> std::result::Result<T, String> {
            lib.get::<T>(name.as_bytes()).map(|s| *s).map_err(|e| format!("{path}: no symbol {name} ({e})"))
        }
        unsafe {
            let get_version: FnVersion = sym(lib, "ncclGetVersion", name)?;
            let mut version = 0;
            get_version(&mut version);
            return Ok(NcclLib {
                path: name.clone(),
                version,
                get_unique_id: sym(lib, "ncclGetUniqueId", name)?,
                comm_init_rank: sym(lib, "ncclCommInitRank", name)?,
                all_reduce: sym(lib, "ncclAllReduce", name)?,
                group_start: sym(lib, "ncclGroupStart", name)?,
                group_end: sym(lib, "ncclGroupEnd", name)?,
                comm_destroy: sym(lib, "ncclCommDestroy", name)?,
                comm_abort: sym(lib, "ncclCommAbort", name)?,
                get_error_string: sym(lib, "ncclGetErrorString", name)?,
                comm_get_async_error: sym(lib, "ncclCommGetAsyncError", name)?,
            });
        }
    }
    Err(format!("{} library not found (tried {}); set DSV3_NCCL_LIB to its path", lib_name(vendor), tried.join(", ")))
}

/// The process-wide NCCL (or, for [`Vendor::Hip`], RCCL) library, loaded on first use.
pub fn library_for(vendor: Vendor) -> Result<&'static NcclLib> {
    static NCCL: OnceLock<std::result::Result<NcclLib, String>> = OnceLock::new();
    static RCCL: OnceLock<std::result::Result<NcclLib, String>> = OnceLock::new();
    let cell = if vendor == Vendor::Hip { &RCCL } else { &NCCL };
    cell.get_or_init(|| load(vendor)).as_ref().map_err(|e| dist_err(B, e.clone()))
}

/// The library for this machine's GPUs ([`local_vendor`]).
pub fn library() -> Result<&'static NcclLib> {
    library_for(local_vendor()?)
}

/// Whether an NCCL (or RCCL) library for this machine's GPUs can be loaded here.
pub fn available() -> bool {
    library().is_ok()
}

impl NcclLib {
    fn check(&self, what: impl std::fmt::Display, r: c_int) -> Result<()> {
        if r == 0 {
            return Ok(());
        }
        let s = unsafe { (self.get_error_string)(r) };
        let msg = if s.is_null() { String::new() } else { unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned() };
        Err(dist_err(B, format!("{what}: error {r} ({msg})")))
    }
}

/// A fresh NCCL unique id for this machine's GPUs (node 0 makes it and hands it out through the
/// rendezvous).
pub fn unique_id() -> Result<Vec<u8>> {
    unique_id_for(local_vendor()?)
}

/// A fresh unique id of `vendor`'s library (NCCL or RCCL).
pub fn unique_id_for(vendor: Vendor) -> Result<Vec<u8>> {
    let lib = library_for(vendor)?;
    let mut id = UniqueId { internal: [0; UNIQUE_ID_BYTES] };
    lib.check("ncclGetUniqueId", unsafe { (lib.get_unique_id)(&mut id) })?;
    Ok(id.internal.iter().map(|c| *c as u8).collect())
}

fn nccl_dtype(d: DType) -> Result<c_int> {
    use data_type::*;
    Ok(match d {
        DType::F32 => FLOAT32,
        DType::Bf16 => BFLOAT16,
        DType::F16 => FLOAT16,
        DType::I32 => INT32,
        DType::U32 => UINT32,
        DType::U64 => UINT64,
        DType::U8 => UINT8,
        other => return Err(dist_err(B, format!("no NCCL type for {other}"))),
    })
}

fn set_default_env() {
    // NVLink SHARP (multicast objects) can take a shared host's GPUs out of service; dsv3 does
    // not rely on it.
    if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
        std::env::set_var("NCCL_NVLS_ENABLE", "0");
    }
}

/// One NCCL (RCCL) communicator per local rank of a [`Communicator`].
pub struct Nccl {
    comm: Arc<Communicator>,
    comms: Vec<CommHandle>,
    lib: &'static NcclLib,
}

// NCCL communicators may be used from any thread (one at a time, which &self + groups ensure
// for dsv3's calls).
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

impl Nccl {
    /// Communicators for the local ranks of `comm` in the world of the unique id `id` (from
    /// [`unique_id`], the same bytes on every node).
    pub fn new(comm: Arc<Communicator>, id: &[u8]) -> Result<Self> {
        set_default_env();
        let lib = library_for(comm.vendor())?;
        if id.len() != UNIQUE_ID_BYTES {
            return Err(dist_err(B, format!("an NCCL unique id has {UNIQUE_ID_BYTES} bytes, got {}", id.len())));
        }
        let mut uid = UniqueId { internal: [0; UNIQUE_ID_BYTES] };
        for (d, s) in uid.internal.iter_mut().zip(id) {
            *d = *s as c_char;
        }
        let n = comm.local_size();
        let mut comms: Vec<CommHandle> = vec![std::ptr::null_mut(); n];
        lib.check("ncclGroupStart", unsafe { (lib.group_start)() })?;
        let mut first_err = None;
        for (i, c) in comms.iter_mut().enumerate() {
            if let Err(e) = comm.stream(i).make_current() {
                first_err.get_or_insert(e);
                continue;
            }
            let r = unsafe { (lib.comm_init_rank)(c, comm.world_size() as c_int, uid, comm.global_rank(i) as c_int) };
            if let Err(e) = lib.check(format!("ncclCommInitRank(rank {} of {})", comm.global_rank(i), comm.world_size()), r) {
                first_err.get_or_insert(e);
            }
        }
        let r = unsafe { (lib.group_end)() };
        if let Some(e) = first_err {
            return Err(e);
        }
        lib.check(format!("ncclGroupEnd (init of {} local rank(s) of {})", n, comm.world_size()), r)?;
        Ok(Nccl { comm, comms, lib })
    }

    /// A single-node world over every rank of `comm` (makes its own unique id).
    pub fn single_node(comm: Arc<Communicator>) -> Result<Self> {
        if comm.nnodes() != 1 {
            return Err(dist_err(B, "single_node needs a one-node communicator; pass the rendezvous' unique id to Nccl::new"));
        }
        let id = unique_id_for(comm.vendor())?;
        Self::new(comm, &id)
    }

    pub fn version(&self) -> i32 {
        self.lib.version
    }
    pub fn library_path(&self) -> &str {
        &self.lib.path
    }
    pub fn communicator(&self) -> &Arc<Communicator> {
        &self.comm
    }

    /// Sum all-reduce of `count` elements: `outputs[i] = Σ inputs` for every local rank `i`
    /// (in place when they are equal), queued on each rank's stream as one NCCL group.
    ///
    /// # Safety
    /// `inputs[i]` / `outputs[i]` are device allocations of local rank `i`'s GPU holding
    /// `count` elements of `dtype`.
    pub unsafe fn all_reduce(&self, dtype: DType, count: usize, inputs: &[u64], outputs: &[u64]) -> Result<()> {
        let n = self.comms.len();
        if inputs.len() != n || outputs.len() != n {
            return Err(dist_err(B, format!("all_reduce: {} inputs and {} outputs for {n} local rank(s)", inputs.len(), outputs.len())));
        }
        let dt = nccl_dtype(dtype)?;
        let lib = self.lib;
        lib.check("ncclGroupStart", (lib.group_start)())?;
        let mut first_err = None;
        for i in 0..n {
            let s = self.comm.stream(i);
            if let Err(e) = s.make_current() {
                first_err.get_or_insert(e);
                continue;
            }
            let r = (lib.all_reduce)(inputs[i] as *const c_void, outputs[i] as *mut c_void, count, dt, OP_SUM, self.comms[i], s.raw_stream());
            if let Err(e) = lib.check(format!("ncclAllReduce({count} x {dtype}) on rank {}", self.comm.global_rank(i)), r) {
                first_err.get_or_insert(e);
            }
        }
        let r = (lib.group_end)();
        if let Some(e) = first_err {
            return Err(e);
        }
        lib.check("ncclGroupEnd (all_reduce)", r)
    }

    /// The first asynchronous error any local communicator reports (e.g. a peer that died).
    pub fn async_error(&self) -> Result<()> {
        for (i, c) in self.comms.iter().enumerate() {
            let mut r: c_int = 0;
            self.lib.check("ncclCommGetAsyncError", unsafe { (self.lib.comm_get_async_error)(*c, &mut r) })?;
            if r != 0 && r != 7 {
                // 7 = ncclInProgress
                self.lib.check(format!("rank {} (asynchronous)", self.comm.global_rank(i)), r)?;
            }
        }
        Ok(())
    }

    /// Tears the communicators down without waiting for peers (after a peer died).
    pub fn abort(mut self) {
        for (i, c) in self.comms.drain(..).enumerate() {
            let _ = self.comm.stream(i).make_current();
            unsafe {
                (self.lib.comm_abort)(c);
            }
        }
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        let _ = self.comm.synchronize();
        for (i, c) in self.comms.drain(..).enumerate() {
            let _ = self.comm.stream(i).make_current();
            unsafe {
                (self.lib.comm_destroy)(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values declared here are NCCL's (cudarc's bindings of `nccl.h`).
    #[cfg(feature = "cuda")]
    #[test]
    fn c_types_match_ncclh() {
        use cudarc::nccl::sys::{ncclDataType_t as T, ncclRedOp_t, ncclUniqueId};
        assert_eq!(std::mem::size_of::<UniqueId>(), std::mem::size_of::<ncclUniqueId>());
        assert_eq!(std::mem::align_of::<UniqueId>(), std::mem::align_of::<ncclUniqueId>());
        use data_type::*;
        for (ours, theirs) in [
            (UINT8, T::ncclUint8),
            (INT32, T::ncclInt32),
            (UINT32, T::ncclUint32),
            (UINT64, T::ncclUint64),
            (FLOAT16, T::ncclFloat16),
            (FLOAT32, T::ncclFloat32),
            (BFLOAT16, T::ncclBfloat16),
        ] {
            assert_eq!(ours, theirs as i32, "{theirs:?}");
        }
        assert_eq!(OP_SUM, ncclRedOp_t::ncclSum as i32);
    }

    #[test]
    fn library_candidates_per_vendor() {
        let hip = candidates(Vendor::Hip);
        assert!(hip.iter().any(|n| n.starts_with("librccl")) && !hip.iter().any(|n| n.contains("libnccl")), "{hip:?}");
        let cuda = candidates(Vendor::Cuda);
        assert!(cuda.iter().position(|n| n == "libnccl.so.2") < cuda.iter().position(|n| n == "librccl.so.1"), "{cuda:?}");
        assert_eq!(nccl_dtype(DType::Bf16).unwrap(), 9);
        assert!(nccl_dtype(DType::I8).is_err());
    }
}
