//! [`TreeRef`]: a safe, read-only view of one generation's tree, valid for a lifetime `'g`.
//!
//! A `TreeRef<'g, V>` is made only from a `&'g Version<V>` (see the version invariant in
//! `version.rs`): for `'g`, every slot reachable from its root exists (I1, I2) and is not
//! written (I3, I4). That one fact is what the few `unsafe` blocks below rely on; everything
//! built on them (the lookup, in-order walks, a node's children, the shape, the dump, the
//! fingerprint) is safe code, and the writer reads its current tree through the same view.
//!
//! The walk: the entry's tag says what it is; a node entry carries the shift of its node's
//! index (`entry.rs`), so a path may skip levels. Every lookup ends with "does the piece
//! really hold the address" (QEMU's final check), which makes early leaves, folded holes and
//! skipped levels correct: if a piece holds `addr`, the walk reaches it, because a piece
//! overlaps every span on the path to `addr`.
//!
//! Here: the view and its raw accessors (the read side's only `unsafe`); `entries` (what a
//! view hands out), `find` (the lookup), `walk` (in-order walks), `structure` (the writer's
//! queries: what a node holds, a position's children), `inspect` (shape, fingerprint, dump).

mod entries;
mod find;
mod held;
mod inspect;
mod structure;
mod tree;
mod walk;

pub(crate) use entries::*;
pub(crate) use find::*;
pub(crate) use held::{Held, Near};
pub(crate) use tree::*;
pub(crate) use walk::*;
