//! All-reduce latency on the GPUs of one machine (2+; `DSV3_BENCH_GPUS=N` takes the first N):
//! bf16, 4 KB to 64 MB, the custom push (up to 4 MB), one-shot and two-shot kernels, the
//! dispatcher (`dsv3::dist::AllReduce`, default policy) and NCCL, each eagerly (back-to-back
//! launches from the host) and inside CUDA graphs (G calls captured per graph). Prints ONE table:
//! µs per call (CUDA events around back-to-back calls, the slowest rank, median of 11 runs), the
//! bus bandwidth of the dispatcher and NCCL (size · 2(n−1)/n / time), NCCL's time over the
//! dispatcher's and over the best custom kernel's, then the thresholds the table suggests.
//!
//! Run on the GPU machine: `gpu-bundle --filter '^allreduce-'`, then
//! `NCCL_NVLS_ENABLE=0 bash .gpu/run.sh '^allreduce-'`. Without 2 CUDA devices it panics.

#![allow(clippy::needless_range_loop)]

use cudarc::driver::{result, sys};
use dsv3::backend::cuda::{device_count, CudaStream};
use dsv3::backend::{DType, DeviceBuffer};
use dsv3::dist::allreduce::CustomAllReduce;
use dsv3::dist::comm::Communicator;
use dsv3::dist::nccl::Nccl;
use dsv3::dist::{Algo, AllReduce, Policy};
use std::sync::Arc;

const REPS: usize = 11;
/// Calls per captured graph.
const G: usize = 20;
/// The largest push message measured (its receive buffers: 3 · world · this per GPU).
const PUSH_MAX: usize = 4 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Push,
    OneShot,
    TwoShot,
    Dispatch,
    Nccl,
}

struct Bench {
    comm: Arc<Communicator>,
    custom: Option<CustomAllReduce>,
    dispatch: AllReduce,
    ins: Vec<u64>,
    outs: Vec<u64>,
    _keep: Vec<DeviceBuffer>,
}

impl Bench {
    unsafe fn call(&self, m: Method, n: usize) -> dsv3::Result<()> {
        let d = DType::Bf16;
        match m {
            Method::Push | Method::OneShot | Method::TwoShot => {
                let a = match m {
                    Method::Push => Algo::Push,
                    Method::OneShot => Algo::OneShot,
                    _ => Algo::TwoShot,
                };
                match &self.custom {
                    Some(c) => c.all_reduce(a, d, n, &self.ins, &self.outs),
                    None => Err(dsv3::Error::InvalidArgument("no custom all-reduce (no peer access)".into())),
                }
            }
            Method::Dispatch => self.dispatch.all_reduce(d, n, &self.ins, &self.outs).map(|_| ()),
            Method::Nccl => match self.dispatch.nccl() {
                Some(x) => x.all_reduce(d, n, &self.ins, &self.outs),
                None => Err(dsv3::Error::InvalidArgument("no NCCL".into())),
            },
        }
    }

    /// Rank `r`'s stream as the CUDA stream the events are recorded on.
    fn cs(&self, r: usize) -> &CudaStream {
        self.comm.cuda_stream(r).expect("a CUDA communicator")
    }

    /// Microseconds per call: events on every rank around `iters` calls made by `body`, the
    /// slowest rank, median over REPS runs.
    fn time(&self, iters: usize, mut body: impl FnMut() -> dsv3::Result<()>) -> dsv3::Result<f64> {
        let w = self.comm.local_size();
        let mut evs = Vec::new();
        for r in 0..w {
            self.cs(r).context().bind_to_thread().unwrap();
            let a = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).unwrap();
            let b = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).unwrap();
            evs.push((a, b));
        }
        let mut samples = Vec::new();
        for _ in 0..REPS {
            for r in 0..w {
                self.cs(r).context().bind_to_thread().unwrap();
                unsafe { result::event::record(evs[r].0, self.cs(r).cu_stream()) }.unwrap();
            }
            for _ in 0..iters {
                body()?;
            }
            for r in 0..w {
                self.cs(r).context().bind_to_thread().unwrap();
                unsafe { result::event::record(evs[r].1, self.cs(r).cu_stream()) }.unwrap();
            }
            self.comm.synchronize()?;
            let mut worst = 0f64;
            for r in 0..w {
                self.cs(r).context().bind_to_thread().unwrap();
                let ms = unsafe { result::event::elapsed(evs[r].0, evs[r].1) }.unwrap() as f64;
                worst = worst.max(ms);
            }
            samples.push(worst * 1000.0 / iters as f64);
        }
        for (r, (a, b)) in evs.into_iter().enumerate() {
            self.cs(r).context().bind_to_thread().unwrap();
            unsafe {
                let _ = result::event::destroy(a);
                let _ = result::event::destroy(b);
            }
        }
        samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Ok(samples[samples.len() / 2])
    }

    fn eager(&self, m: Method, n: usize, iters: usize) -> dsv3::Result<f64> {
        for _ in 0..10 {
            unsafe { self.call(m, n)? };
        }
        self.comm.synchronize()?;
        self.time(iters, || unsafe { self.call(m, n) })
    }

    fn graphed(&self, m: Method, n: usize, iters: usize) -> dsv3::Result<f64> {
        unsafe { self.call(m, n)? };
        self.comm.synchronize()?;
        let g = self.comm.capture(|| {
            for _ in 0..G {
                unsafe { self.call(m, n)? };
            }
            Ok(())
        })?;
        for _ in 0..3 {
            g.launch()?;
        }
        self.comm.synchronize()?;
        let launches = iters.div_ceil(G).max(1);
        Ok(self.time(launches, || g.launch())? / G as f64)
    }
}

/// A measurement; `None` where the method does not take the size (push above PUSH_MAX).
type Us = Option<dsv3::Result<f64>>;

fn fmt_us(r: &Us) -> String {
    match r {
        Some(Ok(v)) => format!("{v:.1}"),
        Some(Err(_)) => "err".into(),
        None => "-".into(),
    }
}

/// Microseconds, or infinity where not measured.
fn us(r: &Us) -> f64 {
    match r {
        Some(Ok(v)) => *v,
        _ => f64::INFINITY,
    }
}

fn main() {
    if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
        std::env::set_var("NCCL_NVLS_ENABLE", "0");
    }
    let n = match device_count() {
        Ok(n) => n,
        Err(e) => panic!("no CUDA device: {e}"),
    };
    let want = std::env::var("DSV3_BENCH_GPUS").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    let w = want.min(n);
    assert!(w >= 2, "the all-reduce benchmark needs at least 2 CUDA devices; the driver reports {n}");
    let comm = Arc::new(Communicator::new(&(0..w).collect::<Vec<_>>()).expect("communicator"));
    let max_bytes = 64usize << 20;
    let custom = match CustomAllReduce::new(comm.clone(), max_bytes, PUSH_MAX) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("custom all-reduce unavailable (its columns print err): {e}");
            None
        }
    };
    let nccl = match Nccl::single_node(comm.clone()) {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!("NCCL unavailable (its columns print err): {e}");
            None
        }
    };
    let (nccl_ver, nccl_path) = nccl.as_ref().map(|n| (n.version(), n.library_path().to_string())).unwrap_or((0, "-".into()));
    let policy = Policy::default();
    let dispatch = AllReduce::new(comm.clone(), policy, nccl).expect("dispatcher (needs the custom kernels or NCCL)");
    let mut keep = Vec::new();
    let (mut ins, mut outs) = (Vec::new(), Vec::new());
    for r in 0..w {
        let s = comm.stream(r);
        let a = s.alloc(max_bytes).unwrap();
        let b = s.alloc(max_bytes).unwrap();
        // Finite inputs (0x3f80 = 1.0 in bf16); outputs are overwritten each call.
        let ones: Vec<u8> = [0x80u8, 0x3f].repeat(max_bytes / 2);
        unsafe { s.copy_htod(a.ptr(), &ones).unwrap() };
        ins.push(a.ptr());
        outs.push(b.ptr());
        keep.push(a);
        keep.push(b);
    }
    let bench = Bench { comm: comm.clone(), custom, dispatch, ins, outs, _keep: keep };

    let name = comm.cuda_stream(0).expect("a CUDA communicator").name();
    println!(
        "all-reduce (sum), bf16, {w} x {name}, peer access {}, NCCL {nccl_ver} ({nccl_path}), NCCL_NVLS_ENABLE={}",
        if comm.peer_access() { "yes" } else { "no" },
        std::env::var("NCCL_NVLS_ENABLE").unwrap_or_default()
    );
    println!(
        "µs per call: CUDA events around back-to-back calls, slowest rank, median of {REPS} runs; graph = {G} calls captured per CUDA graph; busbw = bytes·2(n−1)/n / time (GB/s); best = fastest custom kernel; dispatch policy: push ≤ {} KB, then one-shot ≤ {} KB (world 2: up to two-shot's limit), two-shot ≤ {} KB, NCCL above",
        policy.push_limit(w) >> 10,
        policy.one_shot_max >> 10,
        policy.two_shot_max >> 10
    );
    println!(
        "| size | push | one-shot | two-shot | dispatch | NCCL | push graph | one-shot graph | two-shot graph | dispatch graph | NCCL graph | dispatch busbw | NCCL busbw | dispatch graph busbw | NCCL graph busbw | NCCL/dispatch eager | NCCL/dispatch graph | NCCL/best eager | NCCL/best graph |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut push_ok: [Option<usize>; 2] = [None, None];
    let mut one_shot_ok: [Option<usize>; 2] = [None, None];
    let mut custom_ok: [Option<usize>; 2] = [None, None];
    let mut bytes = 4usize << 10;
    while bytes <= max_bytes {
        let n = bytes / 2;
        let iters = (((256usize << 20) / bytes).clamp(20, 500)).max(G);
        // Columns: push, one-shot, two-shot, dispatch, NCCL.
        let methods = [Method::Push, Method::OneShot, Method::TwoShot, Method::Dispatch, Method::Nccl];
        let runs = |m: Method| m != Method::Push || bytes <= PUSH_MAX;
        let eager: Vec<Us> = methods.iter().map(|&m| runs(m).then(|| bench.eager(m, n, iters))).collect();
        let graph: Vec<Us> = methods.iter().map(|&m| runs(m).then(|| bench.graphed(m, n, iters))).collect();
        for (i, r) in eager.iter().chain(graph.iter()).enumerate() {
            if let Some(Err(e)) = r {
                eprintln!("{bytes} B, column {i}: {e}");
            }
        }
        let bw = |r: &Us| match r {
            Some(Ok(us)) => format!("{:.1}", bytes as f64 * 2.0 * (w as f64 - 1.0) / w as f64 / (us * 1e-6) / 1e9),
            _ => "-".into(),
        };
        let ratio = |a: f64, b: f64| if a.is_finite() && b.is_finite() { format!("{:.2}x", a / b) } else { "-".into() };
        let best = |v: &[Us]| us(&v[0]).min(us(&v[1])).min(us(&v[2])).min(us(&v[3]));
        let size = if bytes >= 1 << 20 { format!("{} MB", bytes >> 20) } else { format!("{} KB", bytes >> 10) };
        let algo = bench.dispatch.algo(DType::Bf16, n).name();
        println!(
            "| {size} | {} | {} | {} | {} ({algo}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_us(&eager[0]),
            fmt_us(&eager[1]),
            fmt_us(&eager[2]),
            fmt_us(&eager[3]),
            fmt_us(&eager[4]),
            fmt_us(&graph[0]),
            fmt_us(&graph[1]),
            fmt_us(&graph[2]),
            fmt_us(&graph[3]),
            fmt_us(&graph[4]),
            bw(&eager[3]),
            bw(&eager[4]),
            bw(&graph[3]),
            bw(&graph[4]),
            ratio(us(&eager[4]), us(&eager[3])),
            ratio(us(&graph[4]), us(&graph[3])),
            ratio(us(&eager[4]), best(&eager)),
            ratio(us(&graph[4]), best(&graph)),
        );
        for (k, v) in [(0usize, &eager), (1, &graph)] {
            let (p, o, t, c) = (us(&v[0]), us(&v[1]), us(&v[2]), us(&v[4]));
            if p <= o.min(t).min(c) {
                push_ok[k] = Some(bytes);
            }
            if o <= t.min(c) {
                one_shot_ok[k] = Some(bytes);
            }
            if o.min(t) <= c {
                custom_ok[k] = Some(bytes);
            }
        }
        bytes *= 2;
    }
    for (k, name) in [(0usize, "eager"), (1, "graph")] {
        let b = |x: Option<usize>| x.map(|b| b.to_string()).unwrap_or("-".into());
        println!(
            "suggested policy ({name}): push up to {} (DSV3_AR_PUSH_MAX={}: it is scaled by 2/world), one-shot up to {}, custom up to {} (largest sizes where push / one-shot is fastest / one-shot or two-shot is at least as fast as NCCL; set DSV3_AR_ONE_SHOT_MAX / DSV3_AR_TWO_SHOT_MAX)",
            b(push_ok[k]),
            b(push_ok[k].map(|p| p * w / 2)),
            b(one_shot_ok[k]),
            b(custom_ok[k])
        );
    }
}
