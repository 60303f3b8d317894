//! NCCL (or RCCL: the same C API) loaded at run time, one communicator per local GPU.
//!
//! Types come from cudarc's `nccl` module; the library itself is opened here because NCCL's
//! runtime package installs only its SONAME (`libnccl.so.2`), which cudarc's loader does not
//! try. Search order: `$DSV3_NCCL_LIB`, `libnccl.so.2`, `libnccl.so`, `librccl.so.1`,
//! `librccl.so`, then cudarc's candidates. A machine without NCCL gets an error naming them.
//!
//! One process drives all its local GPUs, so every collective is one NCCL group: the calls of
//! all local ranks between `ncclGroupStart` / `ncclGroupEnd` (each with its GPU's context
//! current). NVLink SHARP / multicast stays off: `NCCL_NVLS_ENABLE=0` is set unless the caller
//! set it (the shared test machines require it).

use super::comm::Communicator;
use super::dist_err;
use crate::backend::DType;
use crate::error::Result;
use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, OnceLock};

const B: &str = "nccl";

type FnVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type FnUniqueId = unsafe extern "C" fn(*mut ncclUniqueId) -> c_int;
type FnInitRank = unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> c_int;
type FnAllReduce =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t) -> c_int;
type FnVoid = unsafe extern "C" fn() -> c_int;
type FnComm = unsafe extern "C" fn(ncclComm_t) -> c_int;
type FnErrStr = unsafe extern "C" fn(c_int) -> *const c_char;
type FnAsyncErr = unsafe extern "C" fn(ncclComm_t, *mut c_int) -> c_int;

/// The NCCL entry points dsv3 uses.
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

fn candidates() -> Vec<String> {
    let mut v: Vec<String> = std::env::var("DSV3_NCCL_LIB").ok().into_iter().collect();
    for n in ["libnccl.so.2", "libnccl.so", "librccl.so.1", "librccl.so"] {
        v.push(n.to_string());
    }
    for n in cudarc::get_lib_name_candidates("nccl") {
        if !v.contains(&n) {
            v.push(n);
        }
    }
    v
}

fn load() -> std::result::Result<NcclLib, String> {
    let names = candidates();
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
    Err(format!("NCCL library not found (tried {}); set DSV3_NCCL_LIB to its path", tried.join(", ")))
}

/// The process-wide NCCL library, loaded on first use.
pub fn library() -> Result<&'static NcclLib> {
    static LIB: OnceLock<std::result::Result<NcclLib, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(|e| dist_err(B, e.clone()))
}

/// Whether an NCCL library can be loaded here.
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

/// A fresh NCCL unique id (node 0 makes it and hands it out through the rendezvous).
pub fn unique_id() -> Result<Vec<u8>> {
    let lib = library()?;
    let mut id = ncclUniqueId { internal: [0; 128] };
    lib.check("ncclGetUniqueId", unsafe { (lib.get_unique_id)(&mut id) })?;
    Ok(id.internal.iter().map(|c| *c as u8).collect())
}

fn nccl_dtype(d: DType) -> Result<ncclDataType_t> {
    Ok(match d {
        DType::F32 => ncclDataType_t::ncclFloat32,
        DType::Bf16 => ncclDataType_t::ncclBfloat16,
        DType::F16 => ncclDataType_t::ncclFloat16,
        DType::I32 => ncclDataType_t::ncclInt32,
        DType::U32 => ncclDataType_t::ncclUint32,
        DType::U64 => ncclDataType_t::ncclUint64,
        DType::U8 => ncclDataType_t::ncclUint8,
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

/// One NCCL communicator per local rank of a [`Communicator`].
pub struct Nccl {
    comm: Arc<Communicator>,
    comms: Vec<ncclComm_t>,
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
        let lib = library()?;
        if id.len() != 128 {
            return Err(dist_err(B, format!("an NCCL unique id has 128 bytes, got {}", id.len())));
        }
        let mut uid = ncclUniqueId { internal: [0; 128] };
        for (d, s) in uid.internal.iter_mut().zip(id) {
            *d = *s as c_char;
        }
        let n = comm.local_size();
        let mut comms: Vec<ncclComm_t> = vec![std::ptr::null_mut(); n];
        lib.check("ncclGroupStart", unsafe { (lib.group_start)() })?;
        let mut first_err = None;
        for (i, c) in comms.iter_mut().enumerate() {
            if let Err(e) = comm.stream(i).context().bind_to_thread() {
                first_err.get_or_insert(dist_err(B, format!("bind rank {i}: {e:?}")));
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
        let id = unique_id()?;
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
            if let Err(e) = s.context().bind_to_thread() {
                first_err.get_or_insert(dist_err(B, format!("bind rank {i}: {e:?}")));
                continue;
            }
            let r = (lib.all_reduce)(
                inputs[i] as *const c_void,
                outputs[i] as *mut c_void,
                count,
                dt,
                ncclRedOp_t::ncclSum,
                self.comms[i],
                s.cu_stream() as cudaStream_t,
            );
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
            let _ = self.comm.stream(i).context().bind_to_thread();
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
            let _ = self.comm.stream(i).context().bind_to_thread();
            unsafe {
                (self.lib.comm_destroy)(c);
            }
        }
    }
}
