//! Anti-replay window (RFC 6479 bitmap without bit shifts), identical in
//! behaviour to the kernel's `counter_validate` (8192-bit ring, window 8128).

use crate::consts::{COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES};

const BITS_PER_BLOCK: u64 = 64;
const BLOCKS: usize = 8192 / 64;
const BLOCK_MASK: u64 = BLOCKS as u64 - 1;

/// Sliding-window replay filter for received transport counters.
#[derive(Clone)]
pub struct ReplayFilter {
    /// One more than the greatest counter accepted so far (0 = none yet).
    next: u64,
    bitmap: [u64; BLOCKS],
}

impl Default for ReplayFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayFilter")
            .field("next", &self.next)
            .finish()
    }
}

impl ReplayFilter {
    /// An empty filter.
    pub const fn new() -> Self {
        Self {
            next: 0,
            bitmap: [0; BLOCKS],
        }
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// One more than the greatest counter accepted (0 if none).
    pub fn next_expected(&self) -> u64 {
        self.next
    }

    /// Whether `counter` would be accepted, without recording it. Used to
    /// skip decryption of packets that are certainly stale.
    pub fn would_accept(&self, counter: u64) -> bool {
        if self.next > REJECT_AFTER_MESSAGES || counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let c = counter + 1;
        if COUNTER_WINDOW_SIZE + c < self.next {
            return false;
        }
        if c > self.next {
            return true;
        }
        let block = ((c / BITS_PER_BLOCK) & BLOCK_MASK) as usize;
        let bit = 1u64 << (c % BITS_PER_BLOCK);
        self.bitmap.get(block).is_some_and(|b| b & bit == 0)
    }

    /// Validates and records `counter`: true if it is new and inside the
    /// window (call only after the packet authenticated).
    pub fn validate(&mut self, counter: u64) -> bool {
        if self.next > REJECT_AFTER_MESSAGES || counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let c = counter + 1;
        if COUNTER_WINDOW_SIZE + c < self.next {
            return false;
        }
        let index = c / BITS_PER_BLOCK;
        if c > self.next {
            let current = self.next / BITS_PER_BLOCK;
            let top = (index - current).min(BLOCKS as u64);
            for i in 1..=top {
                if let Some(b) = self.bitmap.get_mut(((current + i) & BLOCK_MASK) as usize) {
                    *b = 0;
                }
            }
            self.next = c;
        }
        let bit = 1u64 << (c % BITS_PER_BLOCK);
        match self.bitmap.get_mut((index & BLOCK_MASK) as usize) {
            Some(b) => {
                let fresh = *b & bit == 0;
                *b |= bit;
                fresh
            }
            None => false,
        }
    }
}
