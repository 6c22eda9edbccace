//! Typed errors. Every fallible call returns one of these and leaves the map (and the
//! transaction it was called on) exactly as it was before the call.

use std::fmt;

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
        range: (u64, u64),
        /// The mapped piece it collides with (first one found, inclusive ends).
        existing: (u64, u64),
    },
    /// The arena reached its configured or encodable limit for this kind of slot.
    CapacityExhausted {
        /// `"nodes"`, `"pieces"`, `"sub-page tables"` or `"sections"`.
        kind: &'static str,
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
                range.0, range.1, existing.0, existing.1
            ),
            Error::CapacityExhausted { kind, limit } => {
                write!(f, "capacity exhausted: at most {limit} {kind}")
            }
            Error::InvalidConfig { reason } => write!(f, "invalid configuration: {reason}"),
        }
    }
}

impl std::error::Error for Error {}
