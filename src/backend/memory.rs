//! Device memory: a caching allocator over each backend's raw allocator, device buffers that
//! return to it on drop, and [`DeviceTensor`] (a buffer with a dtype and a shape).
//!
//! The cache is stream-ordered in the PyTorch sense: a stream owns its allocator, a freed block
//! is reused by later work on the same stream, which runs after the work that used it.

use super::stream::GpuStream;
use super::types::{DType, DevPtr, DevPtrMut, DeviceElem};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A backend's uncached device allocation.
pub trait RawAllocator: Send + Sync {
    fn backend(&self) -> &'static str;
    fn raw_alloc(&self, bytes: usize) -> Result<u64>;
    /// # Safety
    /// `ptr` came from `raw_alloc` of this allocator and is not used afterwards.
    unsafe fn raw_free(&self, ptr: u64) -> Result<()>;
}

#[derive(Default, Debug, Clone, Copy)]
pub struct AllocStats {
    /// Bytes in live buffers (rounded sizes).
    pub in_use: usize,
    /// Bytes cached for reuse.
    pub cached: usize,
    /// Raw allocations made.
    pub raw_allocs: usize,
}

pub struct CachingAllocator {
    raw: Box<dyn RawAllocator>,
    state: Mutex<(HashMap<usize, Vec<u64>>, AllocStats)>,
    /// While retaining ([`CachingAllocator::begin_retain`]): blocks freed since, kept out of the cache.
    retained: Mutex<Option<Vec<(u64, usize)>>>,
}

/// Size classes: powers of two from 512 B to 64 MiB, then multiples of 2 MiB.
pub fn round_size(bytes: usize) -> usize {
    let b = bytes.max(1);
    if b <= 64 << 20 {
        b.next_power_of_two().max(512)
    } else {
        b.div_ceil(2 << 20) * (2 << 20)
    }
}

impl CachingAllocator {
    pub fn new(raw: Box<dyn RawAllocator>) -> Arc<Self> {
        Arc::new(CachingAllocator {
            raw,
            state: Mutex::new((HashMap::new(), AllocStats::default())),
            retained: Mutex::new(None),
        })
    }

    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        let size = round_size(bytes);
        let reuse = {
            let mut st = self.state.lock().unwrap();
            let p = st.0.get_mut(&size).and_then(|v| v.pop());
            if p.is_some() {
                st.1.cached -= size;
            }
            st.1.in_use += size;
            p
        };
        let ptr = match reuse {
            Some(p) => p,
            None => {
                let r = self.raw.raw_alloc(size).or_else(|_| {
                    // Out of memory: give the cache back and retry once.
                    self.empty_cache()?;
                    self.raw.raw_alloc(size)
                });
                match r {
                    Ok(p) => {
                        self.state.lock().unwrap().1.raw_allocs += 1;
                        p
                    }
                    Err(e) => {
                        self.state.lock().unwrap().1.in_use -= size;
                        return Err(e);
                    }
                }
            }
        };
        Ok(DeviceBuffer { ptr, bytes, size, pool: self.clone() })
    }

    fn give_back(&self, ptr: u64, size: usize) {
        if let Some(kept) = self.retained.lock().unwrap().as_mut() {
            kept.push((ptr, size));
            return;
        }
        let mut st = self.state.lock().unwrap();
        st.0.entry(size).or_default().push(ptr);
        st.1.in_use -= size;
        st.1.cached += size;
    }

    /// From now until [`CachingAllocator::end_retain`], freed blocks are not reused: a graph
    /// captured meanwhile owns every block its work touched, however the cache is used later.
    pub fn begin_retain(&self) {
        *self.retained.lock().unwrap() = Some(Vec::new());
    }

    /// Ends retaining; the blocks freed since `begin_retain` return to the cache when the result
    /// is dropped (with the graph that uses them).
    pub fn end_retain(self: &Arc<Self>) -> RetainedBlocks {
        let blocks = self.retained.lock().unwrap().take().unwrap_or_default();
        RetainedBlocks { blocks, pool: self.clone() }
    }

    /// Frees every cached block.
    pub fn empty_cache(&self) -> Result<()> {
        let blocks: Vec<u64> = {
            let mut st = self.state.lock().unwrap();
            st.1.cached = 0;
            st.0.drain().flat_map(|(_, v)| v).collect()
        };
        for p in blocks {
            unsafe { self.raw.raw_free(p)? };
        }
        Ok(())
    }

    pub fn stats(&self) -> AllocStats {
        self.state.lock().unwrap().1
    }
}

impl Drop for CachingAllocator {
    fn drop(&mut self) {
        let _ = self.empty_cache();
    }
}

/// Blocks kept out of the cache by [`CachingAllocator::begin_retain`]; back to it on drop.
pub struct RetainedBlocks {
    blocks: Vec<(u64, usize)>,
    pool: Arc<CachingAllocator>,
}

impl RetainedBlocks {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.1).sum()
    }
}

impl Drop for RetainedBlocks {
    fn drop(&mut self) {
        for (ptr, size) in self.blocks.drain(..) {
            self.pool.give_back(ptr, size);
        }
    }
}

/// A device allocation; returns to its allocator's cache on drop.
pub struct DeviceBuffer {
    ptr: u64,
    bytes: usize,
    size: usize,
    pool: Arc<CachingAllocator>,
}

impl DeviceBuffer {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.pool.give_back(self.ptr, self.size);
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:#x}, {} bytes)", self.ptr, self.bytes)
    }
}

fn as_bytes<T: DeviceElem>(s: &[T]) -> &[u8] {
    // SAFETY: every DeviceElem is plain old data without padding.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
}

/// A dense, row-major device tensor.
#[derive(Debug)]
pub struct DeviceTensor {
    buf: DeviceBuffer,
    dtype: DType,
    shape: Vec<usize>,
}

impl DeviceTensor {
    /// Uninitialised.
    pub fn empty(s: &dyn GpuStream, dtype: DType, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        let buf = s.alloc((n * dtype.size()).max(1))?;
        Ok(DeviceTensor { buf, dtype, shape: shape.to_vec() })
    }

    /// Filled with 0xff bytes: NaN for f32 / bf16 / f16 / e4m3fn, -1 for i32.
    pub fn poisoned(s: &dyn GpuStream, dtype: DType, shape: &[usize]) -> Result<Self> {
        let t = Self::empty(s, dtype, shape)?;
        t.poison(s)?;
        Ok(t)
    }

    pub fn poison(&self, s: &dyn GpuStream) -> Result<()> {
        unsafe { s.memset_u8(self.buf.ptr(), 0xff, self.bytes()) }
    }

    pub fn from_slice<T: DeviceElem>(s: &dyn GpuStream, shape: &[usize], data: &[T]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::InvalidArgument(format!("tensor of shape {shape:?} needs {n} elements, got {}", data.len())));
        }
        let t = Self::empty(s, T::DTYPE, shape)?;
        if n > 0 {
            unsafe { s.copy_htod(t.buf.ptr(), as_bytes(data))? };
        }
        Ok(t)
    }

    /// f32 host data stored as `dtype` (f32, bf16 or f16; rounding to nearest even).
    pub fn from_f32(s: &dyn GpuStream, shape: &[usize], data: &[f32], dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 => Self::from_slice(s, shape, data),
            DType::Bf16 => Self::from_slice(s, shape, &data.iter().map(|&x| half::bf16::from_f32(x)).collect::<Vec<_>>()),
            DType::F16 => Self::from_slice(s, shape, &data.iter().map(|&x| half::f16::from_f32(x)).collect::<Vec<_>>()),
            d => Err(Error::InvalidArgument(format!("from_f32: cannot store f32 data as {d}"))),
        }
    }

    pub fn to_vec<T: DeviceElem + Default>(&self, s: &dyn GpuStream) -> Result<Vec<T>> {
        self.check_dtype(T::DTYPE)?;
        let mut v = vec![T::default(); self.numel()];
        if !v.is_empty() {
            // SAFETY: T is plain old data; the buffer holds numel elements.
            let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v.as_slice())) };
            unsafe { s.copy_dtoh(bytes, self.buf.ptr())? };
        }
        Ok(v)
    }

    /// Rows of an f32 tensor [R, width] on the host, grouped: group i gets the next `counts[i]`
    /// rows (row-major, `counts[i]·width` values). One staged device-to-host copy, no
    /// intermediate host buffer (a batch's logits are hundreds of MB).
    pub fn rows_f32(&self, s: &dyn GpuStream, counts: &[usize], width: usize) -> Result<Vec<Vec<f32>>> {
        self.check_dtype(DType::F32)?;
        let total: usize = counts.iter().sum();
        if total * width > self.numel() {
            return Err(Error::InvalidArgument(format!("rows_f32: {total} rows of {width} from a tensor of {:?}", self.shape)));
        }
        let mut out: Vec<Vec<f32>> = counts.iter().map(|&n| Vec::with_capacity(n * width)).collect();
        if total * width == 0 {
            return Ok(out);
        }
        let mut fill = |staged: &[u8]| -> Result<()> {
            let mut at = 0;
            for (v, &n) in out.iter_mut().zip(counts) {
                let bytes = &staged[at..at + n * width * 4];
                // SAFETY: any 4 bytes are a valid f32; align_to splits off what is misaligned.
                match unsafe { bytes.align_to::<f32>() } {
                    ([], values, []) => v.extend_from_slice(values),
                    _ => v.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
                }
                at += n * width * 4;
            }
            Ok(())
        };
        // SAFETY: the first total·width values lie inside this tensor's buffer.
        unsafe { s.with_host_copy(self.buf.ptr(), total * width * 4, &mut fill)? };
        Ok(out)
    }

    /// The values widened to f32 (f32, bf16, f16, i32, u32).
    pub fn to_f32(&self, s: &dyn GpuStream) -> Result<Vec<f32>> {
        Ok(match self.dtype {
            DType::F32 => self.to_vec::<f32>(s)?,
            DType::Bf16 => self.to_vec::<half::bf16>(s)?.into_iter().map(|x| x.to_f32()).collect(),
            DType::F16 => self.to_vec::<half::f16>(s)?.into_iter().map(|x| x.to_f32()).collect(),
            DType::I32 => self.to_vec::<i32>(s)?.into_iter().map(|x| x as f32).collect(),
            DType::U32 => self.to_vec::<u32>(s)?.into_iter().map(|x| x as f32).collect(),
            d => return Err(Error::InvalidArgument(format!("to_f32: {d} tensors are read with to_vec"))),
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    pub fn raw(&self) -> u64 {
        self.buf.ptr()
    }
    /// Same buffer, another shape with as many elements.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::InvalidArgument(format!("cannot reshape {:?} into {shape:?}", self.shape)));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    pub fn check_dtype(&self, d: DType) -> Result<()> {
        if self.dtype != d {
            return Err(Error::InvalidArgument(format!("tensor {:?} is {}, expected {d}", self.shape, self.dtype)));
        }
        Ok(())
    }
    pub fn ptr<T: DeviceElem>(&self) -> Result<DevPtr<T>> {
        self.check_dtype(T::DTYPE)?;
        Ok(DevPtr::from_raw(self.buf.ptr()))
    }
    pub fn ptr_mut<T: DeviceElem>(&mut self) -> Result<DevPtrMut<T>> {
        self.check_dtype(T::DTYPE)?;
        Ok(DevPtrMut::from_raw(self.buf.ptr()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(Mutex<(u64, Vec<u64>)>);
    impl RawAllocator for Fake {
        fn backend(&self) -> &'static str {
            "fake"
        }
        fn raw_alloc(&self, bytes: usize) -> Result<u64> {
            let mut g = self.0.lock().unwrap();
            let p = g.0;
            g.0 += bytes as u64;
            Ok(p + 0x1000)
        }
        unsafe fn raw_free(&self, ptr: u64) -> Result<()> {
            self.0.lock().unwrap().1.push(ptr);
            Ok(())
        }
    }

    #[test]
    fn caches_and_reuses_by_size_class() {
        let a = CachingAllocator::new(Box::new(Fake(Mutex::new((0, vec![])))));
        let b1 = a.alloc(1000).unwrap();
        let p1 = b1.ptr();
        assert_eq!(a.stats().in_use, 1024);
        drop(b1);
        assert_eq!(a.stats().cached, 1024);
        let b2 = a.alloc(600).unwrap();
        assert_eq!(b2.ptr(), p1, "same size class reuses the block");
        let b3 = a.alloc(600).unwrap();
        assert_ne!(b3.ptr(), p1);
        assert_eq!(a.stats().raw_allocs, 2);
        drop((b2, b3));
        a.empty_cache().unwrap();
        assert_eq!(a.stats().cached, 0);
        assert_eq!(round_size(100 << 20), 100 << 20);
        // Retained blocks are not reused until released.
        a.begin_retain();
        let r1 = a.alloc(1000).unwrap();
        let p = r1.ptr();
        drop(r1);
        let r2 = a.alloc(1000).unwrap();
        assert_ne!(r2.ptr(), p, "a retained block is not handed out again");
        let kept = a.end_retain();
        assert_eq!(kept.bytes(), 1024);
        drop(r2);
        let r3 = a.alloc(1000).unwrap();
        assert_ne!(r3.ptr(), p);
        drop(kept);
        let r4 = a.alloc(1000).unwrap();
        assert_eq!(r4.ptr(), p, "released with its holder, the block is reused");
        assert_eq!(round_size(1), 512);
    }
}
