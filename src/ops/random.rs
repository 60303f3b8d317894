//! The device's counter-based uniform generator (`kernels/include/dsv3/platform.h`: splitmix64
//! finaliser), mirrored on the CPU: random-weight models made on the GPU are reproducible and
//! checkable element by element.

/// splitmix64's finaliser.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// Uniform in (0, 1) from 24 random bits (never 0 or 1): element `counter` of stream `seed`.
pub fn uniform01(seed: u64, counter: u64) -> f32 {
    let r = mix64(seed ^ mix64(counter));
    ((r >> 40) as u32 as f32 + 0.5) * (1.0 / 16777216.0)
}

/// `lo + (hi - lo) · uniform01(seed, i)` in f32 with one rounding (a fused multiply-add), as
/// `fill_uniform` computes it before rounding to its output type.
pub fn uniform(seed: u64, i: u64, lo: f32, hi: f32) -> f32 {
    (hi - lo).mul_add(uniform01(seed, i), lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_covers_the_interval_evenly() {
        let n = 100_000u64;
        let v: Vec<f32> = (0..n).map(|i| uniform(7, i, -1.0, 1.0)).collect();
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        // U(-1, 1): mean 0, variance 1/3; 5σ bounds for 10⁵ draws.
        assert!(mean.abs() < 5.0 * (1.0f64 / 3.0 / n as f64).sqrt(), "mean {mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.01, "variance {var}");
        // Different seeds give different streams.
        assert_ne!(uniform01(1, 0), uniform01(2, 0));
    }
}
