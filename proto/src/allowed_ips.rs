//! Cryptokey routing: a longest-prefix-match table from IP prefixes to values
//! (peers), one path-compressed binary trie per address family.
//!
//! Lookups walk at most one node per distinct prefix length on the path and
//! never allocate. Inserting a prefix that is already present replaces its
//! value (a prefix belongs to exactly one peer, as in WireGuard).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Errors building prefixes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Prefix length longer than the address.
    #[error("prefix length {len} is longer than {max} for this address family")]
    TooLong {
        /// Given length.
        len: u8,
        /// Family maximum.
        max: u8,
    },
    /// Unparsable text.
    #[error("invalid IP prefix {0:?}")]
    Parse(String),
}

/// An IP prefix (address with host bits cleared, and a length).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// Builds a prefix, clearing host bits (as `wg` does).
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let max = max_len(&addr);
        if len > max {
            return Err(PrefixError::TooLong { len, max });
        }
        let key = to_key(addr) & mask(len);
        Ok(Self {
            addr: from_key(key, addr.is_ipv4()),
            len,
        })
    }
    /// A host prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            len: max_len(&addr),
        }
    }
    /// The (masked) network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }
    /// Whether this is a /0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && (to_key(ip) & mask(self.len)) == to_key(self.addr)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for IpPrefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| PrefixError::Parse(s.to_owned()))?;
        let len = match l {
            Some(l) => l.parse().map_err(|_| PrefixError::Parse(s.to_owned()))?,
            None => max_len(&addr),
        };
        Self::new(addr, len)
    }
}

fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// Left-aligned 128-bit key (IPv4 occupies the top 32 bits).
fn to_key(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_key(key: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from((key >> 96) as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(key))
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

fn bit(key: u128, pos: u8) -> usize {
    if pos >= 128 {
        0
    } else {
        ((key >> (127 - u32::from(pos))) & 1) as usize
    }
}

const NONE: u32 = u32::MAX;

#[derive(Clone)]
struct Node<V> {
    key: u128,
    len: u8,
    value: Option<V>,
    child: [u32; 2],
}

#[derive(Clone)]
struct Trie<V> {
    nodes: Vec<Node<V>>,
    free: Vec<u32>,
    root: u32,
    live: usize,
    dead: usize,
}

#[derive(Clone, Copy)]
enum Link {
    Root,
    Child(u32, usize),
}

impl<V: Copy + PartialEq> Trie<V> {
    const fn new() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NONE,
            live: 0,
            dead: 0,
        }
    }

    fn node(&self, idx: u32) -> Option<&Node<V>> {
        self.nodes.get(idx as usize)
    }

    fn node_mut(&mut self, idx: u32) -> Option<&mut Node<V>> {
        self.nodes.get_mut(idx as usize)
    }

    fn get_link(&self, link: Link) -> u32 {
        match link {
            Link::Root => self.root,
            Link::Child(p, b) => self.node(p).map_or(NONE, |n| n.child[b & 1]),
        }
    }

    fn set_link(&mut self, link: Link, target: u32) {
        match link {
            Link::Root => self.root = target,
            Link::Child(p, b) => {
                if let Some(n) = self.node_mut(p) {
                    n.child[b & 1] = target;
                }
            }
        }
    }

    fn alloc(&mut self, key: u128, len: u8, value: Option<V>) -> u32 {
        let node = Node {
            key,
            len,
            value,
            child: [NONE, NONE],
        };
        if let Some(idx) = self.free.pop()
            && let Some(slot) = self.node_mut(idx)
        {
            *slot = node;
            return idx;
        }
        self.nodes.push(node);
        (self.nodes.len() - 1) as u32
    }

    fn insert(&mut self, key: u128, len: u8, value: V) -> Option<V> {
        let key = key & mask(len);
        let mut link = Link::Root;
        loop {
            let idx = self.get_link(link);
            let Some(node) = self.node(idx) else {
                let n = self.alloc(key, len, Some(value));
                self.set_link(link, n);
                self.live += 1;
                return None;
            };
            let (nkey, nlen) = (node.key, node.len);
            let common = ((nkey ^ key).leading_zeros().min(128) as u8)
                .min(nlen)
                .min(len);
            if common == nlen && nlen == len {
                let node = self.node_mut(idx)?;
                let old = node.value.replace(value);
                if old.is_none() {
                    self.live += 1;
                    self.dead = self.dead.saturating_sub(1);
                }
                return old;
            }
            if common == nlen {
                link = Link::Child(idx, bit(key, nlen));
                continue;
            }
            if common == len {
                // The new prefix is an ancestor of `node`.
                let n = self.alloc(key, len, Some(value));
                if let Some(new) = self.node_mut(n) {
                    new.child[bit(nkey, len)] = idx;
                }
                self.set_link(link, n);
                self.live += 1;
                return None;
            }
            // Split: a value-less branch node at the common prefix.
            let branch = self.alloc(key & mask(common), common, None);
            let leaf = self.alloc(key, len, Some(value));
            if let Some(b) = self.node_mut(branch) {
                b.child[bit(key, common)] = leaf;
                b.child[bit(nkey, common)] = idx;
            }
            self.set_link(link, branch);
            self.live += 1;
            return None;
        }
    }

    fn lookup(&self, key: u128) -> Option<V> {
        let mut best = None;
        let mut idx = self.root;
        while let Some(node) = self.node(idx) {
            if (node.key ^ key) & mask(node.len) != 0 {
                break;
            }
            if node.value.is_some() {
                best = node.value;
            }
            if node.len >= 128 {
                break;
            }
            idx = node.child[bit(key, node.len)];
        }
        best
    }

    fn find_exact(&self, key: u128, len: u8) -> Option<u32> {
        let key = key & mask(len);
        let mut idx = self.root;
        while let Some(node) = self.node(idx) {
            if node.len > len || (node.key ^ key) & mask(node.len) != 0 {
                return None;
            }
            if node.len == len {
                return (node.key == key).then_some(idx);
            }
            idx = node.child[bit(key, node.len)];
        }
        None
    }

    fn get_exact(&self, key: u128, len: u8) -> Option<V> {
        self.find_exact(key, len)
            .and_then(|i| self.node(i))
            .and_then(|n| n.value)
    }

    fn remove(&mut self, key: u128, len: u8) -> Option<V> {
        let idx = self.find_exact(key, len)?;
        let old = self.node_mut(idx)?.value.take();
        if old.is_some() {
            self.live -= 1;
            self.dead += 1;
            self.maybe_compact();
        }
        old
    }

    fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) -> usize {
        let mut removed = 0;
        for node in &mut self.nodes {
            if let Some(v) = &node.value
                && !keep(v)
            {
                node.value = None;
                removed += 1;
            }
        }
        // Free-listed nodes never hold values, so this count is exact.
        self.live -= removed;
        self.dead += removed;
        self.maybe_compact();
        removed
    }

    fn entries(&self) -> Vec<(u128, u8, V)> {
        let mut out = Vec::with_capacity(self.live);
        let mut stack = vec![self.root];
        while let Some(idx) = stack.pop() {
            if let Some(node) = self.node(idx) {
                if let Some(v) = node.value {
                    out.push((node.key, node.len, v));
                }
                stack.push(node.child[1]);
                stack.push(node.child[0]);
            }
        }
        out
    }

    fn maybe_compact(&mut self) {
        if self.dead > 32 && self.dead > self.live {
            let entries = self.entries();
            *self = Self::new();
            for (k, l, v) in entries {
                self.insert(k, l, v);
            }
        }
    }

    fn len(&self) -> usize {
        self.live
    }
}

/// Longest-prefix-match table for IPv4 and IPv6.
#[derive(Clone)]
pub struct AllowedIps<V> {
    v4: Trie<V>,
    v6: Trie<V>,
}

impl<V: Copy + PartialEq> Default for AllowedIps<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy + PartialEq> AllowedIps<V> {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            v4: Trie::new(),
            v6: Trie::new(),
        }
    }

    fn trie(&self, v4: bool) -> &Trie<V> {
        if v4 { &self.v4 } else { &self.v6 }
    }

    fn trie_mut(&mut self, v4: bool) -> &mut Trie<V> {
        if v4 { &mut self.v4 } else { &mut self.v6 }
    }

    /// Inserts (or re-assigns) a prefix; returns the previous value.
    pub fn insert(&mut self, prefix: IpPrefix, value: V) -> Option<V> {
        let v4 = prefix.addr.is_ipv4();
        self.trie_mut(v4)
            .insert(to_key(prefix.addr), prefix.len, value)
    }

    /// Removes an exact prefix; returns its value.
    pub fn remove(&mut self, prefix: IpPrefix) -> Option<V> {
        let v4 = prefix.addr.is_ipv4();
        self.trie_mut(v4).remove(to_key(prefix.addr), prefix.len)
    }

    /// Value stored for exactly this prefix.
    pub fn get(&self, prefix: IpPrefix) -> Option<V> {
        self.trie(prefix.addr.is_ipv4())
            .get_exact(to_key(prefix.addr), prefix.len)
    }

    /// Removes every prefix whose value fails `keep`; returns how many.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) -> usize {
        self.v4.retain(&mut keep) + self.v6.retain(&mut keep)
    }

    /// Longest-prefix match. Allocation-free.
    pub fn lookup(&self, ip: IpAddr) -> Option<V> {
        self.trie(ip.is_ipv4()).lookup(to_key(ip))
    }

    /// All entries (IPv4 first, each family in address order).
    pub fn entries(&self) -> Vec<(IpPrefix, V)> {
        let mut out = Vec::with_capacity(self.len());
        for (v4, trie) in [(true, &self.v4), (false, &self.v6)] {
            for (k, l, v) in trie.entries() {
                out.push((
                    IpPrefix {
                        addr: from_key(k, v4),
                        len: l,
                    },
                    v,
                ));
            }
        }
        out
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        *self = Self::new();
    }
}
