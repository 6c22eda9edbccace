//! The map handle: configuration, and the state its handles share (the writer, the
//! publication point, the readers' registry).

use crate::memory::Memory;
use crate::qsbr::Registry;
use crate::reader::Reader;
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::sync::{Arc, Mutex};
use crate::transaction::Transaction;
use crate::writer::Writer;
use crate::{Config, Error};
use std::time::{Duration, Instant};

/// A guest-physical address map shared by many vCPU threads.
///
/// See the [crate docs](crate) for an example, the guarantees and the costs.
pub struct PhysMap<V> {
    config: Config,
    shared: Arc<Shared<V>>,
}

/// How a map's readers and writer order a reader's announcement against the writer's reading
/// of it ([`PhysMap::barrier`], [`Config::membarrier`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Barrier {
    /// A `SeqCst` fence on each side.
    Fence,
    /// A compiler fence on the reader's side, `membarrier(2)` on the writer's.
    Membarrier,
}

impl<V> PhysMap<V> {
    /// An empty map: 64-bit space, 4 KiB pages, 9 bits a level.
    pub fn new() -> Self {
        Self::with_config(Config::default()).expect("default config is valid")
    }

    /// An empty map of the given shape; `Err(Error::InvalidConfig)` if it makes no sense.
    pub fn with_config(config: Config) -> Result<Self, Error> {
        let (writer, publisher) = Writer::new(&config)?;
        let shared = Shared {
            publisher,
            registry: Registry::new(crate::sync::Barrier::choose(config.membarrier)),
            writer: Mutex::new(writer),
        };
        Ok(PhysMap {
            config,
            shared: Arc::new(shared),
        })
    }

    /// A map holding `ranges` (each its own section, as [`Transaction::extend`]), published
    /// as generation 1. Built with the bulk path: sorted once, subtrees built in parallel.
    ///
    /// ```
    /// use physmap::{Config, PhysMap};
    /// let map = PhysMap::from_ranges(Config::default(), [(0..0xa_0000, "ram"), (0xc_0000..0xe_0000, "rom")]).unwrap();
    /// assert_eq!(*map.snapshot().lookup(0xc_1234).unwrap().value, "rom");
    /// ```
    pub fn from_ranges<R: std::ops::RangeBounds<u64>>(
        config: Config,
        ranges: impl IntoIterator<Item = (R, V)>,
    ) -> Result<Self, Error> {
        let map = Self::with_config(config)?;
        let mut t = map.transaction();
        t.extend(ranges)?;
        t.commit()?;
        Ok(map)
    }

    /// How this map's readers and writer order announcements (see
    /// [`Config::membarrier`]): [`Barrier::Membarrier`] only if asked for and the kernel
    /// registered the process for it.
    pub fn barrier(&self) -> Barrier {
        match self.shared.registry.barrier() {
            crate::sync::Barrier::Fence => Barrier::Fence,
            crate::sync::Barrier::Membarrier => Barrier::Membarrier,
        }
    }

    /// The configuration the map was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts a transaction, waiting for the previous writer to finish. Readers never wait.
    pub fn transaction(&self) -> Transaction<'_, V> {
        Transaction::new(&self.shared)
    }

    /// The newest published generation.
    pub fn snapshot(&self) -> Snapshot<V> {
        Snapshot {
            version: self.shared.publisher.load_full(),
        }
    }

    /// A per-vCPU reader that always answers from the newest generation. It registers a
    /// slot where it announces the generation it reads (see [`Reader`]).
    pub fn reader(&self) -> Reader<V> {
        Reader::new(self.shared.clone())
    }

    /// Takes back the slots of generations nobody holds any more, then reports the arena's
    /// memory. Takes the writer lock (waits for a running transaction).
    pub fn memory(&self) -> Memory {
        self.shared.writer.lock().memory(&self.shared.registry)
    }

    /// Subtrees built by the bulk path (from a sorted slice of new pieces), and times a bulk
    /// build made a node's children in parallel (rayon), since the map was created: for
    /// physmap's own tests (feature `test-hooks`; not a stable API).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn build_counts(&self) -> crate::memory::BuildCounts {
        self.shared.writer.lock().build_counts()
    }

    /// Waits until no [`Reader`] can still be answering from a generation older than the one
    /// published when this is called: every reader has since started a lookup (and so
    /// announced that generation or a newer one), or is offline, or was dropped.
    ///
    /// What it guarantees, precisely:
    /// - **Readers.** When it returns, no `Hit` from an older generation is alive in any
    ///   reader (a `Hit` borrows its reader, which announces a newer generation only at its
    ///   next lookup), so a device or region removed by an earlier commit is no longer being
    ///   dispatched to through a reader. A reader that stays online without looking anything
    ///   up holds it back: a vCPU thread should go [`offline`](Reader::offline) while it
    ///   blocks or runs the guest (see [`PhysMap::synchronize_timeout`]).
    /// - **Offline readers** hold nothing and are not waited for.
    /// - **Snapshots** are not waited for: a [`Snapshot`] keeps its generation, and the values
    ///   in it, alive for as long as it is held.
    ///
    /// The VMM recipe for removing a device: commit the transaction that unmaps it, call
    /// `synchronize()`, then tear the device down.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let map = physmap::PhysMap::new();
    /// let device = Arc::new("uart");
    /// let mut t = map.transaction();
    /// t.insert(0x3f8..=0x3ff, device.clone()).unwrap();
    /// t.commit().unwrap();
    /// let mut vcpu = map.reader();
    /// assert!(vcpu.lookup(0x3f8).is_some());
    /// let mut t = map.transaction();
    /// t.remove(0x3f8..=0x3ff).unwrap();
    /// t.commit().unwrap();
    /// vcpu.offline();        // the vCPU thread, about to block in KVM_RUN
    /// map.synchronize();     // returns: no reader is still using the old generation
    /// drop(device);          // safe to tear the device down
    /// ```
    pub fn synchronize(&self) {
        self.synchronize_until(None);
    }

    /// [`PhysMap::synchronize`], giving up after `timeout`; returns whether every reader got
    /// past (false: an online reader is still on an older generation, e.g. idle without
    /// having gone offline).
    pub fn synchronize_timeout(&self, timeout: Duration) -> bool {
        self.synchronize_until(Some(Instant::now() + timeout))
    }

    fn synchronize_until(&self, deadline: Option<Instant>) -> bool {
        let target = self.shared.publisher.latest().generation();
        let mut spins = 0u32;
        self.shared.registry.synchronize(target, || {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            crate::sync::backoff(&mut spins);
            true
        })
    }
}

impl<V> Default for PhysMap<V> {
    fn default() -> Self {
        Self::new()
    }
}
