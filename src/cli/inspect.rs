//! `import`, `lookup` and `dump`: one map per FlatView of a QEMU dump, looked at.

use super::json::Json;
use super::{build, output_error, Outcome};
use physmap::mtree::{Dump, FlatView};
use std::io::Write;

/// `writeln!` to the command's output, turning a failed write into the command's error.
macro_rules! out {
    ($w:expr, $($arg:tt)*) => {
        writeln!($w, $($arg)*).map_err(output_error)?
    };
}
pub(crate) use out;

pub(crate) fn import(dump: &Dump, json: bool, w: &mut dyn Write) -> Outcome {
    let mut rows = Vec::new();
    for fv in &dump.flatviews {
        let stats = build(fv, false)?.snapshot().stats();
        let flat = build(fv, true)?.snapshot().stats();
        rows.push((fv, stats, flat));
    }
    if json {
        let items = rows
            .iter()
            .map(|(fv, s, f)| {
                let mut o = Json::obj()
                    .num("flatview", fv.index as u64)
                    .arr(
                        "address_spaces",
                        fv.address_spaces.iter().map(|a| Json::str(a)).collect(),
                    )
                    .num("ranges", fv.ranges.len() as u64)
                    .num("nodes", s.nodes as u64)
                    .num("subpage_tables", s.subpage_tables as u64)
                    .num("pieces", s.pieces as u64)
                    .num("bytes", s.bytes as u64)
                    .num("levels", s.levels as u64)
                    .field(
                        "with_flat_nodes",
                        Json::obj()
                            .num("nodes", f.nodes as u64)
                            .num("flat_nodes", f.flat_nodes as u64)
                            .num("subpage_tables", f.subpage_tables as u64)
                            .num("bytes", f.bytes as u64)
                            .num("levels", f.levels as u64),
                    );
                if let Some(d) = &fv.dispatch {
                    o = o.field(
                        "qemu",
                        Json::obj()
                            .num("nodes", d.nodes.len() as u64)
                            .num("reachable_nodes", d.reachable_nodes() as u64)
                            .num("subpage_tables", d.subpage_tables() as u64)
                            .num("sections", d.sections.len() as u64)
                            .num("bytes", d.bytes() as u64),
                    );
                }
                o
            })
            .collect();
        out!(w, "{}", Json::obj().arr("flatviews", items));
        return Ok(0);
    }
    out!(
        w,
        "{:<4} {:<34} {:>6} | {:>5} {:>8} {:>8} | {:>10} {:>8} | {:>12} {:>8} {:>8} | {:>6} {:>6}",
        "FV",
        "address spaces",
        "ranges",
        "nodes",
        "subpages",
        "bytes",
        "flat nodes",
        "bytes",
        "QEMU nodes",
        "subpages",
        "bytes",
        "ratio",
        "flat"
    );
    let (mut ours, mut flat, mut theirs) = (0usize, 0usize, 0usize);
    for (fv, s, f) in &rows {
        let mut label: String = fv.label().chars().take(34).collect();
        if label.chars().count() < fv.label().chars().count() {
            label = label.chars().take(31).collect::<String>() + "...";
        }
        let q = match &fv.dispatch {
            Some(d) => {
                ours += s.bytes;
                flat += f.bytes;
                theirs += d.bytes();
                let pct = |b: usize| 100.0 * b as f64 / d.bytes().max(1) as f64;
                format!(
                    "{:>12} {:>8} {:>8} | {:>5.1}% {:>5.1}%",
                    format!("{} ({} reach)", d.nodes.len(), d.reachable_nodes()),
                    d.subpage_tables(),
                    d.bytes(),
                    pct(s.bytes),
                    pct(f.bytes)
                )
            }
            None => format!("{:>12} {:>8} {:>8} | {:>6} {:>6}", "-", "-", "-", "-", "-"),
        };
        out!(
            w,
            "{:<4} {:<34} {:>6} | {:>5} {:>8} {:>8} | {:>10} {:>8} | {q}",
            fv.index,
            label,
            fv.ranges.len(),
            s.nodes,
            s.subpage_tables,
            s.bytes,
            format!("{}+{}", f.nodes, f.flat_nodes),
            f.bytes
        );
    }
    if theirs > 0 {
        out!(
            w,
            "total bytes: physmap {ours}, with flat nodes {flat}, QEMU {theirs} ({:.1}% and {:.1}% of QEMU's; QEMU counted at 2 KiB a node, 8 KiB a sub-page table)",
            100.0 * ours as f64 / theirs as f64,
            100.0 * flat as f64 / theirs as f64
        );
        out!(
            w,
            "bytes: tree, pieces, sub-page rows and section slots; \"flat nodes\": dense nodes + flat nodes with Config::flat_nodes; each map spans the fewest address bits holding its last range (port I/O: 16)"
        );
    }
    Ok(0)
}

pub(crate) fn lookup(fv: &FlatView, addrs: &[u64], json: bool, w: &mut dyn Write) -> Outcome {
    let map = build(fv, false)?;
    let snap = map.snapshot();
    let mut items = Vec::new();
    for &a in addrs {
        // The parser checked that `@offset + (end - start)` fits in 64 bits.
        let hit = snap
            .lookup(a)
            .map(|h| (&fv.ranges[*h.value], h.offset + fv.ranges[*h.value].offset));
        if json {
            items.push(match hit {
                Some((r, off)) => Json::obj()
                    .num("addr", a)
                    .str_field("region", &r.name)
                    .str_field("kind", &r.kind)
                    .num("start", r.start)
                    .num("end", r.end)
                    .num("offset", off),
                None => Json::obj().num("addr", a).field("region", Json::Null),
            });
            continue;
        }
        match hit {
            Some((r, off)) => out!(
                w,
                "{a:#018x}  {}  [{:#x}..={:#x}, {}]  offset {off:#x}",
                r.name,
                r.start,
                r.end,
                r.kind,
            ),
            None => out!(w, "{a:#018x}  unassigned"),
        }
    }
    if json {
        out!(
            w,
            "{}",
            Json::obj()
                .str_field("address_space", &fv.label())
                .arr("lookups", items)
        );
    }
    Ok(0)
}

pub(crate) fn dump(fv: &FlatView, flat: bool, w: &mut dyn Write) -> Outcome {
    let map = build(fv, flat)?;
    let snap = map.snapshot();
    let s = snap.stats();
    out!(
        w,
        "FlatView #{} ({}): {} ranges, {} nodes, {} flat nodes, {} sub-page tables, {} bytes, {} levels used",
        fv.index,
        fv.label(),
        fv.ranges.len(),
        s.nodes,
        s.flat_nodes,
        s.subpage_tables,
        s.bytes,
        s.levels
    );
    let mut text = String::new();
    let label = |&i: &usize| {
        let r = &fv.ranges[i];
        if r.offset != 0 {
            format!("{} @{:#x}", r.name, r.offset)
        } else {
            r.name.clone()
        }
    };
    snap.write_tree(&mut text, &label)
        .map_err(|_| "formatting the tree failed".to_string())?;
    w.write_all(text.as_bytes()).map_err(output_error)?;
    Ok(0)
}
