//! # physmap
//!
//! A guest-physical address map for virtual machine monitors: "which section holds guest
//! address A, and at what offset?", answered lock-free by many vCPU threads while a control
//! plane (hotplug, PCI BAR moves, virtio-mem, ROM/RAM toggles, private/shared conversions)
//! changes the map in transactions.
//!
//! ```
//! use physmap::PhysMap;
//!
//! #[derive(Debug, PartialEq)]
//! enum Region { Ram, Ioapic, Hpet }
//!
//! let map = PhysMap::new();
//! let mut txn = map.transaction();
//! txn.insert(0..0x8000_0000, Region::Ram)?;                 // 2 GiB of RAM
//! txn.remove(0xa_0000..0x10_0000)?;                         // legacy VGA/BIOS hole
//! txn.insert(0xfec0_0000..=0xfec0_0fff, Region::Ioapic)?;
//! txn.insert(0xfed0_0000..=0xfed0_03ff, Region::Hpet)?;     // a sub-page section
//! txn.commit()?;                                            // published atomically
//!
//! let mut vcpu = map.reader();                              // one per vCPU thread
//! let hit = vcpu.lookup(0x10_2000).unwrap();
//! assert_eq!(*hit.value, Region::Ram);
//! assert_eq!(hit.offset, 0x10_2000);                        // offset from the RAM's origin
//! assert_eq!(hit.range, 0x10_0000..=0x7fff_ffff);           // the piece after the hole
//! assert!(vcpu.lookup(0xb_8000).is_none());                 // in the hole
//! assert_eq!(*vcpu.lookup(0xfed0_0100).unwrap().value, Region::Hpet);
//! assert!(vcpu.lookup(0xfed0_0400).is_none());              // same page, past the HPET
//! # Ok::<(), physmap::Error>(())
//! ```
//!
//! ## How it works
//!
//! A radix tree over page numbers, as in QEMU's `phys_map` (by default 9 bits a level over
//! 4 KiB pages of a 64-bit space: 6 levels). Its entries are 32 bits (nodes of 2 KiB):
//!
//! - **Early termination.** An entry at any level may be a leaf for its whole aligned span,
//!   and a span whose only content is one piece is a leaf even if the piece covers only part
//!   of it (the final "does the piece hold the address" check rejects the rest). 1 TiB of RAM
//!   is one leaf; with the legacy hole punched in it, four nodes.
//! - **Path compression.** A node with a single non-empty child is replaced by that child;
//!   the entry carries the child's index shift, so the walk skips the missing levels without
//!   knowing them.
//! - **Sub-page tables.** A page holding several pieces gets a 64-byte block of rows (eight
//!   starts, eight pieces; larger for crowded pages), searched without branches, not QEMU's
//!   8 KiB per page; sections resolve to the byte.
//! - **Canonical shape.** After every commit the tree is the unique fully collapsed tree of
//!   the mapping, whatever history built it.
//!
//! Nodes, pieces and table rows live in contiguous arrays: a node entry holds its node's
//! offset in the node array, so each level of the walk is one multiply-add from a base
//! pointer read with the root, and one load. Writers build the new tree copy-on-write in
//! those arrays (growing one copies it; generations built before keep the old copy) and
//! publish its root with one atomic pointer swap (`arc-swap`); readers walk an immutable
//! generation (RCU style). `ARCHITECTURE.md` has the module map and the numbered invariants
//! the code relies on.
//!
//! ## Guarantees
//!
//! - **Atomic generations.** A reader sees all of a committed transaction or none of it; the
//!   generations one [`Reader`] sees never go backwards, and a lookup started after
//!   [`Transaction::commit`] returned answers from that generation or a newer one.
//! - **Readers never block.** [`Reader::lookup`] takes no lock, allocates nothing and does no
//!   atomic read-modify-write: one load and compare to check its generation, then one
//!   dependent load per tree level plus the final range check. When the generation changed,
//!   the reader announces the new one with one plain store to a slot on its own cache line
//!   (then a fence, and a check that the generation did not move meanwhile). With
//!   [`Config::membarrier`] that fence is a compiler fence and the writer issues
//!   `membarrier(2)` instead, when it reclaims or synchronizes ([`Barrier`]).
//! - **A line of the reader's own.** A warm [`Reader`] lookup reads only the handle (a copy
//!   of the generation it holds and of that generation's header, the piece it remembers).
//!   A bus dispatch, which goes online and offline around every access, reads the handle's
//!   first three words and one 64-byte line of the reader's (its announcement, the same
//!   header copy): from cold caches, as at a VM exit, that line, the publication point's,
//!   and then the tree's.
//! - **Immutable once published.** No slot reachable from a published root is written again.
//! - **Bounded garbage.** Every slot is born in one generation and retired by a later commit;
//!   the writer reuses it once no [`Snapshot`] holds, and no online [`Reader`] announces, a
//!   generation between the two (interval-based reclamation; readers never run reclamation
//!   code). So a snapshot held for an hour, or a reader online but idle, costs at most what
//!   its own generation's tree holds, however many commits follow
//!   ([`Memory::pinned_bytes`]); with none held, the arena's memory ([`PhysMap::memory`])
//!   equals the newest tree ([`Snapshot::stats`]).
//! - **Waiting for readers.** [`PhysMap::synchronize`] returns once every online reader has
//!   moved past the generations older than the one current at the call, so a device unmapped
//!   by an earlier commit is no longer being dispatched to (commit, synchronize, then tear the
//!   device down).
//! - **Errors, not panics.** Empty, inverted, out-of-space or overflowing ranges, overlaps on
//!   [`Transaction::insert`] and exhausted capacity return an [`Error`] and leave the
//!   transaction as it was. A transaction dropped without commit (a panic included) publishes
//!   nothing, and the next writer proceeds (the writer lock does not poison).
//! - **Values are dropped by the writer while the map lives.** A section's value is dropped
//!   inside a later `transaction()`, `commit()` or `memory()` call once no generation can
//!   reach it, so vCPU threads do not run `Drop` code. Once the [`PhysMap`] itself is dropped,
//!   the values still reachable are dropped by whichever handle goes last: the map, or the
//!   last [`Snapshot`] or [`Reader`] still holding a generation (possibly on a vCPU thread).
//! - **A panicking `Drop` corrupts nothing.** Every writer path that drops values (commit,
//!   rollback, reclamation, the map's drop) first finishes its bookkeeping (each slot freed
//!   exactly once), then drops each value on its own, so one panic neither skips the other
//!   values nor leaks a slot; the first panic then propagates from the call that dropped it
//!   (from `commit`, after the commit has taken effect; from a rollback that is itself part
//!   of unwinding, it is swallowed, since a second panic would abort). The map answers
//!   correctly afterwards (`tests/panics.rs`, also under Miri).
//!
//! ## Costs
//!
//! - Lookup: one dependent load per level, at most 6 by default (3 for the devices of a real
//!   q35 machine), then the piece and its value; none when a reader's lookups keep landing in
//!   the same piece (it then tries that piece first).
//! - Commit: copies only the nodes on the paths through changed ranges: a one-range change
//!   touches at most `levels` nodes, whatever the size of the map (plus O(log n) in the
//!   writer's `BTreeMap` of pieces).
//! - Memory: 2 KiB per node + 8 bytes of base address, 32 bytes per piece (12 for a piece
//!   that is exactly one page with its origin at its start: a page record, what
//!   [`Transaction::insert_shared`] makes of page-sized ranges), 72 bytes per sub-page
//!   table of up to 8 pieces, `size_of::<V>()` and a bit per section; plus the
//!   writer's `BTreeMap` of pieces (about 48 bytes a piece). The arrays grow by doubling and
//!   keep their capacity; growing one copies it, once, during the commit that needs it.
//!   With [`Config::flat_nodes`], a sparse subtree of at most 16 runs of pages is one
//!   144-byte flat node instead of 2 KiB per level (real VM maps: about half the bytes),
//!   searched without branches; an MMIO lookup ending in one pays that search where a dense
//!   node costs one load.
//! - Capacity: 524,288 nodes at the default fan-out (node entries address 2^24 cache lines),
//!   2^30 - 1 pieces; past that a commit returns [`Error::CapacityExhausted`].
//!
//! ## Scale
//!
//! [`Transaction::extend`] and [`PhysMap::from_ranges`] take many ranges at once and build the
//! subtrees they fill from a sorted slice, in parallel (rayon) above 16,384 pieces;
//! [`Transaction::insert_shared`] does the same for many ranges that share one value (one
//! section for all of them, each range its own origin).
//! [`Snapshot::diff`] lists what changed between two generations at a cost that follows the
//! change, which is how a memory listener (KVM memslots, vhost, VFIO) keeps in step;
//! [`Snapshot::range`] lists the pieces under an address range.
//!
//! ## Concurrency checking
//!
//! All atomics, locks, shared cells and the publication point go through the crate-internal
//! `sync` module. Built with `RUSTFLAGS="--cfg loom"`, they become `loom`'s, and the models in
//! `loom-tests/` run this code: `arc-swap`, `parking_lot` and `rayon` are not loom-aware, so
//! under loom the publication cell is a loom mutex around an `Arc` with its pointer mirrored in
//! a loom atomic, the writer lock is a loom mutex, and the bulk build runs sequentially. The
//! readers' announcement slots are loom atomics with loom fences; `membarrier(2)` is modelled
//! by a per-reader loom mutex that the reader releases only at its interruption points and
//! the writer's barrier takes (so the models run under both barriers). Models cover
//! publishing, refreshing, reclaiming past held generations (a held snapshot and an idle
//! reader pin only their own trees), announcing, going offline and online, `synchronize`
//! against a reader mid-lookup, a reader dropped mid-way and a panicking writer, and
//! `scripts/loom-mutants.sh` shows each seeded protocol bug caught under each barrier.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod arena;
mod bulk;
#[cfg(feature = "bus")]
#[cfg_attr(docsrs, doc(cfg(feature = "bus")))]
pub mod bus;
mod canon;
#[cfg(feature = "ch-bus")]
#[cfg_attr(docsrs, doc(cfg(feature = "ch-bus")))]
pub mod ch_bus;
mod config;
mod diff;
mod drops;
mod entry;
mod error;
#[cfg(feature = "fc-bus")]
#[cfg_attr(docsrs, doc(cfg(feature = "fc-bus")))]
pub mod fc_bus;
mod map;
mod memory;
#[cfg(feature = "mtree")]
#[cfg_attr(docsrs, doc(cfg(feature = "mtree")))]
pub mod mtree;
mod qsbr;
mod reader;
mod reclaim;
mod shared;
mod snapshot;
mod sync;
#[cfg(any(feature = "ch-bus", feature = "fc-bus"))]
mod thread_vcpus;
mod transaction;
mod version;
mod view;
#[cfg(feature = "vm-memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
pub mod vm_memory;
mod writer;

pub use config::{checked_range, Config};
pub use diff::{Change, Mapping};
pub use error::{Capacity, Error};
pub use map::{Barrier, PhysMap};
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use memory::BuildCounts;
pub use memory::Memory;
pub use reader::Reader;
pub use snapshot::{Hit, Iter, Snapshot, Stats};
pub use transaction::Transaction;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
