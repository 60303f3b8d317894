//! Engine metrics, updated by the engine thread and read by `/metrics` (Prometheus text format).

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A cumulative histogram with fixed bucket bounds (seconds).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

const LATENCY_BOUNDS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const ITL_BOUNDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const HOST_BOUNDS: &[f64] = &[0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01];

#[derive(Debug)]
struct Histograms {
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    host: Histogram,
    /// (time, generated tokens) of recent steps, for the throughput gauge.
    window: VecDeque<(Instant, usize)>,
}

const THROUGHPUT_WINDOW: Duration = Duration::from_secs(5);

/// One attention rank's gauges under DP attention (each rank has its own pool).
#[derive(Debug, Default)]
pub struct RankGauges {
    pub running: AtomicUsize,
    /// Pages of the rank's pool held by requests.
    pub pages_used: AtomicUsize,
    /// Pages of the rank's pool held only by its prefix cache.
    pub pages_cached: AtomicUsize,
    pub preemptions: AtomicU64,
}

#[derive(Debug)]
pub struct EngineMetrics {
    pub num_running: AtomicUsize,
    pub num_waiting: AtomicUsize,
    pub kv_pages_total: AtomicUsize,
    /// Pages held by requests (running or partially prefilled).
    pub kv_pages_used: AtomicUsize,
    /// Pages held only by the prefix cache (evictable).
    pub kv_pages_cached: AtomicUsize,
    pub page_size: AtomicUsize,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    /// Prompt tokens looked up in the prefix cache at admission, and those found.
    pub prefix_query_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub requests_finished: AtomicU64,
    pub requests_aborted: AtomicU64,
    pub requests_failed: AtomicU64,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    /// Per attention rank (one without DP attention; rendered only when there are several).
    pub ranks: Vec<RankGauges>,
    hist: Mutex<Histograms>,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            num_running: AtomicUsize::new(0),
            num_waiting: AtomicUsize::new(0),
            kv_pages_total: AtomicUsize::new(0),
            kv_pages_used: AtomicUsize::new(0),
            kv_pages_cached: AtomicUsize::new(0),
            page_size: AtomicUsize::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            prefix_query_tokens: AtomicU64::new(0),
            prefix_hit_tokens: AtomicU64::new(0),
            requests_finished: AtomicU64::new(0),
            requests_aborted: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            ranks: vec![RankGauges::default()],
            hist: Mutex::new(Histograms {
                ttft: Histogram::new(LATENCY_BOUNDS),
                itl: Histogram::new(ITL_BOUNDS),
                e2e: Histogram::new(LATENCY_BOUNDS),
                host: Histogram::new(HOST_BOUNDS),
                window: VecDeque::new(),
            }),
        }
    }
}

impl EngineMetrics {
    /// Metrics of an engine with `ranks` attention ranks.
    pub fn with_dp_ranks(ranks: usize) -> EngineMetrics {
        EngineMetrics { ranks: (0..ranks).map(|_| RankGauges::default()).collect(), ..Default::default() }
    }

    fn hist(&self) -> std::sync::MutexGuard<'_, Histograms> {
        // A panic while holding the lock leaves plain numbers behind: keep using them.
        self.hist.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn observe_ttft(&self, d: Duration) {
        self.hist().ttft.observe(d.as_secs_f64());
    }

    pub fn observe_itl(&self, d: Duration) {
        self.hist().itl.observe(d.as_secs_f64());
    }

    pub fn observe_e2e(&self, d: Duration) {
        self.hist().e2e.observe(d.as_secs_f64());
    }

    /// Host time of one step outside the model (schedule + sample + detokenize + send).
    pub fn observe_host(&self, d: Duration) {
        self.hist().host.observe(d.as_secs_f64());
    }

    pub fn record_step_tokens(&self, now: Instant, tokens: usize) {
        let mut h = self.hist();
        h.window.push_back((now, tokens));
        while h.window.front().is_some_and(|(t, _)| now.duration_since(*t) > THROUGHPUT_WINDOW) {
            h.window.pop_front();
        }
    }

    /// Generated tokens per second over the last few seconds.
    pub fn gen_throughput(&self) -> f64 {
        let h = self.hist();
        let now = Instant::now();
        let tokens: usize = h
            .window
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= THROUGHPUT_WINDOW)
            .map(|(_, n)| n)
            .sum();
        tokens as f64 / THROUGHPUT_WINDOW.as_secs_f64()
    }

    /// Prefix-cache hit rate over prompt tokens looked up so far (0 when none).
    pub fn prefix_hit_rate(&self) -> f64 {
        let q = self.prefix_query_tokens.load(Relaxed);
        if q == 0 {
            0.0
        } else {
            self.prefix_hit_tokens.load(Relaxed) as f64 / q as f64
        }
    }

    /// Fraction of the pool held by requests.
    pub fn token_usage(&self) -> f64 {
        let total = self.kv_pages_total.load(Relaxed);
        if total == 0 {
            0.0
        } else {
            self.kv_pages_used.load(Relaxed) as f64 / total as f64
        }
    }

    /// (count, sum) of the host-overhead histogram.
    pub fn host_overhead(&self) -> (u64, f64) {
        let h = self.hist();
        (h.host.count(), h.host.sum())
    }

    /// Everything in Prometheus text exposition format, names prefixed `dsv3:`.
    pub fn render_prometheus(&self, model_name: &str) -> String {
        let mut out = String::new();
        let model_name = model_name.replace('\\', "\\\\").replace('"', "\\\"");
        let label = format!("{{model_name=\"{model_name}\"}}");
        let mut gauge = |name: &str, help: &str, kind: &str, v: f64| {
            let _ = writeln!(out, "# HELP dsv3:{name} {help}\n# TYPE dsv3:{name} {kind}\ndsv3:{name}{label} {v}");
        };
        gauge("num_running_reqs", "Requests running (decoding or prefilling).", "gauge", self.num_running.load(Relaxed) as f64);
        gauge("num_queue_reqs", "Requests waiting for admission.", "gauge", self.num_waiting.load(Relaxed) as f64);
        gauge("gen_throughput", "Generated tokens per second over the last 5 s.", "gauge", self.gen_throughput());
        gauge("token_usage", "Fraction of the KV cache held by requests.", "gauge", self.token_usage());
        gauge("kv_cache_pages_total", "Pages in the paged latent KV cache.", "gauge", self.kv_pages_total.load(Relaxed) as f64);
        gauge("kv_cache_pages_used", "Pages held by requests.", "gauge", self.kv_pages_used.load(Relaxed) as f64);
        gauge("kv_cache_pages_cached", "Pages held only by the prefix cache (evictable).", "gauge", self.kv_pages_cached.load(Relaxed) as f64);
        gauge("kv_cache_page_size", "Positions per page.", "gauge", self.page_size.load(Relaxed) as f64);
        gauge("cache_hit_rate", "Prefix-cache hits over prompt tokens looked up.", "gauge", self.prefix_hit_rate());
        gauge("prompt_tokens_total", "Prompt tokens of admitted requests.", "counter", self.prompt_tokens.load(Relaxed) as f64);
        gauge("generation_tokens_total", "Generated tokens.", "counter", self.generation_tokens.load(Relaxed) as f64);
        gauge("prefix_cache_hit_tokens_total", "Prompt tokens served from the prefix cache.", "counter", self.prefix_hit_tokens.load(Relaxed) as f64);
        gauge("prefix_cache_query_tokens_total", "Prompt tokens looked up in the prefix cache.", "counter", self.prefix_query_tokens.load(Relaxed) as f64);
        gauge("num_requests_total", "Requests finished normally.", "counter", self.requests_finished.load(Relaxed) as f64);
        gauge("num_aborted_requests_total", "Requests cancelled (client gone, shutdown).", "counter", self.requests_aborted.load(Relaxed) as f64);
        gauge("num_failed_requests_total", "Requests failed by a model error.", "counter", self.requests_failed.load(Relaxed) as f64);
        gauge("num_preemptions_total", "Requests preempted (cache freed, recomputed later).", "counter", self.preemptions.load(Relaxed) as f64);
        gauge("num_steps_total", "Engine steps.", "counter", self.steps.load(Relaxed) as f64);
        if self.ranks.len() > 1 {
            self.render_ranks(&mut out, &model_name);
        }
        let h = self.hist();
        h.ttft.render(&mut out, "dsv3:time_to_first_token_seconds", "Time to first token.");
        h.itl.render(&mut out, "dsv3:inter_token_latency_seconds", "Time between consecutive tokens of a request.");
        h.e2e.render(&mut out, "dsv3:e2e_request_latency_seconds", "Request latency, arrival to last token.");
        h.host.render(&mut out, "dsv3:step_host_overhead_seconds", "Host time of a step outside the model (schedule, sample, detokenize, send).");
        out
    }

    /// The per-rank gauges, one line per rank, labelled with the (escaped) model name and the rank.
    fn render_ranks(&self, out: &mut String, model_name: &str) {
        let mut family = |name: &str, help: &str, kind: &str, value: &dyn Fn(&RankGauges) -> f64| {
            let _ = writeln!(out, "# HELP dsv3:{name} {help}\n# TYPE dsv3:{name} {kind}");
            for (r, g) in self.ranks.iter().enumerate() {
                let _ = writeln!(out, "dsv3:{name}{{model_name=\"{model_name}\",dp_rank=\"{r}\"}} {}", value(g));
            }
        };
        family("dp_rank_num_running_reqs", "Requests running on the DP attention rank.", "gauge", &|g| g.running.load(Relaxed) as f64);
        family("dp_rank_kv_cache_pages_used", "Pages of the rank's pool held by requests.", "gauge", &|g| g.pages_used.load(Relaxed) as f64);
        family("dp_rank_kv_cache_pages_cached", "Pages of the rank's pool held only by its prefix cache.", "gauge", &|g| g.pages_cached.load(Relaxed) as f64);
        family("dp_rank_num_preemptions_total", "Requests preempted on the rank.", "counter", &|g| g.preemptions.load(Relaxed) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_rank_gauges_are_rendered_only_with_several_ranks() {
        let one = EngineMetrics::default().render_prometheus("m");
        assert!(one.contains("dsv3:kv_cache_pages_used{model_name=\"m\"} 0") && !one.contains("dp_rank"), "{one}");
        let m = EngineMetrics::with_dp_ranks(2);
        m.ranks[1].pages_used.store(7, Relaxed);
        m.ranks[0].preemptions.store(3, Relaxed);
        let text = m.render_prometheus("m");
        for line in [
            "# TYPE dsv3:dp_rank_kv_cache_pages_used gauge",
            "dsv3:dp_rank_kv_cache_pages_used{model_name=\"m\",dp_rank=\"0\"} 0",
            "dsv3:dp_rank_kv_cache_pages_used{model_name=\"m\",dp_rank=\"1\"} 7",
            "dsv3:dp_rank_num_preemptions_total{model_name=\"m\",dp_rank=\"0\"} 3",
            "dsv3:dp_rank_num_running_reqs{model_name=\"m\",dp_rank=\"1\"} 0",
            "dsv3:dp_rank_kv_cache_pages_cached{model_name=\"m\",dp_rank=\"1\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
