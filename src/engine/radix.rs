//! Prefix cache: a radix tree over token ids whose edges are whole pages (`page_size` tokens), so
//! each node owns one cached page that any request starting with the same tokens can share.
//!
//! Ownership: the tree holds one reference to each node's page (through the
//! [`BlockAllocator`]); a sequence that reuses a prefix holds one more per page. A node is
//! evictable when only the tree holds its page and all its children are evictable; eviction takes
//! least-recently-used leaves first.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::engine::block_manager::{BlockAllocator, PageId};

const ROOT: usize = 0;

#[derive(Debug)]
struct Node {
    parent: usize,
    key: Box<[u32]>,
    page: PageId,
    children: HashMap<Box<[u32]>, usize>,
    last_access: u64,
}

#[derive(Debug)]
pub struct RadixCache {
    page_size: usize,
    nodes: Vec<Option<Node>>,
    free_slots: Vec<usize>,
    clock: u64,
    len: usize,
}

impl RadixCache {
    pub fn new(page_size: usize) -> RadixCache {
        let root = Node { parent: ROOT, key: Box::new([]), page: PageId::MAX, children: HashMap::new(), last_access: 0 };
        RadixCache { page_size, nodes: vec![Some(root)], free_slots: Vec::new(), clock: 0, len: 0 }
    }

    /// Number of cached pages (nodes other than the root).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("live radix node")
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i].as_mut().expect("live radix node")
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The nodes of the longest whole-page prefix of `tokens`, root excluded, in order.
    fn path(&self, tokens: &[u32]) -> Vec<usize> {
        let mut cur = ROOT;
        let mut path = Vec::new();
        for chunk in tokens.chunks_exact(self.page_size) {
            let Some(&next) = self.node(cur).children.get(chunk) else { break };
            path.push(next);
            cur = next;
        }
        path
    }

    /// How many whole pages of `tokens` [`match_prefix`](Self::match_prefix) would return, without
    /// retaining or touching them (placing a request on a DP rank asks every rank).
    pub fn peek_prefix(&self, tokens: &[u32]) -> usize {
        self.path(tokens).len()
    }

    /// The cached pages of the longest whole-page prefix of `tokens`; each one retained once for
    /// the caller (who releases them with the rest of its block table).
    pub fn match_prefix(&mut self, tokens: &[u32], alloc: &mut BlockAllocator) -> Vec<PageId> {
        let now = self.tick();
        let path = self.path(tokens);
        let mut pages = Vec::with_capacity(path.len());
        for i in path {
            let node = self.node_mut(i);
            node.last_access = now;
            pages.push(node.page);
        }
        for &p in &pages {
            alloc.retain(p);
        }
        pages
    }

    /// Records that `pages` hold the latent rows of `tokens` (whole pages: `tokens.len() ==
    /// pages.len() * page_size`). Pages already cached under the same tokens are left as they are;
    /// new nodes retain their page.
    pub fn insert(&mut self, tokens: &[u32], pages: &[PageId], alloc: &mut BlockAllocator) {
        debug_assert_eq!(tokens.len(), pages.len() * self.page_size);
        let now = self.tick();
        let mut cur = ROOT;
        for (chunk, &page) in tokens.chunks_exact(self.page_size).zip(pages) {
            let next = match self.node(cur).children.get(chunk) {
                Some(&n) => n,
                None => {
                    let node = Node {
                        parent: cur,
                        key: chunk.into(),
                        page,
                        children: HashMap::new(),
                        last_access: now,
                    };
                    let id = match self.free_slots.pop() {
                        Some(slot) => {
                            self.nodes[slot] = Some(node);
                            slot
                        }
                        None => {
                            self.nodes.push(Some(node));
                            self.nodes.len() - 1
                        }
                    };
                    self.node_mut(cur).children.insert(chunk.into(), id);
                    alloc.retain(page);
                    self.len += 1;
                    id
                }
            };
            self.node_mut(next).last_access = now;
            cur = next;
        }
    }

    /// Evicts least-recently-used unreferenced leaves until `want` pages went back to the free
    /// list or nothing more can go; returns how many did.
    pub fn evict(&mut self, want: usize, alloc: &mut BlockAllocator) -> usize {
        if want == 0 {
            return 0;
        }
        let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(n) = n {
                if i != ROOT && n.children.is_empty() && alloc.refcount(n.page) == 1 {
                    heap.push(Reverse((n.last_access, i)));
                }
            }
        }
        let mut freed = 0;
        while freed < want {
            let Some(Reverse((_, i))) = heap.pop() else { break };
            let Some(node) = self.nodes[i].take() else { continue };
            self.free_slots.push(i);
            self.len -= 1;
            alloc.release(node.page);
            freed += 1;
            let parent = node.parent;
            self.node_mut(parent).children.remove(&node.key);
            if parent != ROOT {
                let p = self.node(parent);
                if p.children.is_empty() && alloc.refcount(p.page) == 1 {
                    heap.push(Reverse((p.last_access, parent)));
                }
            }
        }
        freed
    }

    /// Pages that [`evict`](Self::evict) could free now.
    pub fn evictable(&self, alloc: &BlockAllocator) -> usize {
        // Children always have larger slot ids? Not guaranteed (slots are reused), so recurse.
        fn walk(t: &RadixCache, i: usize, alloc: &BlockAllocator, count: &mut usize) -> bool {
            let n = t.node(i);
            let mut all = true;
            for &c in n.children.values() {
                all &= walk(t, c, alloc, count);
            }
            if i == ROOT {
                return all;
            }
            let ok = all && alloc.refcount(n.page) == 1;
            if ok {
                *count += 1;
            }
            ok
        }
        let mut count = 0;
        walk(self, ROOT, alloc, &mut count);
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_insert_evict() {
        let mut a = BlockAllocator::new(8);
        let mut t = RadixCache::new(2);
        let seq = a.alloc(3).unwrap_or_default();
        let toks = [1, 2, 3, 4, 5, 6, 7];
        t.insert(&toks[..6], &seq, &mut a);
        assert_eq!(t.len(), 3);
        // A second request sharing the first two pages.
        assert_eq!(t.peek_prefix(&[1, 2, 3, 4, 9, 9]), 2);
        let hit = t.match_prefix(&[1, 2, 3, 4, 9, 9], &mut a);
        assert_eq!(hit, seq[..2].to_vec());
        // The first sequence ends: only the tree and the second request hold pages.
        a.release_all(&seq);
        assert_eq!(t.evictable(&a), 1);
        assert_eq!(t.evict(8, &mut a), 1);
        assert_eq!(t.len(), 2);
        a.release_all(&hit);
        assert_eq!(t.evictable(&a), 2);
        assert_eq!(t.evict(8, &mut a), 2);
        assert_eq!(a.num_free(), 8);
        assert!(t.is_empty());
    }

    #[test]
    fn lru_order() {
        let mut a = BlockAllocator::new(8);
        let mut t = RadixCache::new(1);
        let p1 = a.alloc(1).unwrap_or_default();
        let p2 = a.alloc(1).unwrap_or_default();
        t.insert(&[1], &p1, &mut a);
        t.insert(&[2], &p2, &mut a);
        a.release_all(&p1);
        a.release_all(&p2);
        let hit = t.match_prefix(&[1], &mut a); // touch [1]
        a.release_all(&hit);
        assert_eq!(t.peek_prefix(&[2]), 1); // a peek does not make [2] recent
        assert_eq!(t.evict(1, &mut a), 1);
        assert_eq!(t.match_prefix(&[2], &mut a), Vec::<PageId>::new());
        assert_eq!(t.match_prefix(&[1], &mut a).len(), 1);
    }
}
