//! Timing shared by the GPU kernel benches (harness = false executables): CUDA events around
//! back-to-back launches, and the device-to-device copy ceiling measured in the same process.

use dsv3::backend::cuda::CudaStream;
use dsv3::backend::mla::cuda_util;
use dsv3::backend::{DType, DeviceTensor, GpuStream};

/// Median over 7 batches of the per-launch mean of 20 back-to-back launches, in µs.
pub fn time_us(s: &CudaStream, mut launch: impl FnMut(usize)) -> f64 {
    for i in 0..5 {
        launch(i);
    }
    s.synchronize().unwrap();
    let timer = cuda_util::EventTimer::new(s).unwrap();
    let mut v = Vec::new();
    let mut i = 0;
    for _ in 0..7 {
        timer.start().unwrap();
        for _ in 0..20 {
            launch(i);
            i += 1;
        }
        v.push(timer.stop_ms().unwrap() as f64 * 1000.0 / 20.0);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Device-to-device copy bandwidth (read + write bytes), GB/s.
pub fn copy_gbs(s: &CudaStream) -> f64 {
    let bytes = 1usize << 30;
    let a = DeviceTensor::empty(s, DType::U8, &[bytes]).unwrap();
    let b = DeviceTensor::empty(s, DType::U8, &[bytes]).unwrap();
    unsafe { s.memset_u8(a.raw(), 1, bytes).unwrap() };
    let us = time_us(s, |_| unsafe { s.copy_dtod(b.raw(), a.raw(), bytes).unwrap() });
    2.0 * bytes as f64 / (us * 1e3)
}
