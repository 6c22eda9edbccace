//! Typed errors. Every fallible call returns one of these and leaves the map (and the
//! transaction it was called on) exactly as it was before the call.

use std::fmt;
use std::ops::RangeInclusive;

/// What went wrong. Messages name the offending range in hexadecimal, inclusive ends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The range holds no byte (`a..a`, `a..=a-1`, or a start bound past `u64::MAX`).
    EmptyRange {
        /// First byte asked for.
        start: u64,
    },
    /// The range ends before it starts (`5..3`).
    InvertedRange {
        /// Start bound as given (inclusive).
        start: u64,
        /// End bound as given, made inclusive (`..0`, which has no inclusive end, gives 0).
        /// Always less than `start`.
        end: u64,
    },
    /// Part of the range lies past the end of the address space (`2^addr_bits - 1`).
    OutOfSpace {
        /// First byte of the range.
        start: u64,
        /// Last byte of the range (inclusive), as far as it could be computed.
        end: u64,
        /// Last valid address of the space.
        limit: u64,
    },
    /// `start + len` does not fit in 64 bits (see [`crate::checked_range`]).
    Overflow {
        /// First byte of the range.
        start: u64,
        /// Length asked for.
        len: u64,
    },
    /// `insert` was asked to map bytes that are already mapped.
    Overlap {
        /// The range that was asked for.
        range: RangeInclusive<u64>,
        /// The mapped piece it collides with (the first one found).
        existing: RangeInclusive<u64>,
    },
    /// The arena reached its configured or encodable limit for this kind of slot.
    CapacityExhausted {
        /// What ran out.
        kind: Capacity,
        /// The limit that was hit.
        limit: usize,
    },
    /// A [`crate::Config`] that cannot describe a radix tree.
    InvalidConfig {
        /// Why, in words.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmptyRange { start } => write!(f, "empty range starting at {start:#x}"),
            Error::InvertedRange { start, end } => {
                write!(
                    f,
                    "inverted range {start:#x}..={end:#x}: end is before start"
                )
            }
            Error::OutOfSpace { start, end, limit } => write!(
                f,
                "range {start:#x}..={end:#x} goes past the end of the address space ({limit:#x})"
            ),
            Error::Overflow { start, len } => {
                write!(f, "range of {len:#x} bytes at {start:#x} overflows 64 bits")
            }
            Error::Overlap { range, existing } => write!(
                f,
                "range {:#x}..={:#x} overlaps mapped range {:#x}..={:#x}",
                range.start(),
                range.end(),
                existing.start(),
                existing.end()
            ),
            Error::CapacityExhausted { kind, limit } => {
                write!(f, "capacity exhausted: at most {limit} {kind}")
            }
            Error::InvalidConfig { reason } => write!(f, "invalid configuration: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

/// What an [`Error::CapacityExhausted`] ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capacity {
    /// Tree nodes ([`Config::max_nodes`](crate::Config::max_nodes), or what an entry can
    /// address).
    Nodes,
    /// Pieces ([`Config::max_pieces`](crate::Config::max_pieces), page records included).
    Pieces,
    /// Section slots (one per inserted range, [`Config::max_pieces`](crate::Config::max_pieces)).
    Sections,
    /// Cells of the row array, which holds the sub-page tables, flat nodes and page records.
    Rows,
    /// Sub-page rows in one page: more pieces in a single page than a table holds.
    RowsInOnePage,
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capacity::Nodes => "nodes",
            Capacity::Pieces => "pieces",
            Capacity::Sections => "sections",
            Capacity::Rows => "sub-page rows",
            Capacity::RowsInOnePage => "sub-page rows in one page",
        })
    }
}
