//! A small blocking HTTP/1.1 client for the benchmark examples (`bench_serving`,
//! `bench_one_batch`) and the GPU server tests: plain `GET`s, JSON `POST`s and streaming
//! `/v1/completions` over SSE, with the timing of every token event. std + serde_json only; one connection per request (`Connection: close`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `host:port` → the first socket address.
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port}: no address"))
}

/// Opens a connection, with a one-line error that says what to check.
pub fn connect(a: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect_timeout(&a, Duration::from_secs(10))
        .map_err(|e| format!("cannot connect to {a}: {e} (is the server running? start it with `cargo run --release --example serve`)"))
}

/// `GET path` → the body (chunked transfer decoded); an error unless the status is 200.
pub fn get_text(a: SocketAddr, path: &str) -> Result<String, String> {
    request(a, "GET", path, None)
}

/// `POST path` with a JSON body → the response parsed as JSON; an error unless the status is 200.
pub fn post_json(a: SocketAddr, path: &str, body: &Value) -> Result<Value, String> {
    let text = request(a, "POST", path, Some(&body.to_string()))?;
    serde_json::from_str(&text).map_err(|e| format!("POST {path}: {e}"))
}

/// One request → the response body (chunked transfer decoded); an error unless the status is 200.
fn request(a: SocketAddr, method: &str, path: &str, json_body: Option<&str>) -> Result<String, String> {
    let mut s = connect(a)?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let head = match json_body {
        Some(b) => format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()),
        None => format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"),
    };
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{method} {path}: {} {}", head.lines().next().unwrap_or(""), body.trim()));
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail.get(n + 2..).unwrap_or("");
        }
        return Ok(out);
    }
    Ok(body.to_string())
}

/// `GET path` parsed as JSON.
pub fn get_json(a: SocketAddr, path: &str) -> Result<Value, String> {
    serde_json::from_str(&get_text(a, path)?).map_err(|e| format!("GET {path}: {e}"))
}

/// The model to name in requests: `given`, else the first of `/v1/models`.
pub fn model_name(a: SocketAddr, given: Option<&str>) -> Result<String, String> {
    Ok(match given {
        Some(m) => m.to_string(),
        None => get_json(a, "/v1/models")?["data"][0]["id"].as_str().unwrap_or("default").to_string(),
    })
}

/// One streamed completion and its timing.
#[derive(Clone, Debug, Default)]
pub struct StreamOutcome {
    pub ok: bool,
    pub error: String,
    pub input_len: usize,
    /// `usage.completion_tokens` when the server sent it, else the number of token events.
    pub output_len: usize,
    /// Seconds from sending the request to the first token event.
    pub ttft: f64,
    /// Seconds between consecutive token events.
    pub itl: Vec<f64>,
    /// Seconds from sending the request to `[DONE]` (or the error).
    pub e2e: f64,
    /// When the request was sent, its first token event came and it ended.
    pub sent_at: Option<Instant>,
    pub first_token_at: Option<Instant>,
    pub done_at: Option<Instant>,
}

/// A streaming `/v1/completions` request for a prompt of token ids: greedy, `ignore_eos`,
/// `max_tokens = out_len`, `stream_options.include_usage`.
///
/// With `per_token`, it also asks for `logprobs: 0`, which makes the server send one event per
/// generated token (text or not), and only those events are timed; otherwise every event with
/// non-empty text is (a token whose text is still incomplete UTF-8 sends none).
pub fn stream_completion(a: SocketAddr, model: &str, prompt: &[u32], out_len: usize, per_token: bool) -> StreamOutcome {
    let mut o = StreamOutcome { input_len: prompt.len(), ..Default::default() };
    let mut body = json!({
        "model": model, "prompt": prompt, "max_tokens": out_len, "ignore_eos": true, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true},
    });
    if per_token {
        body["logprobs"] = json!(0);
    }
    let body = body.to_string();
    let t0 = Instant::now();
    o.sent_at = Some(t0);
    let mut events = 0usize;
    let result = (|| -> Result<(), String> {
        let mut s = connect(a)?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(600)));
        let head = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).and_then(|_| s.write_all(body.as_bytes())).map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if !line.contains(" 200 ") {
            let mut rest = String::new();
            let _ = r.read_to_string(&mut rest);
            return Err(format!("{} {}", line.trim(), rest.lines().last().unwrap_or("")));
        }
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        // Chunked transfer encoding carrying SSE events.
        let mut pending = String::new();
        let mut last = t0;
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                break;
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).map_err(|e| e.to_string())?;
            if size == 0 {
                break;
            }
            let mut buf = vec![0u8; size + 2];
            r.read_exact(&mut buf).map_err(|e| e.to_string())?;
            pending.push_str(&String::from_utf8_lossy(&buf[..size]));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                if data == "[DONE]" {
                    return Ok(());
                }
                let v: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
                if let Some(err) = v.get("error") {
                    return Err(err.to_string());
                }
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    o.output_len = n as usize;
                }
                let choice = &v["choices"][0];
                let is_token = if per_token {
                    !choice["logprobs"].is_null()
                } else {
                    choice["text"].as_str().is_some_and(|t| !t.is_empty())
                };
                if is_token {
                    let now = Instant::now();
                    events += 1;
                    if o.first_token_at.is_none() {
                        o.first_token_at = Some(now);
                        o.ttft = now.duration_since(t0).as_secs_f64();
                    } else {
                        o.itl.push(now.duration_since(last).as_secs_f64());
                    }
                    last = now;
                }
            }
        }
        Err("stream ended without [DONE]".into())
    })();
    let done = Instant::now();
    o.done_at = Some(done);
    o.e2e = done.duration_since(t0).as_secs_f64();
    if o.output_len == 0 {
        o.output_len = events;
    }
    match result {
        Ok(()) => o.ok = true,
        Err(e) => o.error = e,
    }
    o
}

/// (mean, median, p99) of `v` (sorted in place); zeros when empty.
pub fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let pct = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
    (mean, pct(0.5), pct(0.99))
}

/// `dsv3:step_host_overhead_seconds` (sum, count) from a /metrics text.
pub fn host_overhead(metrics: &str) -> (f64, f64) {
    let get = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get("dsv3:step_host_overhead_seconds_sum"), get("dsv3:step_host_overhead_seconds_count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_a_few() {
        let mut v = vec![3.0, 1.0, 2.0];
        assert_eq!(stats(&mut v), (2.0, 2.0, 3.0));
        assert_eq!(stats(&mut []), (0.0, 0.0, 0.0));
    }

    #[test]
    fn host_overhead_parses_metrics() {
        let m = "# HELP x\ndsv3:step_host_overhead_seconds_sum 0.5\ndsv3:step_host_overhead_seconds_count 10\n";
        assert_eq!(host_overhead(m), (0.5, 10.0));
    }

    #[test]
    fn unreachable_server_is_one_line() {
        // Port 1 on loopback: nothing listens there.
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = get_text(a, "/health").unwrap_err();
        assert!(e.contains("cannot connect to 127.0.0.1:1") && !e.contains('\n'), "{e}");
    }
}
