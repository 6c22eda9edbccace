//! The placements a vCPU dispatched to last ([`Recent`]): a hit costs one line where the walk
//! costs the tree's, the piece's and the placement's.

use std::ptr::NonNull;

/// How many placements a vCPU remembers.
const RECENT: usize = 3;

/// The placements a vCPU dispatched to last, in the generation it held then: exits cluster
/// on a few devices (a driver's doorbell and status registers, the serial port, the
/// interrupt controller), and a hit here costs one line where the walk costs the tree's
/// nodes, the piece and the placement (QEMU's dispatch remembers one section,
/// `AddressSpaceDispatch::mru_section`; this remembers three, with their devices inline).
/// On traffic spread over many devices it would cost a line per dispatch for nothing: a
/// score on the reader's first line, which a dispatch writes anyway, decides whether to
/// look here ([`Recent::ON`]).
#[repr(C, align(64))]
pub(super) struct Recent<D: ?Sized> {
    /// The generation the placements are of ([`NONE`](Recent::NONE) for none).
    pub(super) generation: u64,
    /// Entries in use (filled in order, then replaced round-robin from `next`).
    len: u32,
    /// The entry the next walk's placement replaces, once all are in use.
    next: u32,
    /// Each entry's first and last byte (an unused entry: 1 and 0, which no address is
    /// between).
    first: [u64; RECENT],
    last: [u64; RECENT],
    /// Each entry's device (`None` unused).
    device: [Option<NonNull<D>>; RECENT],
}

impl<D: ?Sized> Recent<D> {
    /// Tags no generation: generations start at 1 and count up.
    pub(super) const NONE: u64 = u64::MAX;
    /// The score from which the vCPU looks here first, and the most it holds: a hit sets
    /// it to `ON + 2 * MISS`, so that three misses in a row (with every entry in use) turn
    /// the lookups here off; while off, every dispatch adds 1 to it from 0, so that after
    /// `ON` dispatches the vCPU tries again (a line every `ON` dispatches on spread traffic).
    pub(super) const ON: u8 = 64;
    pub(super) const MISS: u8 = 4;

    pub(super) fn new() -> Self {
        Recent {
            generation: Self::NONE,
            len: 0,
            next: 0,
            first: [1; RECENT],
            last: [0; RECENT],
            device: [None; RECENT],
        }
    }

    /// Whether every entry is in use.
    #[inline(always)]
    pub(super) fn is_full(&self) -> bool {
        self.len as usize == RECENT
    }

    /// The entry holding `addr`, if any.
    #[inline(always)]
    pub(super) fn find(&self, addr: u64) -> Option<(u64, u64, NonNull<D>)> {
        for i in 0..RECENT {
            if self.first[i] <= addr && addr <= self.last[i] {
                return Some((self.first[i], self.last[i], self.device[i]?));
            }
        }
        None
    }

    /// Remembers a placement of the generation the entries are of: `device` on
    /// `first..=last`.
    #[inline(always)]
    pub(super) fn remember(&mut self, first: u64, last: u64, device: &D) {
        let i = if (self.len as usize) < RECENT {
            self.len += 1;
            self.len as usize - 1
        } else {
            let i = self.next as usize;
            self.next = ((i + 1) % RECENT) as u32;
            i
        };
        self.first[i] = first;
        self.last[i] = last;
        self.device[i] = Some(NonNull::from(device));
    }
}
