//! Contiguous arrays of cells that grow by copying ([`Cells`]), and the arrays a generation
//! holds ([`Arrays`]).

use super::layout::*;
use crate::sync::{Arc, UnsafeCell};

/// A contiguous array of cells, in 64-byte-aligned blocks of `N` cells (so that a node, a
/// table or a piece starts on a cache line). Which cells a reader may read, and when the
/// writer may write one, is the reclamation protocol's business (I3, I4); this type only owns
/// the memory.
pub(crate) struct Cells<T, const N: usize> {
    blocks: Box<[Block<T, N>]>,
}

#[repr(C, align(64))]
pub(super) struct Block<T, const N: usize>([UnsafeCell<T>; N]);

// SAFETY: cells are written only by the writer while unreachable from any generation that
// can be read (I3), and read through generations that keep the array alive: sharing the
// array between threads is sharing `T`s that are never written while shared.
unsafe impl<T: Send + Sync, const N: usize> Sync for Cells<T, N> {}
// SAFETY: the array owns its `T`s (`T: Send`): moving it, or its last `Arc`, to another
// thread moves them, and other threads reach its cells only through versions that hold it
// (I1).
unsafe impl<T: Send + Sync, const N: usize> Send for Cells<T, N> {}

impl<T: Copy + Default, const N: usize> Cells<T, N> {
    /// Blocks have no padding, so cell `i` is `i` cells from the base (see [`Cells::base`]).
    const FLAT: () =
        assert!(std::mem::size_of::<Block<T, N>>() == N * std::mem::size_of::<UnsafeCell<T>>());

    pub(super) fn new(len: usize) -> Self {
        Self::filled(len, |_| T::default())
    }

    /// `len` cells (rounded up to whole blocks), cell `i` holding `init(i)`.
    fn filled(len: usize, init: impl Fn(usize) -> T) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::FLAT;
        let blocks = (0..len.div_ceil(N))
            .map(|b| Block(std::array::from_fn(|k| UnsafeCell::new(init(b * N + k)))))
            .collect();
        Cells { blocks }
    }

    pub(super) fn len(&self) -> usize {
        self.blocks.len() * N
    }

    /// An array of `len` cells holding a copy of this one's (the writer growing an array).
    pub(super) fn grown(&self, len: usize) -> Self {
        Self::filled(len, |i| {
            if i < self.len() {
                // SAFETY: only the writer writes cells (I6), and it is the caller.
                self.cell(i).with(|p| unsafe { *p })
            } else {
                T::default()
            }
        })
    }

    /// The first cell: cell `i` is at `base().add(i)` (blocks are flat, `FLAT`).
    pub(super) fn base(&self) -> *const UnsafeCell<T> {
        self.blocks.as_ptr() as *const UnsafeCell<T>
    }

    /// Cell `i`, for the writer (I6).
    pub(super) fn cell(&self, i: usize) -> &UnsafeCell<T> {
        &self.blocks[i / N].0[i % N]
    }

    /// Cells `start .. start + len`, for the writer (I6) filling a node or a block.
    pub(super) fn range(&self, start: usize, len: usize) -> &[UnsafeCell<T>] {
        assert!(
            start <= self.len() && len <= self.len() - start,
            "cells out of the array"
        );
        // SAFETY: the blocks are one allocation of `len()` cells with no padding between
        // them (`FLAT`), so cells `start .. start + len` (checked above) are contiguous and
        // initialised, and borrowed no longer than `self`, which owns them (I1).
        unsafe { std::slice::from_raw_parts(self.base().add(start), len) }
    }
}

/// The arrays a generation's tree lives in; a [`Version`](crate::version::Version) holds
/// them, so their cells outlive every reference to the version (I1).
#[derive(Clone)]
pub(crate) struct Arrays {
    pub(super) nodes: Arc<Cells<u32, NODE_UNIT>>,
    pub(super) pieces: Arc<Cells<Piece, 2>>,
    pub(super) rows: Arc<Cells<u32, 16>>,
}

impl Arrays {
    /// Their base addresses, for the lookup.
    pub(crate) fn bases(&self) -> Bases {
        Bases {
            nodes: self.nodes.base(),
            pieces: self.pieces.base(),
            rows: self.rows.base(),
        }
    }
}

/// The base addresses of a generation's arrays, copied into its header
/// ([`Hot`](crate::version::Hot)): what every read of the read side starts from
/// ([`Held`](crate::view::Held), which owns those reads).
pub(crate) struct Bases {
    pub(crate) nodes: *const UnsafeCell<u32>,
    pub(crate) pieces: *const UnsafeCell<Piece>,
    pub(crate) rows: *const UnsafeCell<u32>,
}

impl Clone for Bases {
    fn clone(&self) -> Self {
        *self
    }
}
impl Copy for Bases {}

impl Bases {
    /// No arrays: the bases of [`Hot::NONE`](crate::version::Hot::NONE), never read through.
    pub(crate) const NULL: Bases = Bases {
        nodes: std::ptr::null(),
        pieces: std::ptr::null(),
        rows: std::ptr::null(),
    };
}
