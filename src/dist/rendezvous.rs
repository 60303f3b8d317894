//! TCP rendezvous of the nodes of a multi-node launch (pure `std::net`, no GPU).
//!
//! Node 0 listens on `--dist-init-addr host:port`; every other node connects to it (retrying
//! until node 0 is up), sends a hello (node rank, `--nnodes`, world size, local GPU count) and
//! waits. When every node has arrived, node 0 checks that they agree and sends each one the
//! table of GPU counts and node 0's payload (the NCCL unique id). Every failure is one line on
//! every node, never a hang:
//!
//! - a node that never arrives: node 0 times out after `--dist-timeout` naming the missing
//!   node(s), and sends that line to every node already connected;
//! - a node that dies (closes its connection) before the rendezvous completes: node 0 names it
//!   and aborts the others the same way;
//! - node 0 that never comes up, or dies: the other nodes time out or see the connection close;
//! - disagreeing `--nnodes`, world sizes, duplicate or out-of-range node ranks: node 0 names the
//!   node(s) and aborts everyone.
//!
//! Wire format: frames of `[u32 len (LE)][u8 kind][payload]`; hello = magic, version, node rank,
//! nnodes, world size (0 = unspecified), local GPUs (u32 LE each); welcome = nnodes, the GPU
//! count of each node, payload length and bytes; abort = a UTF-8 line.

use crate::error::{Error, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: u32 = 0x6473_7633; // "dsv3"
const VERSION: u32 = 1;
const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const ABORT: u8 = 3;
const MAX_FRAME: u32 = 1 << 20;
const POLL: Duration = Duration::from_millis(5);

fn err(msg: impl Into<String>) -> Error {
    Error::Backend { backend: "rendezvous", msg: msg.into() }
}

/// What this node says about itself (from `--dist-init-addr`, `--nnodes`, `--node-rank`,
/// `--tp`, `--dist-timeout` and its GPU count).
#[derive(Clone, Debug)]
pub struct RendezvousConfig {
    /// `host:port` of node 0.
    pub addr: String,
    pub node_rank: usize,
    pub nnodes: usize,
    /// The world size this node was launched with (`--tp`); `None` = whatever the nodes sum to.
    pub world_size: Option<usize>,
    /// GPUs this node drives.
    pub local_gpus: usize,
    pub timeout: Duration,
}

impl RendezvousConfig {
    pub fn new(addr: impl Into<String>, node_rank: usize, nnodes: usize, local_gpus: usize) -> Self {
        RendezvousConfig {
            addr: addr.into(),
            node_rank,
            nnodes,
            world_size: None,
            local_gpus,
            timeout: Duration::from_secs(300),
        }
    }
    pub fn with_world_size(mut self, w: usize) -> Self {
        self.world_size = Some(w);
        self
    }
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    fn check(&self) -> Result<()> {
        if self.nnodes == 0 {
            return Err(err("--nnodes must be at least 1"));
        }
        if self.node_rank >= self.nnodes {
            return Err(err(format!("--node-rank {} is out of range for --nnodes {}", self.node_rank, self.nnodes)));
        }
        if self.local_gpus == 0 {
            return Err(err(format!("node {} has no GPU to contribute", self.node_rank)));
        }
        if self.nnodes > 1 && self.addr.is_empty() {
            return Err(err("--dist-init-addr host:port is required with --nnodes > 1"));
        }
        Ok(())
    }
}

/// Parses `--dist-timeout` (seconds, fractions allowed).
pub fn parse_timeout(s: &str) -> Result<Duration> {
    let v: f64 = s.trim().parse().map_err(|_| err(format!("--dist-timeout `{s}`: expected seconds")))?;
    if v.is_nan() || v <= 0.0 || v.is_infinite() {
        return Err(err(format!("--dist-timeout `{s}`: must be a positive number of seconds")));
    }
    Ok(Duration::from_secs_f64(v))
}

/// What every node learns from the rendezvous.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RendezvousInfo {
    pub node_rank: usize,
    pub nnodes: usize,
    /// GPU count of each node, by node rank.
    pub gpus_per_node: Vec<usize>,
    /// Global rank of this node's first GPU (its GPUs are ranks `rank_offset..rank_offset+n`).
    pub rank_offset: usize,
    /// Total GPUs over all nodes.
    pub world_size: usize,
    /// Node 0's payload (the NCCL unique id), the same bytes on every node.
    pub payload: Vec<u8>,
}

impl RendezvousInfo {
    fn from_table(node_rank: usize, gpus: Vec<usize>, payload: Vec<u8>) -> Self {
        RendezvousInfo {
            node_rank,
            nnodes: gpus.len(),
            rank_offset: gpus[..node_rank].iter().sum(),
            world_size: gpus.iter().sum(),
            gpus_per_node: gpus,
            payload,
        }
    }
}

/// Runs the rendezvous for this node: node 0 binds `cfg.addr` and serves, the others connect.
/// `payload` is node 0's bytes to hand out (ignored on the other nodes).
pub fn rendezvous(cfg: &RendezvousConfig, payload: &[u8]) -> Result<RendezvousInfo> {
    cfg.check()?;
    if cfg.nnodes == 1 {
        return finish_single(cfg, payload);
    }
    if cfg.node_rank == 0 {
        RendezvousServer::bind(cfg)?.run(payload)
    } else {
        join(cfg)
    }
}

fn finish_single(cfg: &RendezvousConfig, payload: &[u8]) -> Result<RendezvousInfo> {
    if let Some(w) = cfg.world_size {
        if w != cfg.local_gpus {
            return Err(err(format!("world size {w} (--tp) but this single node drives {} GPU(s)", cfg.local_gpus)));
        }
    }
    Ok(RendezvousInfo::from_table(0, vec![cfg.local_gpus], payload.to_vec()))
}

// ---- frames ------------------------------------------------------------------------------

fn write_frame(s: &mut TcpStream, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 5);
    buf.extend_from_slice(&(payload.len() as u32 + 1).to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
    s.write_all(&buf)?;
    s.flush()
}

enum ReadErr {
    Timeout,
    Closed,
    Bad(String),
    Io(std::io::Error),
}

/// Reads one frame before `deadline` (the stream must be blocking).
fn read_frame(s: &mut TcpStream, deadline: Instant) -> std::result::Result<(u8, Vec<u8>), ReadErr> {
    let mut len = [0u8; 4];
    read_exact_by(s, &mut len, deadline)?;
    let len = u32::from_le_bytes(len);
    if len == 0 || len > MAX_FRAME {
        return Err(ReadErr::Bad(format!("a frame of {len} bytes (not a dsv3 rendezvous peer?)")));
    }
    let mut body = vec![0u8; len as usize];
    read_exact_by(s, &mut body, deadline)?;
    let kind = body[0];
    body.remove(0);
    Ok((kind, body))
}

fn read_exact_by(s: &mut TcpStream, mut buf: &mut [u8], deadline: Instant) -> std::result::Result<(), ReadErr> {
    while !buf.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            return Err(ReadErr::Timeout);
        }
        s.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1)))).map_err(ReadErr::Io)?;
        match s.read(buf) {
            Ok(0) => return Err(ReadErr::Closed),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe) => {
                return Err(ReadErr::Closed)
            }
            Err(e) => return Err(ReadErr::Io(e)),
        }
    }
    Ok(())
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn get_u32(b: &[u8], i: usize) -> Option<u32> {
    b.get(4 * i..4 * i + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap()))
}

#[derive(Clone, Copy, Debug)]
struct Hello {
    node_rank: usize,
    nnodes: usize,
    world_size: usize,
    gpus: usize,
}

fn parse_hello(b: &[u8]) -> std::result::Result<Hello, String> {
    let f = |i| get_u32(b, i).ok_or_else(|| "a truncated hello".to_string());
    if f(0)? != MAGIC {
        return Err("a hello without the dsv3 magic (not a dsv3 node?)".into());
    }
    if f(1)? != VERSION {
        return Err(format!("rendezvous protocol version {} (this node speaks {VERSION}; mixed dsv3 versions?)", f(1)?));
    }
    Ok(Hello { node_rank: f(2)? as usize, nnodes: f(3)? as usize, world_size: f(4)? as usize, gpus: f(5)? as usize })
}

fn fmt_list(v: &[usize]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

// ---- node 0 ------------------------------------------------------------------------------

/// Node 0's side: bound first (so tests and launchers can learn the port), then run.
pub struct RendezvousServer {
    cfg: RendezvousConfig,
    listener: TcpListener,
}

struct Peer {
    stream: TcpStream,
    from: SocketAddr,
    hello: Hello,
}

impl RendezvousServer {
    /// Binds `cfg.addr` (or, when that host is not a local address, the same port on all
    /// interfaces).
    pub fn bind(cfg: &RendezvousConfig) -> Result<Self> {
        cfg.check()?;
        if cfg.node_rank != 0 {
            return Err(err(format!("node {} cannot serve the rendezvous: node 0 does", cfg.node_rank)));
        }
        let addrs: Vec<SocketAddr> = cfg
            .addr
            .to_socket_addrs()
            .map_err(|e| err(format!("--dist-init-addr `{}`: {e} (expected host:port)", cfg.addr)))?
            .collect();
        let listener = match TcpListener::bind(&addrs[..]) {
            Ok(l) => l,
            Err(e) if e.kind() == ErrorKind::AddrNotAvailable => {
                let port = addrs.first().map(|a| a.port()).unwrap_or(0);
                TcpListener::bind(("0.0.0.0", port)).map_err(|e| err(format!("node 0 cannot listen on port {port}: {e}")))?
            }
            Err(e) => return Err(err(format!("node 0 cannot listen on {}: {e}", cfg.addr))),
        };
        listener.set_nonblocking(true).map_err(|e| err(format!("listener: {e}")))?;
        Ok(RendezvousServer { cfg: cfg.clone(), listener })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|e| err(format!("listener address: {e}")))
    }

    /// Waits for every node, checks them, hands out the table and `payload`.
    pub fn run(self, payload: &[u8]) -> Result<RendezvousInfo> {
        let cfg = &self.cfg;
        let deadline = Instant::now() + cfg.timeout;
        let mut peers: Vec<Peer> = Vec::new();
        let mut pending: Vec<(TcpStream, SocketAddr, Vec<u8>)> = Vec::new();
        let result = self.gather(&mut peers, &mut pending, deadline).and_then(|()| self.validate(&peers));
        match result {
            Ok(gpus) => {
                let mut welcome = u32s(&[cfg.nnodes as u32]);
                welcome.extend(u32s(&gpus.iter().map(|g| *g as u32).collect::<Vec<_>>()));
                welcome.extend(u32s(&[payload.len() as u32]));
                welcome.extend_from_slice(payload);
                for p in peers.iter_mut() {
                    let _ = p.stream.set_nonblocking(false);
                    write_frame(&mut p.stream, WELCOME, &welcome)
                        .map_err(|e| err(format!("node {} ({}) died before the rendezvous completed: {e}", p.hello.node_rank, p.from)))?;
                }
                Ok(RendezvousInfo::from_table(0, gpus, payload.to_vec()))
            }
            Err(e) => {
                let line = match &e {
                    Error::Backend { msg, .. } => msg.clone(),
                    other => other.to_string(),
                };
                // Everyone connected gets the line: the nodes that said hello, those in the middle
                // of it, and those still queued in the listener's backlog.
                let mut streams: Vec<TcpStream> = peers.drain(..).map(|p| p.stream).chain(pending.drain(..).map(|p| p.0)).collect();
                while let Ok((s, _)) = self.listener.accept() {
                    streams.push(s);
                }
                for s in streams.iter_mut() {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = write_frame(s, ABORT, line.as_bytes());
                }
                // Let the lines reach the nodes before the sockets close.
                for s in streams.iter_mut() {
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
                Err(e)
            }
        }
    }

    /// `pending`: connections that have not finished their hello yet.
    fn gather(&self, peers: &mut Vec<Peer>, pending: &mut Vec<(TcpStream, SocketAddr, Vec<u8>)>, deadline: Instant) -> Result<()> {
        let cfg = &self.cfg;
        loop {
            // Liveness of the nodes that already said hello (also right before welcoming them).
            for p in peers.iter_mut() {
                let mut b = [0u8; 1];
                match p.stream.peek(&mut b) {
                    Ok(0) => {
                        return Err(err(format!(
                            "node {} ({}) died during the rendezvous (its connection closed before all {} nodes arrived)",
                            p.hello.node_rank, p.from, cfg.nnodes
                        )))
                    }
                    Ok(_) => {
                        return Err(err(format!("node {} ({}) sent unexpected data during the rendezvous", p.hello.node_rank, p.from)))
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => {
                        return Err(err(format!("node {} ({}) died during the rendezvous: {e}", p.hello.node_rank, p.from)))
                    }
                }
            }
            let arrived: Vec<usize> = std::iter::once(0).chain(peers.iter().map(|p| p.hello.node_rank)).collect();
            if arrived.len() == cfg.nnodes {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let missing: Vec<usize> = (0..cfg.nnodes).filter(|r| !arrived.contains(r)).collect();
                let half = if pending.is_empty() { String::new() } else { format!("; {} connection(s) never finished their hello", pending.len()) };
                return Err(err(format!(
                    "node(s) {} of {} never arrived at {} within {:.1?} (arrived: {}{half}); check --dist-init-addr, --nnodes and --node-rank on every node",
                    fmt_list(&missing),
                    cfg.nnodes,
                    cfg.addr,
                    cfg.timeout,
                    fmt_list(&arrived)
                )));
            }
            // New connections.
            match self.listener.accept() {
                Ok((s, from)) => {
                    s.set_nonblocking(true).map_err(|e| err(format!("{from}: {e}")))?;
                    let _ = s.set_nodelay(true);
                    pending.push((s, from, Vec::new()));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(err(format!("accept on {}: {e}", cfg.addr))),
            }
            // Progress on hellos.
            let mut i = 0;
            while i < pending.len() {
                let (s, from, buf) = &mut pending[i];
                let mut chunk = [0u8; 256];
                match s.read(&mut chunk) {
                    Ok(0) => {
                        return Err(err(format!(
                            "a node connecting from {from} closed its connection in the middle of its hello (it died during the handshake)"
                        )))
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(err(format!("a node connecting from {from} died during the handshake: {e}"))),
                }
                if buf.len() >= 4 {
                    let len = u32::from_le_bytes(buf[..4].try_into().unwrap());
                    if len == 0 || len > MAX_FRAME {
                        return Err(err(format!("{from} sent a frame of {len} bytes (not a dsv3 node?)")));
                    }
                    if buf.len() >= 4 + len as usize {
                        let frame = buf[4..4 + len as usize].to_vec();
                        let (s, from, _) = pending.remove(i);
                        let checked = (|| {
                            if frame[0] != HELLO {
                                return Err(err(format!("{from} sent frame kind {} instead of a hello (not a dsv3 node?)", frame[0])));
                            }
                            let hello = parse_hello(&frame[1..]).map_err(|m| err(format!("{from} sent {m}")))?;
                            if let Some(p) = peers.iter().find(|p| p.hello.node_rank == hello.node_rank) {
                                return Err(err(format!("two nodes say --node-rank {} ({} and {from})", hello.node_rank, p.from)));
                            }
                            if hello.node_rank == 0 || hello.node_rank >= cfg.nnodes {
                                return Err(err(format!(
                                    "node at {from} says --node-rank {} but node 0 has --nnodes {} (ranks 1..{} connect)",
                                    hello.node_rank,
                                    cfg.nnodes,
                                    cfg.nnodes - 1
                                )));
                            }
                            Ok(hello)
                        })();
                        let hello = match checked {
                            Ok(h) => h,
                            Err(e) => {
                                // Keep the connection so that this node hears the abort too.
                                pending.push((s, from, Vec::new()));
                                return Err(e);
                            }
                        };
                        peers.push(Peer { stream: s, from, hello });
                        continue;
                    }
                }
                i += 1;
            }
            std::thread::sleep(POLL);
        }
    }

    /// All nodes agree: the GPU count of each node, by rank.
    fn validate(&self, peers: &[Peer]) -> Result<Vec<usize>> {
        let cfg = &self.cfg;
        let mut gpus = vec![0usize; cfg.nnodes];
        gpus[0] = cfg.local_gpus;
        for p in peers {
            if p.hello.nnodes != cfg.nnodes {
                return Err(err(format!(
                    "node {} says --nnodes {} but node 0 says --nnodes {}",
                    p.hello.node_rank, p.hello.nnodes, cfg.nnodes
                )));
            }
            if p.hello.gpus == 0 {
                return Err(err(format!("node {} ({}) has no GPU", p.hello.node_rank, p.from)));
            }
            gpus[p.hello.node_rank] = p.hello.gpus;
        }
        let total: usize = gpus.iter().sum();
        let mut claims: Vec<(usize, usize)> = Vec::new();
        if let Some(w) = cfg.world_size {
            claims.push((0, w));
        }
        claims.extend(peers.iter().filter(|p| p.hello.world_size != 0).map(|p| (p.hello.node_rank, p.hello.world_size)));
        for (node, w) in &claims {
            if *w != total {
                let table = gpus.iter().enumerate().map(|(i, g)| format!("node {i}: {g}")).collect::<Vec<_>>().join(", ");
                return Err(err(format!(
                    "node {node} expects world size {w} (--tp) but the nodes bring {total} GPU(s) ({table})"
                )));
            }
        }
        Ok(gpus)
    }
}

// ---- the other nodes ---------------------------------------------------------------------

fn join(cfg: &RendezvousConfig) -> Result<RendezvousInfo> {
    let start = Instant::now();
    let deadline = start + cfg.timeout;
    // Node 0 reports missing nodes at its own deadline; wait a little longer for its verdict.
    let verdict_deadline = deadline + cfg.timeout.min(Duration::from_secs(10)).max(Duration::from_millis(500));
    let mut last_err = String::from("no attempt");
    let mut stream = loop {
        let addrs: Vec<SocketAddr> = match cfg.addr.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                last_err = format!("cannot resolve: {e}");
                Vec::new()
            }
        };
        let mut got = None;
        for a in &addrs {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
            match TcpStream::connect_timeout(a, left.min(Duration::from_secs(2))) {
                Ok(s) => {
                    got = Some(s);
                    break;
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        if let Some(s) = got {
            break s;
        }
        if Instant::now() >= deadline {
            return Err(err(format!(
                "node {} could not reach node 0 at {} within {:.1?} ({last_err}); is node 0 running with the same --dist-init-addr?",
                cfg.node_rank, cfg.addr, cfg.timeout
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = stream.set_nodelay(true);
    let hello = u32s(&[
        MAGIC,
        VERSION,
        cfg.node_rank as u32,
        cfg.nnodes as u32,
        cfg.world_size.unwrap_or(0) as u32,
        cfg.local_gpus as u32,
    ]);
    write_frame(&mut stream, HELLO, &hello)
        .map_err(|e| err(format!("node {}: lost node 0 at {} while saying hello: {e}", cfg.node_rank, cfg.addr)))?;
    match read_frame(&mut stream, verdict_deadline) {
        Ok((WELCOME, b)) => {
            let bad = || err(format!("node {}: a malformed welcome from node 0 at {}", cfg.node_rank, cfg.addr));
            let n = get_u32(&b, 0).ok_or_else(bad)? as usize;
            if n != cfg.nnodes {
                return Err(err(format!("node {} says --nnodes {} but node 0 says {n}", cfg.node_rank, cfg.nnodes)));
            }
            let gpus: Vec<usize> = (0..n).map(|i| get_u32(&b, 1 + i).map(|g| g as usize)).collect::<Option<_>>().ok_or_else(bad)?;
            let plen = get_u32(&b, 1 + n).ok_or_else(bad)? as usize;
            let payload = b.get(4 * (n + 2)..4 * (n + 2) + plen).ok_or_else(bad)?.to_vec();
            Ok(RendezvousInfo::from_table(cfg.node_rank, gpus, payload))
        }
        Ok((ABORT, b)) => Err(err(format!("aborted by node 0: {}", String::from_utf8_lossy(&b)))),
        Ok((k, _)) => Err(err(format!("node {}: node 0 sent frame kind {k} (mixed dsv3 versions?)", cfg.node_rank))),
        Err(ReadErr::Timeout) => Err(err(format!(
            "node {}: node 0 at {} did not complete the rendezvous within {:.1?}",
            cfg.node_rank,
            cfg.addr,
            verdict_deadline - start
        ))),
        Err(ReadErr::Closed) => Err(err(format!(
            "node {}: node 0 at {} closed the connection before the rendezvous completed (node 0 died?)",
            cfg.node_rank, cfg.addr
        ))),
        Err(ReadErr::Bad(m)) => Err(err(format!("node {}: node 0 at {} sent {m}", cfg.node_rank, cfg.addr))),
        Err(ReadErr::Io(e)) => Err(err(format!("node {}: connection to node 0 at {}: {e}", cfg.node_rank, cfg.addr))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_needs_no_network() {
        let cfg = RendezvousConfig::new("", 0, 1, 2).with_world_size(2);
        let info = rendezvous(&cfg, b"id").unwrap();
        assert_eq!(info.world_size, 2);
        assert_eq!(info.payload, b"id");
        let bad = RendezvousConfig::new("", 0, 1, 2).with_world_size(4);
        assert!(rendezvous(&bad, b"").unwrap_err().to_string().contains("world size 4"));
    }

    #[test]
    fn parses_timeouts() {
        assert_eq!(parse_timeout("2.5").unwrap(), Duration::from_millis(2500));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("x").is_err());
    }
}
