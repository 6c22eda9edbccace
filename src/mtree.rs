//! Reader for QEMU's `info mtree -f` (and `-f -d`) monitor output.
//!
//! Each `FlatView #N` block names the address spaces that share it, lists its flat ranges
//! (`start-end (prio P, kind): name [@offset]`, inclusive ends; `@offset` is the offset inside
//! the memory region) and, with `-d`, QEMU's own dispatch: its section table and its radix
//! nodes. [`Dump::parse`] reads all of that; [`FlatView::build`] turns a FlatView into a
//! [`PhysMap`].
//!
//! ```
//! let text = "FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n  \
//!     0000000000000000-000000000009ffff (prio 0, ram): pc.ram\n  \
//!     00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000\n";
//! let dump = physmap::mtree::Dump::parse(text, "example").unwrap();
//! let fv = dump.find("memory").unwrap();
//! let map = fv.build().unwrap();
//! let snap = map.snapshot();
//! let hit = snap.lookup(0xe_0010).unwrap();
//! let range = &fv.ranges[*hit.value];
//! assert_eq!((range.name.as_str(), hit.offset + range.offset), ("pc.bios", 0x2_0010));
//! ```

use crate::{Error, PhysMap};
use std::fmt;

/// A whole dump: every FlatView in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// FlatViews in file order.
    pub flatviews: Vec<FlatView>,
}

/// One FlatView: the flattened memory map shared by one or more address spaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlatView {
    /// `N` of `FlatView #N`.
    pub index: usize,
    /// Names of the address spaces sharing it (`AS "name"` lines).
    pub address_spaces: Vec<String>,
    /// Root memory region name (`None` for `(none)`).
    pub root: Option<String>,
    /// Flat ranges in file order.
    pub ranges: Vec<FlatRange>,
    /// QEMU's dispatch tree, when the dump was taken with `-d`.
    pub dispatch: Option<Dispatch>,
    /// Line of the `FlatView` header (1-based).
    pub line: usize,
}

/// One flat range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// QEMU priority.
    pub priority: i64,
    /// `ram`, `rom`, `i/o`, `romd`, ...
    pub kind: String,
    /// Memory region name.
    pub name: String,
    /// Offset of `start` inside the memory region (`@offset`, 0 if absent).
    pub offset: u64,
    /// Line in the dump (1-based).
    pub line: usize,
}

/// QEMU's dispatch for one FlatView, as dumped by `info mtree -f -d`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dispatch {
    /// The section table: (index, start, end, name).
    pub sections: Vec<(usize, u64, u64, String)>,
    /// Bits per level and number of levels.
    pub level_bits: u32,
    /// Levels.
    pub levels: u32,
    /// Root node (`ptr=[k]`), `None` for `NIL` or a section.
    pub root: Option<usize>,
    /// Nodes: for each, its entries as (first index, last index, target).
    pub nodes: Vec<Vec<(u32, u32, Target)>>,
}

/// Where a QEMU dispatch entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `ptr=NIL`
    Nil,
    /// `ptr=[k]`
    Node(usize),
    /// `ptr=#k`
    Section(usize),
}

impl Dispatch {
    /// Nodes reachable from the root.
    pub fn reachable_nodes(&self) -> usize {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = self.root.into_iter().collect();
        while let Some(n) = stack.pop() {
            if n >= seen.len() || seen[n] {
                continue;
            }
            seen[n] = true;
            for &(_, _, t) in &self.nodes[n] {
                if let Target::Node(c) = t {
                    stack.push(c);
                }
            }
        }
        seen.iter().filter(|&&s| s).count()
    }

    /// Sub-page tables: QEMU's unnamed page-sized container sections (all but #0).
    pub fn subpage_tables(&self) -> usize {
        self.sections
            .iter()
            .filter(|(i, _, _, name)| *i != 0 && name == "(noname)")
            .count()
    }

    /// QEMU's bytes for this dispatch: 2 KiB per allocated node (512 entries of 32 bits) and
    /// 8 KiB per sub-page table (4096 entries of 16 bits).
    pub fn bytes(&self) -> usize {
        self.nodes.len() * 2048 + self.subpage_tables() * 8192
    }
}

/// A line the reader did not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// File name as given to [`Dump::parse`].
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

fn hex(s: &str) -> Option<u64> {
    let s = s.trim_start_matches("0x");
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Where the reader is inside a FlatView block.
#[derive(PartialEq)]
enum Part {
    Header,
    Sections,
    Nodes,
}

impl Dump {
    /// Parses a dump. `file` is only used in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Dump, ParseError> {
        let mut dump = Dump::default();
        let mut part = Part::Header;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let err = |message: String| ParseError {
                file: file.to_string(),
                line: line_no,
                message,
            };
            let line = raw.trim_end();
            let t = line.trim();
            if t.is_empty() || t.starts_with("(qemu)") || t.starts_with("QEMU ") {
                continue;
            }
            if let Some(rest) = t.strip_prefix("FlatView #") {
                let index = rest
                    .parse()
                    .map_err(|_| err(format!("bad FlatView number {rest:?}")))?;
                dump.flatviews.push(FlatView {
                    index,
                    line: line_no,
                    ..Default::default()
                });
                part = Part::Header;
                continue;
            }
            let Some(fv) = dump.flatviews.last_mut() else {
                return Err(err(format!("expected `FlatView #N`, found {t:?}")));
            };
            if let Some(rest) = t.strip_prefix("AS \"") {
                let name = rest.split('"').next().unwrap_or_default();
                fv.address_spaces.push(name.to_string());
            } else if let Some(rest) = t.strip_prefix("Root memory region: ") {
                fv.root = (rest != "(none)").then(|| rest.to_string());
            } else if t == "No rendered FlatView" {
            } else if t == "Dispatch" {
                fv.dispatch = Some(Dispatch::default());
            } else if t == "Physical sections" {
                part = Part::Sections;
            } else if let Some(rest) = t.strip_prefix("Nodes (") {
                let d = fv.dispatch.get_or_insert_with(Dispatch::default);
                parse_nodes_header(rest, d).map_err(err)?;
                part = Part::Nodes;
            } else if part == Part::Sections && t.starts_with('#') {
                let d = fv
                    .dispatch
                    .as_mut()
                    .ok_or_else(|| err("section outside Dispatch".into()))?;
                d.sections.push(parse_section(t).map_err(err)?);
            } else if part == Part::Nodes && t.starts_with('[') && t.ends_with(']') {
                let d = fv
                    .dispatch
                    .as_mut()
                    .ok_or_else(|| err("node outside Dispatch".into()))?;
                let k: usize = t[1..t.len() - 1]
                    .parse()
                    .map_err(|_| err(format!("bad node header {t:?}")))?;
                if k != d.nodes.len() {
                    return Err(err(format!(
                        "node [{k}] out of order (expected [{}])",
                        d.nodes.len()
                    )));
                }
                d.nodes.push(Vec::new());
            } else if part == Part::Nodes && t.contains("skip=") {
                let d = fv
                    .dispatch
                    .as_mut()
                    .ok_or_else(|| err("entry outside Dispatch".into()))?;
                let entry = parse_entry(t).map_err(err)?;
                d.nodes
                    .last_mut()
                    .ok_or_else(|| err("entry before any node".into()))?
                    .push(entry);
            } else if part == Part::Header && fv.dispatch.is_none() {
                fv.ranges.push(parse_range(t, line_no).map_err(err)?);
            } else {
                return Err(err(format!("unrecognised line {t:?}")));
            }
        }
        Ok(dump)
    }

    /// The FlatView used by address space `name`.
    pub fn find(&self, name: &str) -> Option<&FlatView> {
        self.flatviews
            .iter()
            .find(|fv| fv.address_spaces.iter().any(|a| a == name))
    }

    /// Every address-space name in the dump.
    pub fn address_space_names(&self) -> Vec<&str> {
        self.flatviews
            .iter()
            .flat_map(|fv| fv.address_spaces.iter().map(String::as_str))
            .collect()
    }
}

fn parse_range(t: &str, line: usize) -> Result<FlatRange, String> {
    let bad = || format!("expected `start-end (prio P, kind): name [@offset]`, found {t:?}");
    let (span, rest) = t.split_once(" (prio ").ok_or_else(bad)?;
    let (a, b) = span.split_once('-').ok_or_else(bad)?;
    let (start, end) = (hex(a).ok_or_else(bad)?, hex(b).ok_or_else(bad)?);
    if end < start {
        return Err(format!("range {start:#x}-{end:#x} ends before it starts"));
    }
    let (attrs, name) = rest.split_once("): ").ok_or_else(bad)?;
    let (prio, kind) = attrs.split_once(", ").ok_or_else(bad)?;
    let priority = prio.trim().parse().map_err(|_| bad())?;
    let mut offset = 0;
    let mut words = Vec::new();
    for w in name.split_whitespace() {
        match w.strip_prefix('@') {
            Some(o) => offset = hex(o).ok_or_else(bad)?,
            None => words.push(w),
        }
    }
    if words.is_empty() {
        return Err(bad());
    }
    if offset.checked_add(end - start).is_none() {
        return Err(format!(
            "region offset @{offset:#x} of range {start:#x}-{end:#x} runs past 2^64"
        ));
    }
    Ok(FlatRange {
        start,
        end,
        priority,
        kind: kind.to_string(),
        name: words.join(" "),
        offset,
        line,
    })
}

fn parse_section(t: &str) -> Result<(usize, u64, u64, String), String> {
    let bad = || format!("expected `#N @start..end name`, found {t:?}");
    let mut it = t.splitn(3, ' ');
    let idx = it
        .next()
        .and_then(|s| s[1..].parse().ok())
        .ok_or_else(bad)?;
    let span = it
        .next()
        .and_then(|s| s.strip_prefix('@'))
        .ok_or_else(bad)?;
    let (a, b) = span.split_once("..").ok_or_else(bad)?;
    let name = it
        .next()
        .unwrap_or("")
        .split(" [")
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    Ok((idx, hex(a).ok_or_else(bad)?, hex(b).ok_or_else(bad)?, name))
}

fn parse_nodes_header(rest: &str, d: &mut Dispatch) -> Result<(), String> {
    // "9 bits per level, 6 levels) ptr=[3] skip=4"
    let bad =
        || format!("expected `Nodes (B bits per level, L levels) ptr=.. skip=..`, found {rest:?}");
    let (bits, rest) = rest.split_once(" bits per level, ").ok_or_else(bad)?;
    let (levels, rest) = rest.split_once(" levels)").ok_or_else(bad)?;
    d.level_bits = bits.trim().parse().map_err(|_| bad())?;
    d.levels = levels.trim().parse().map_err(|_| bad())?;
    let ptr = rest
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ptr="))
        .ok_or_else(bad)?;
    d.root = match parse_target(ptr).ok_or_else(bad)? {
        Target::Node(n) => Some(n),
        _ => None,
    };
    Ok(())
}

fn parse_target(p: &str) -> Option<Target> {
    if p == "NIL" {
        Some(Target::Nil)
    } else if let Some(n) = p.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        n.parse().ok().map(Target::Node)
    } else {
        p.strip_prefix('#')
            .and_then(|s| s.parse().ok())
            .map(Target::Section)
    }
}

fn parse_entry(t: &str) -> Result<(u32, u32, Target), String> {
    let bad = || format!("expected `i[..j] skip=S ptr=P`, found {t:?}");
    let mut words = t.split_whitespace();
    let span = words.next().ok_or_else(bad)?;
    let (a, b) = span.split_once("..").unwrap_or((span, span));
    let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    let ptr = words.find_map(|w| w.strip_prefix("ptr=")).ok_or_else(bad)?;
    Ok((a, b, parse_target(ptr).ok_or_else(bad)?))
}

impl FlatView {
    /// The fewest address bits that hold every range (at least a page's, 12): 16 for an x86
    /// port I/O space, whose last range ends at 0xffff, 32 for a PC's memory below 4 GiB.
    ///
    /// ```
    /// let text = "FlatView #0\n AS \"I/O\", root: io\n  \
    ///     0000000000000000-0000000000000007 (prio 0, i/o): dma-chan\n  \
    ///     0000000000000008-000000000000ffff (prio 0, i/o): io\n";
    /// let dump = physmap::mtree::Dump::parse(text, "io.txt").unwrap();
    /// assert_eq!(dump.flatviews[0].space_bits(), 16);
    /// ```
    pub fn space_bits(&self) -> u32 {
        let last = self.ranges.iter().map(|r| r.end).max().unwrap_or(0);
        (u64::BITS - last.leading_zeros()).max(crate::Config::default().page_bits)
    }

    /// The default geometry over [`space_bits`](FlatView::space_bits): the space a VMM would
    /// give this FlatView's map (a 16-bit port I/O space is one node of its 16 pages).
    pub fn config(&self) -> crate::Config {
        crate::Config {
            addr_bits: self.space_bits(),
            ..crate::Config::default()
        }
    }

    /// A map of this FlatView over its [`config`](FlatView::config); each value is the index
    /// of its range in [`FlatView::ranges`]. `Hit::offset + ranges[i].offset` is the offset
    /// in the region.
    pub fn build(&self) -> Result<PhysMap<usize>, Error> {
        self.build_with(self.config())
    }

    /// [`build`](FlatView::build) with a chosen geometry and layout (e.g.
    /// [`Config::flat_nodes`](crate::Config::flat_nodes)).
    pub fn build_with(&self, config: crate::Config) -> Result<PhysMap<usize>, Error> {
        let map = PhysMap::with_config(config)?;
        let mut t = map.transaction();
        for (i, r) in self.ranges.iter().enumerate() {
            t.insert(r.start..=r.end, i)?;
        }
        t.commit()?;
        Ok(map)
    }

    /// Checks that no two flat ranges overlap (QEMU never produces that; a hand-edited dump
    /// might). The error names the later range's line and the range it overlaps.
    ///
    /// ```
    /// let text = "FlatView #0\n AS \"memory\", root: system\n  \
    ///     0000000000000000-0000000000000fff (prio 0, ram): a\n  \
    ///     0000000000000800-0000000000001fff (prio 0, ram): b\n";
    /// let dump = physmap::mtree::Dump::parse(text, "x.txt").unwrap();
    /// let e = dump.flatviews[0].check("x.txt").unwrap_err();
    /// assert_eq!(e.line, 4);
    /// assert!(e.to_string().starts_with("x.txt:4: range 0x800-0x1fff (b) overlaps"));
    /// ```
    pub fn check(&self, file: &str) -> Result<(), ParseError> {
        let mut sorted: Vec<&FlatRange> = self.ranges.iter().collect();
        sorted.sort_by_key(|r| (r.start, r.line));
        for pair in sorted.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.start <= a.end {
                let (first, later) = if a.line < b.line { (a, b) } else { (b, a) };
                return Err(ParseError {
                    file: file.to_string(),
                    line: later.line,
                    message: format!(
                        "range {:#x}-{:#x} ({}) overlaps range {:#x}-{:#x} ({}) of line {}",
                        later.start,
                        later.end,
                        later.name,
                        first.start,
                        first.end,
                        first.name,
                        first.line
                    ),
                });
            }
        }
        Ok(())
    }

    /// `"memory", "cpu-memory-0"`: the address spaces, for display.
    pub fn label(&self) -> String {
        if self.address_spaces.is_empty() {
            format!("FlatView #{}", self.index)
        } else {
            self.address_spaces.join(", ")
        }
    }
}
