//! The arena: where trees live, shared by all generations.
//!
//! - Nodes, pieces and sub-page rows live in three contiguous arrays ([`Cells`]) that grow by
//!   copying: the writer allocates a twice larger array, copies every cell and builds on in
//!   it, while generations built before keep the array they were built in (each [`Version`]
//!   holds its arrays, [`Arrays`]). So a lookup reaches any slot with one multiply-add from a
//!   base pointer it read with the root, and a slot's address never changes while a
//!   generation that uses the array lives (invariant I1 of `ARCHITECTURE.md`).
//! - Node base pages and section values live in a [`Slab`]: chunks that never move, shared
//!   by all generations (`Storage`), because pieces point straight at their section's cell.
//!
//! Which slots are in use is the writer's bookkeeping ([`Arena`], [`SlabAlloc`]); when a slot
//! may be written is the reclamation protocol's (I3, I4). This module owns every raw cell
//! access of the crate: the readers' ([`Bases`], `Storage::value`) and the writer's
//! (`Arena::write_*`, `StorageWriter::write_section`, `take_section`: the writer's handle), each `unsafe` with the
//! invariant it needs spelled out here, once.
//!
//!
//! One file per concern: `layout` (size classes, encodings, pieces, page records, byte
//! counts), `cells` (the arrays), `bases` (every read of the read side, the SSE2 searches
//! included), `alloc` (the writer's arena and every write to the arrays), `slab` (stable
//! chunks and their allocator), `storage` (node base pages and section values).
//!
//! [`Version`]: crate::version::Version

mod alloc;
mod bases;
mod cells;
mod layout;
mod slab;
mod storage;
#[cfg(all(test, not(loom)))]
mod tests;

pub(crate) use alloc::*;
pub(crate) use bases::*;
pub(crate) use cells::*;
pub(crate) use layout::*;
pub(crate) use slab::*;
pub(crate) use storage::*;
