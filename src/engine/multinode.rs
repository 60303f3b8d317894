//! Multi-node serving (`serve --tp N --nnodes M --node-rank R --dist-init-addr host:port`).
//!
//! Node 0 runs the engine and the HTTP server; every other node runs the same steps of the
//! tensor-parallel group as node 0 tells it over a *step channel*: one TCP connection from each
//! node to node 0 at the rendezvous port + 1. A step's collectives (all-reduces over every node's
//! GPUs) need every rank of every node to run the same steps in the same order, so what node 0's
//! engine decides — the cache size, then each step's batch (new tokens, cached length, block
//! table, whether the last row's logits are wanted) — is sent to the followers before node 0 runs
//! it. The followers compute the same forward (across nodes the logits are assembled on every
//! node) and drop the logits: only node 0 samples. CUDA graphs stay in step too: a graph is
//! captured on first use of its batch size, which is the same step on every node.
//!
//! Frames: kind (u8), payload length (u32 LE), payload. A follower opens with `HELLO` (its node
//! rank). `ALLOC`: pages (u64), page size (u64), largest batch replayed as a CUDA graph (u64; a
//! follower launched with another `--cuda-graph-max-bs` refuses, as its steps would differ).
//! `STEP`: sequence count (u32), then per sequence: start (u64), flags (u8: 1 logits wanted,
//! 2 greedy), token count (u32) and tokens (u32 each), page count (u32) and pages (u32 each),
//! attention rank (u32). `STOP`: node 0 is shutting down.
//!
//! Failures reach every node as one line: a follower that is gone makes node 0's next step fail
//! with "node k is gone"; a follower whose step fails logs it and exits (node 0's next
//! collective then fails through the all-reduce watchdog / NCCL timeout); node 0 going away ends
//! the followers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::engine::block_manager::PageId;
use crate::engine::model::{ModelSpec, SeqStep, StepModel, StepOutput};
use crate::error::{Error, Result};

const HELLO: u8 = 1;
const ALLOC: u8 = 2;
const STEP: u8 = 3;
const STOP: u8 = 4;

fn err(msg: impl Into<String>) -> Error {
    Error::Backend { backend: "multi-node", msg: msg.into() }
}

/// Node 0's step channel address: the rendezvous address `host:port` with port + 1.
pub fn step_channel_addr(dist_init_addr: &str) -> Result<SocketAddr> {
    let a = dist_init_addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| err(format!("--dist-init-addr {dist_init_addr}: not a host:port this machine can resolve")))?;
    let port = a.port().checked_add(1).ok_or_else(|| err(format!("--dist-init-addr {dist_init_addr}: the step channel needs port + 1")))?;
    Ok(SocketAddr::new(a.ip(), port))
}

/// Node 0: listens on the step channel (`addr`, else any interface at its port).
pub fn listen(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .or_else(|_| TcpListener::bind(("0.0.0.0", addr.port())))
        .map_err(|e| err(format!("node 0 cannot listen for the other nodes' step channels on port {}: {e}", addr.port())))
}

/// Node 0: the step channels of nodes 1..nnodes, by node rank, each within `timeout`.
pub fn accept_followers(listener: &TcpListener, nnodes: usize, timeout: Duration) -> Result<Vec<(usize, TcpStream)>> {
    let deadline = Instant::now() + timeout;
    listener.set_nonblocking(true).map_err(|e| err(format!("step channel listener: {e}")))?;
    let mut followers: Vec<(usize, TcpStream)> = Vec::new();
    while followers.len() + 1 < nnodes {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false).and_then(|()| s.set_nodelay(true)).map_err(|e| err(format!("step channel from {from}: {e}")))?;
                s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))).ok();
                let node = match read_frame(&mut s) {
                    Ok((HELLO, p)) => Reader::new(&p).u32().map(|n| n as usize),
                    Ok((kind, _)) => Err(err(format!("step channel from {from}: frame {kind} before its hello"))),
                    Err(e) => Err(err(format!("step channel from {from}: {e}"))),
                }?;
                if node == 0 || node >= nnodes || followers.iter().any(|(n, _)| *n == node) {
                    return Err(err(format!("step channel from {from}: node rank {node} is not one of 1..{nnodes} still expected")));
                }
                s.set_read_timeout(None).ok();
                followers.push((node, s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (1..nnodes).filter(|n| !followers.iter().any(|(f, _)| f == n)).collect();
                    return Err(err(format!("node(s) {missing:?} did not open their step channel within {timeout:?} (--dist-timeout)")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(err(format!("step channel: {e}"))),
        }
    }
    followers.sort_by_key(|(n, _)| *n);
    Ok(followers)
}

/// Node `node_rank` > 0: connects to node 0's step channel, retrying until `timeout` (node 0
/// listens once its model is loaded).
pub fn connect_to_leader(addr: SocketAddr, node_rank: usize, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                s.set_nodelay(true).ok();
                write_frame(&mut s, HELLO, &(node_rank as u32).to_le_bytes()).map_err(|e| err(format!("node 0's step channel at {addr}: {e}")))?;
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => return Err(err(format!("node 0's step channel at {addr} did not answer within {timeout:?}: {e}"))),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Node 0's step model: `inner` (its part of the group), with every cache allocation and step
/// sent to the other nodes first.
pub struct LeaderStepModel {
    inner: Box<dyn StepModel>,
    followers: Vec<(usize, TcpStream)>,
}

impl LeaderStepModel {
    pub fn new(inner: Box<dyn StepModel>, followers: Vec<(usize, TcpStream)>) -> LeaderStepModel {
        LeaderStepModel { inner, followers }
    }

    fn broadcast(&mut self, kind: u8, payload: &[u8]) -> Result<()> {
        for (node, s) in &mut self.followers {
            write_frame(s, kind, payload).map_err(|e| err(format!("node {node} is gone ({e}): multi-node steps cannot continue")))?;
        }
        Ok(())
    }
}

impl StepModel for LeaderStepModel {
    fn spec(&self) -> ModelSpec {
        self.inner.spec()
    }

    fn allocate_cache(&mut self, num_pages: usize, page_size: usize) -> Result<()> {
        let mut w = Vec::with_capacity(24);
        for x in [num_pages, page_size, self.inner.cuda_graph_max_bs()] {
            w.extend((x as u64).to_le_bytes());
        }
        self.broadcast(ALLOC, &w)?;
        self.inner.allocate_cache(num_pages, page_size)
    }

    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Option<StepOutput>>> {
        self.broadcast(STEP, &encode_step(batch))?;
        self.inner.step(batch)
    }

    fn cuda_graph_max_bs(&self) -> usize {
        self.inner.cuda_graph_max_bs()
    }

    fn dp_ranks(&self) -> usize {
        self.inner.dp_ranks()
    }

    fn device(&self) -> String {
        format!("{} + {} more node(s)", self.inner.device(), self.followers.len())
    }
}

impl Drop for LeaderStepModel {
    fn drop(&mut self) {
        let _ = self.broadcast(STOP, &[]);
    }
}

/// A follower node's loop: runs on `model` every allocation and step node 0 sends, until node
/// 0 stops (or goes away). Returns the number of steps run.
pub fn follow(model: &mut dyn StepModel, mut channel: TcpStream) -> Result<usize> {
    let mut steps = 0;
    loop {
        let (kind, payload) = match read_frame(&mut channel) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::warn!("node 0 closed the step channel without a stop: it has exited");
                return Ok(steps);
            }
            Err(e) => return Err(err(format!("node 0's step channel: {e}"))),
        };
        match kind {
            ALLOC => {
                let mut r = Reader::new(&payload);
                let (pages, page_size, graphs) = (r.u64()? as usize, r.u64()? as usize, r.u64()? as usize);
                if graphs != model.cuda_graph_max_bs() {
                    return Err(err(format!(
                        "node 0 replays CUDA graphs up to batch {graphs}, this node up to {}: launch every node with the same --cuda-graph-max-bs",
                        model.cuda_graph_max_bs()
                    )));
                }
                model.allocate_cache(pages, page_size)?;
            }
            STEP => {
                let seqs = decode_step(&payload)?;
                let batch: Vec<SeqStep<'_>> = seqs.iter().map(OwnedSeq::view).collect();
                model.step(&batch)?;
                steps += 1;
            }
            STOP => return Ok(steps),
            other => return Err(err(format!("node 0 sent an unknown frame kind {other}"))),
        }
    }
}

/// One sequence of a decoded `STEP`.
#[derive(Debug, PartialEq)]
struct OwnedSeq {
    tokens: Vec<u32>,
    start: usize,
    block_table: Vec<PageId>,
    want_logits: bool,
    greedy: bool,
    rank: usize,
}

impl OwnedSeq {
    fn view(&self) -> SeqStep<'_> {
        SeqStep { tokens: &self.tokens, start: self.start, block_table: &self.block_table, want_logits: self.want_logits, greedy: self.greedy, rank: self.rank }
    }
}

fn encode_step(batch: &[SeqStep<'_>]) -> Vec<u8> {
    let words: usize = batch.iter().map(|s| s.tokens.len() + s.block_table.len() + 6).sum();
    let mut w = Vec::with_capacity(4 + 4 * words);
    w.extend((batch.len() as u32).to_le_bytes());
    for s in batch {
        w.extend((s.start as u64).to_le_bytes());
        w.push(s.want_logits as u8 | (s.greedy as u8) << 1);
        w.extend((s.tokens.len() as u32).to_le_bytes());
        w.extend(s.tokens.iter().flat_map(|t| t.to_le_bytes()));
        w.extend((s.block_table.len() as u32).to_le_bytes());
        w.extend(s.block_table.iter().flat_map(|p| p.to_le_bytes()));
        w.extend((s.rank as u32).to_le_bytes());
    }
    w
}

fn decode_step(payload: &[u8]) -> Result<Vec<OwnedSeq>> {
    let mut r = Reader::new(payload);
    let n = r.u32()? as usize;
    let mut seqs = Vec::with_capacity(n.min(payload.len()));
    for _ in 0..n {
        let start = r.u64()? as usize;
        let flags = r.u8()?;
        let (want_logits, greedy) = (flags & 1 != 0, flags & 2 != 0);
        let tokens = r.u32s()?;
        let block_table = r.u32s()?;
        let rank = r.u32()? as usize;
        seqs.push(OwnedSeq { tokens, start, block_table, want_logits, greedy, rank });
    }
    if !r.rest.is_empty() {
        return Err(err(format!("a step frame with {} trailing bytes", r.rest.len())));
    }
    Ok(seqs)
}

/// Bounds-checked little-endian reads of a frame's payload.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Reader { rest }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(err(format!("a truncated frame ({} bytes left, {n} needed)", self.rest.len())));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| err("u32"))?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| err("u64"))?))
    }
    fn u32s(&mut self) -> Result<Vec<u32>> {
        let n = self.u32()? as usize;
        Ok(self.take(4 * n)?.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

fn write_frame(s: &mut TcpStream, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    s.write_all(&head)?;
    s.write_all(payload)?;
    s.flush()
}

/// Frames larger than this are refused (a step of 64K sequences × 2K pages is far below).
const MAX_FRAME: usize = 1 << 30;

fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What a follower's model was asked to do.
    #[derive(Debug, PartialEq)]
    enum Call {
        Alloc(usize, usize),
        Step(Vec<OwnedSeq>),
    }

    struct Recorder(Arc<Mutex<Vec<Call>>>);

    impl StepModel for Recorder {
        fn spec(&self) -> ModelSpec {
            ModelSpec { num_layers: 1, latent_width: 4, position_bytes: 16, vocab_size: 8, max_positions: 64, eos_token_ids: vec![], memory_bytes: None }
        }
        fn allocate_cache(&mut self, num_pages: usize, page_size: usize) -> Result<()> {
            self.0.lock().unwrap().push(Call::Alloc(num_pages, page_size));
            Ok(())
        }
        fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Option<StepOutput>>> {
            let seqs = batch
                .iter()
                .map(|s| OwnedSeq {
                    tokens: s.tokens.to_vec(),
                    start: s.start,
                    block_table: s.block_table.to_vec(),
                    want_logits: s.want_logits,
                    greedy: s.greedy,
                    rank: s.rank,
                })
                .collect();
            self.0.lock().unwrap().push(Call::Step(seqs));
            Ok(batch.iter().map(|s| s.want_logits.then(|| StepOutput::Logits(vec![0.0; 8]))).collect())
        }
        fn device(&self) -> String {
            "recorder".into()
        }
    }

    /// Two followers over loopback see exactly node 0's allocation and steps, in order, and stop
    /// when node 0's model is dropped.
    #[test]
    fn followers_replay_node_0s_steps() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let logs: Vec<Arc<Mutex<Vec<Call>>>> = (0..2).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
        let threads: Vec<_> = logs
            .iter()
            .enumerate()
            .map(|(i, log)| {
                let log = log.clone();
                std::thread::spawn(move || {
                    let ch = connect_to_leader(addr, 2 - i, Duration::from_secs(10)).unwrap();
                    follow(&mut Recorder(log), ch).unwrap()
                })
            })
            .collect();
        let followers = accept_followers(&listener, 3, Duration::from_secs(10)).unwrap();
        assert_eq!(followers.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 2]);
        let own = Arc::new(Mutex::new(Vec::new()));
        let mut leader = LeaderStepModel::new(Box::new(Recorder(own.clone())), followers);
        leader.allocate_cache(40, 16).unwrap();
        let (a, b) = (vec![5u32, 6, 7], vec![9u32]);
        let (ta, tb) = (vec![3u32, 1], vec![0u32]);
        let batch = [
            SeqStep { tokens: &a, start: 17, block_table: &ta, want_logits: false, greedy: true, rank: 1 },
            SeqStep { tokens: &b, start: 0, block_table: &tb, want_logits: true, greedy: false, rank: 0 },
        ];
        let out = leader.step(&batch).unwrap();
        assert_eq!(out.iter().map(Option::is_some).collect::<Vec<_>>(), vec![false, true]);
        leader.step(&batch[1..]).unwrap();
        leader.step(&[]).unwrap();
        drop(leader);
        for t in threads {
            assert_eq!(t.join().unwrap(), 3, "steps run by a follower");
        }
        let want = own.lock().unwrap();
        for log in &logs {
            assert_eq!(*log.lock().unwrap(), *want, "a follower's calls equal node 0's");
        }
        assert_eq!(want[0], Call::Alloc(40, 16));
    }

    #[test]
    fn malformed_step_frames_are_errors() {
        let good = encode_step(&[SeqStep { tokens: &[1, 2], start: 3, block_table: &[4], want_logits: true, greedy: true, rank: 5 }]);
        assert_eq!(decode_step(&good).unwrap(), vec![OwnedSeq { tokens: vec![1, 2], start: 3, block_table: vec![4], want_logits: true, greedy: true, rank: 5 }]);
        for cut in 0..good.len() {
            assert!(decode_step(&good[..cut]).is_err(), "a frame cut at {cut} bytes");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode_step(&long).unwrap_err().to_string().contains("trailing"));
        // A count far beyond the payload does not allocate for it.
        assert!(decode_step(&u32::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn a_missing_node_times_out_with_its_rank() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let e = accept_followers(&listener, 2, Duration::from_millis(100)).unwrap_err().to_string();
        assert!(e.contains("[1]") && e.contains("--dist-timeout"), "{e}");
        assert_eq!(step_channel_addr("127.0.0.1:5000").unwrap().port(), 5001);
        assert!(step_channel_addr("127.0.0.1:65535").is_err());
    }
}
