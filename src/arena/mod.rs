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
//! may be written is the reclamation protocol's (I3, I4). This module owns the memory and
//! every write to it: the arrays' cells are written only by [`Arena`] through `&mut self`,
//! where it allocates them (`new_node`, `new_piece`, the row blocks), and section values and
//! node base pages only through the writer's handle, [`StorageWriter`] (I6). The read side's
//! raw reads of the arrays are `view::Held`'s (from the [`Bases`] in a version's header), and
//! of a section's value `Storage::value`'s.
//!
//! One file per concern: `layout` (size classes, encodings, pieces, page records, byte
//! counts), `cells` (the arrays and their base addresses), `alloc` (the writer's arena and
//! every write to the arrays), `slab` (stable chunks and their allocator), `storage` (node
//! base pages and section values).
//!
//! [`Version`]: crate::version::Version

mod alloc;
mod cells;
mod layout;
mod slab;
mod storage;
#[cfg(all(test, not(loom)))]
mod tests;

pub(crate) use alloc::*;
pub(crate) use cells::*;
pub(crate) use layout::*;
pub(crate) use slab::*;
pub(crate) use storage::*;
