//! The multi-node rendezvous on the CPU: "nodes" are threads talking over loopback. The success
//! path, and every failure a launch can meet, each of which must end as one clear line on every
//! node (never a hang): a node that never arrives, a node that dies mid-handshake or after its
//! hello, disagreeing --nnodes / world sizes, duplicate node ranks, node 0 absent.

use dsv3::dist::rendezvous::{rendezvous, RendezvousConfig, RendezvousInfo, RendezvousServer};
use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

/// Binds node 0 on a free loopback port; returns the server and its `host:port`.
fn server(nnodes: usize, gpus: usize, world: Option<usize>, timeout: Duration) -> (RendezvousServer, String) {
    let mut cfg = RendezvousConfig::new("127.0.0.1:0", 0, nnodes, gpus).with_timeout(timeout);
    if let Some(w) = world {
        cfg = cfg.with_world_size(w);
    }
    let s = RendezvousServer::bind(&cfg).expect("bind node 0");
    let addr = s.local_addr().unwrap().to_string();
    (s, addr)
}

fn node(addr: &str, rank: usize, nnodes: usize, gpus: usize, world: Option<usize>, timeout: Duration) -> thread::JoinHandle<dsv3::Result<RendezvousInfo>> {
    let mut cfg = RendezvousConfig::new(addr, rank, nnodes, gpus).with_timeout(timeout);
    if let Some(w) = world {
        cfg = cfg.with_world_size(w);
    }
    thread::spawn(move || rendezvous(&cfg, &[]))
}

/// A raw hello frame as a node sends it (for the nodes that misbehave on purpose).
fn hello_frame(rank: u32, nnodes: u32, world: u32, gpus: u32) -> Vec<u8> {
    let words = [0x6473_7633u32, 1, rank, nnodes, world, gpus];
    let mut b = Vec::new();
    b.extend_from_slice(&(1 + 4 * words.len() as u32).to_le_bytes());
    b.push(1);
    for w in words {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b
}

const T: Duration = Duration::from_secs(20);

#[test]
fn three_nodes_agree_on_the_table_and_the_payload() {
    let (s, addr) = server(3, 2, Some(7), T);
    // Nodes 1 and 2 start before node 0 runs: they retry their connection until it does.
    let n2 = node(&addr, 2, 3, 3, Some(7), T);
    let n1 = node(&addr, 1, 3, 2, None, T);
    thread::sleep(Duration::from_millis(100));
    let id: Vec<u8> = (0..128u8).collect();
    let i0 = s.run(&id).unwrap();
    let i1 = n1.join().unwrap().unwrap();
    let i2 = n2.join().unwrap().unwrap();
    for (i, info) in [&i0, &i1, &i2].into_iter().enumerate() {
        assert_eq!(info.node_rank, i);
        assert_eq!(info.nnodes, 3);
        assert_eq!(info.gpus_per_node, vec![2, 2, 3]);
        assert_eq!(info.world_size, 7);
        assert_eq!(info.payload, id, "node {i} got node 0's NCCL id");
    }
    assert_eq!((i0.rank_offset, i1.rank_offset, i2.rank_offset), (0, 2, 4));
}

#[test]
fn two_nodes_through_the_one_call_api() {
    // Node 0 through `rendezvous` itself (binds the address it is given).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let a = addr.clone();
    let n0 = thread::spawn(move || rendezvous(&RendezvousConfig::new(a, 0, 2, 1).with_timeout(T), b"nccl-id"));
    let n1 = node(&addr, 1, 2, 1, Some(2), T);
    let i0 = n0.join().unwrap().unwrap();
    let i1 = n1.join().unwrap().unwrap();
    assert_eq!(i0.world_size, 2);
    assert_eq!(i1.payload, b"nccl-id");
    assert_eq!(i1.rank_offset, 1);
}

#[test]
fn a_node_that_never_arrives_is_named_on_every_node() {
    let (s, addr) = server(3, 1, None, Duration::from_millis(800));
    let n1 = node(&addr, 1, 3, 1, None, Duration::from_millis(800));
    let t0 = Instant::now();
    let e0 = s.run(&[]).unwrap_err().to_string();
    let e1 = n1.join().unwrap().unwrap_err().to_string();
    assert!(t0.elapsed() < Duration::from_secs(10), "gave up in time");
    assert!(e0.contains("node(s) 2 of 3 never arrived"), "node 0: {e0}");
    assert!(e1.contains("node(s) 2 of 3 never arrived") && e1.contains("aborted by node 0"), "node 1: {e1}");
    assert_eq!(e0.lines().count(), 1, "one line: {e0}");
    assert_eq!(e1.lines().count(), 1, "one line: {e1}");
}

#[test]
fn a_node_that_dies_mid_handshake_aborts_the_others() {
    let (s, addr) = server(3, 1, None, T);
    let n1 = node(&addr, 1, 3, 1, None, T);
    // "Node 2" connects, sends half a hello and dies.
    let a = addr.clone();
    let dead = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        let mut c = TcpStream::connect(&a).unwrap();
        let f = hello_frame(2, 3, 0, 1);
        c.write_all(&f[..7]).unwrap();
        thread::sleep(Duration::from_millis(100));
        drop(c);
    });
    let t0 = Instant::now();
    let e0 = s.run(&[]).unwrap_err().to_string();
    dead.join().unwrap();
    let e1 = n1.join().unwrap().unwrap_err().to_string();
    assert!(t0.elapsed() < Duration::from_secs(10), "noticed at once, not at the timeout");
    assert!(e0.contains("died during the handshake"), "node 0: {e0}");
    assert!(e1.contains("aborted by node 0") && e1.contains("died during the handshake"), "node 1: {e1}");
}

#[test]
fn a_node_that_dies_after_its_hello_is_named() {
    let (s, addr) = server(3, 1, None, T);
    let n1 = node(&addr, 1, 3, 1, None, T);
    let a = addr.clone();
    let dead = thread::spawn(move || {
        let mut c = TcpStream::connect(&a).unwrap();
        c.write_all(&hello_frame(2, 3, 0, 1)).unwrap();
        thread::sleep(Duration::from_millis(300));
        drop(c); // dies while node 0 waits
    });
    // Node 0 starts serving after node 2 said hello and died: the hello is still queued, the
    // death must be noticed before the welcome goes out.
    thread::sleep(Duration::from_millis(600));
    let e0 = s.run(&[]).unwrap_err().to_string();
    dead.join().unwrap();
    let e1 = n1.join().unwrap().unwrap_err().to_string();
    assert!(e0.contains("node 2") && e0.contains("died"), "node 0: {e0}");
    assert!(e1.contains("node 2") && e1.contains("died"), "node 1: {e1}");
}

#[test]
fn node_0_that_dies_is_reported_by_the_others() {
    let (s, addr) = server(2, 1, None, T);
    let a = addr.clone();
    let killer = thread::spawn(move || {
        // Node 0 accepts, then "dies" (drops its listener and connections) before welcoming.
        let l = s;
        thread::sleep(Duration::from_millis(300));
        drop(l);
    });
    let e1 = node(&a, 1, 2, 1, None, Duration::from_millis(1500)).join().unwrap().unwrap_err().to_string();
    killer.join().unwrap();
    assert!(
        e1.contains("closed the connection") || e1.contains("could not reach node 0") || e1.contains("did not complete"),
        "node 1: {e1}"
    );
}

#[test]
fn no_node_0_times_out_with_a_clear_line() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t0 = Instant::now();
    let e = node(&format!("127.0.0.1:{port}"), 1, 2, 1, None, Duration::from_millis(500)).join().unwrap().unwrap_err().to_string();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(e.contains("could not reach node 0"), "{e}");
}

#[test]
fn disagreeing_nnodes_is_an_error_everywhere() {
    let (s, addr) = server(2, 1, None, T);
    let n1 = node(&addr, 1, 3, 1, None, T);
    let e0 = s.run(&[]).unwrap_err().to_string();
    let e1 = n1.join().unwrap().unwrap_err().to_string();
    assert!(e0.contains("node 1 says --nnodes 3 but node 0 says --nnodes 2"), "node 0: {e0}");
    assert!(e1.contains("--nnodes 3"), "node 1: {e1}");
}

#[test]
fn a_world_size_the_gpus_do_not_add_up_to_is_an_error_everywhere() {
    // --tp 16 on two nodes of 4 GPUs.
    let (s, addr) = server(2, 4, Some(16), T);
    let n1 = node(&addr, 1, 2, 4, Some(16), T);
    let e0 = s.run(&[]).unwrap_err().to_string();
    let e1 = n1.join().unwrap().unwrap_err().to_string();
    assert!(e0.contains("expects world size 16") && e0.contains("bring 8 GPU(s)"), "node 0: {e0}");
    assert!(e1.contains("expects world size 16"), "node 1: {e1}");
    // Nodes disagreeing among themselves.
    let (s, addr) = server(2, 4, Some(8), T);
    let n1 = node(&addr, 1, 2, 4, Some(16), T);
    let e0 = s.run(&[]).unwrap_err().to_string();
    let e1 = n1.join().unwrap().unwrap_err().to_string();
    assert!(e0.contains("node 1 expects world size 16"), "node 0: {e0}");
    assert!(e1.contains("node 1 expects world size 16"), "node 1: {e1}");
}

#[test]
fn duplicate_and_out_of_range_node_ranks_are_errors() {
    let (s, addr) = server(3, 1, None, T);
    let a = node(&addr, 1, 3, 1, None, T);
    let b = node(&addr, 1, 3, 1, None, T);
    let e0 = s.run(&[]).unwrap_err().to_string();
    assert!(e0.contains("two nodes say --node-rank 1"), "{e0}");
    let (ea, eb) = (a.join().unwrap(), b.join().unwrap());
    assert!(ea.is_err() && eb.is_err());

    let (s, addr) = server(2, 1, None, T);
    let mut c = TcpStream::connect(&addr).unwrap();
    c.write_all(&hello_frame(5, 2, 0, 1)).unwrap();
    let e0 = s.run(&[]).unwrap_err().to_string();
    assert!(e0.contains("--node-rank 5"), "{e0}");

    // Locally invalid configurations fail before any network traffic.
    let e = rendezvous(&RendezvousConfig::new("127.0.0.1:1", 2, 2, 1), &[]).unwrap_err().to_string();
    assert!(e.contains("--node-rank 2 is out of range for --nnodes 2"), "{e}");
}

#[test]
fn a_stranger_is_not_taken_for_a_node() {
    let (s, addr) = server(2, 1, None, T);
    let mut c = TcpStream::connect(&addr).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let e0 = s.run(&[]).unwrap_err().to_string();
    assert!(e0.contains("not a dsv3 node") || e0.contains("not a dsv3 rendezvous"), "{e0}");
}
