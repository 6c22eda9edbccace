//! The map handle: configuration, the writer lock and the publication point.

use crate::reader::Reader;
use crate::snapshot::Snapshot;
use crate::sync::{Arc, Cache, Mutex, Publisher};
use crate::transaction::Transaction;
use crate::version::Version;
use crate::writer::Writer;
use crate::{Config, Error};

/// A guest-physical address map shared by many vCPU threads.
///
/// See the [crate docs](crate) for an example, the guarantees and the costs.
pub struct PhysMap<V> {
    config: Config,
    publisher: Arc<Publisher<Version<V>>>,
    writer: Mutex<Writer<V>>,
}

/// Memory held by a map's arena, as the writer accounts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Memory {
    /// Bytes of slots in use: the newest tree plus whatever older generations still held by
    /// a snapshot or reader keep alive. Counted like [`Stats::bytes`](crate::Stats::bytes).
    pub live_bytes: usize,
    /// Node slots in use.
    pub nodes: usize,
    /// Piece slots in use.
    pub pieces: usize,
    /// Sub-page tables in use.
    pub subpage_tables: usize,
    /// Section slots in use.
    pub sections: usize,
    /// Superseded generations still waiting because a snapshot or reader holds them (or one
    /// older than them). Non-zero with no snapshot held means a `Reader` is idle on an old
    /// generation (see [`Reader::refresh`](crate::Reader::refresh)).
    pub pinned_generations: usize,
    /// Subtrees built by the bulk path (from a sorted slice of new pieces) since the map was
    /// created.
    pub bulk_builds: u64,
    /// Times a bulk build made a node's children in parallel (rayon) since the map was
    /// created (see [`Transaction::extend`]).
    pub parallel_builds: u64,
    /// Bytes of node storage reserved by the arena's chunks (chunks grow geometrically and
    /// are kept for reuse; at most about twice the peak node count).
    pub reserved_node_bytes: usize,
}

impl<V> PhysMap<V> {
    /// An empty map: 64-bit space, 4 KiB pages, 9 bits a level.
    pub fn new() -> Self {
        Self::with_config(Config::default()).expect("default config is valid")
    }

    /// An empty map of the given shape; `Err(Error::InvalidConfig)` if it makes no sense.
    pub fn with_config(config: Config) -> Result<Self, Error> {
        let (writer, publisher) = Writer::new(&config)?;
        Ok(PhysMap {
            config,
            publisher,
            writer: Mutex::new(writer),
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

    /// The configuration the map was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts a transaction, waiting for the previous writer to finish. Readers never wait.
    pub fn transaction(&self) -> Transaction<'_, V> {
        Transaction::new(self.writer.lock())
    }

    /// The newest published generation.
    pub fn snapshot(&self) -> Snapshot<V> {
        Snapshot {
            version: self.publisher.load_full(),
        }
    }

    /// A per-vCPU reader that always answers from the newest generation.
    pub fn reader(&self) -> Reader<V> {
        Reader::new(Cache::new(self.publisher.clone()))
    }

    /// Takes back the slots of generations nobody holds any more, then reports the arena's
    /// memory. Takes the writer lock (waits for a running transaction).
    pub fn memory(&self) -> Memory {
        self.writer.lock().memory()
    }
}

impl<V> Default for PhysMap<V> {
    fn default() -> Self {
        Self::new()
    }
}
