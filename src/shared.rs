//! What a map, its readers and its transactions share: the publication point, the readers'
//! registry and the writer.

use crate::qsbr::Registry;
use crate::sync::{Mutex, Publisher};
use crate::version::Version;
use crate::writer::Writer;

/// What the map, its readers and its transactions share. Readers hold it too, so that the
/// versions they read (owned by the writer) live as long as they do.
pub(crate) struct Shared<V> {
    /// The newest version: loaded by readers and snapshots, stored by the writer.
    pub publisher: Publisher<Version<V>>,
    /// The readers' announcements (`qsbr.rs`).
    pub registry: Registry,
    /// The write side, behind the writer lock (I6).
    pub writer: Mutex<Writer<V>>,
}
