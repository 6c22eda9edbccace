//! Command-line front end (binary only).

mod json;
mod simulate;

use clap::{Args, Parser, Subcommand};
use json::Json;
use physmap::mtree::{Dump, FlatView};
use std::path::PathBuf;

/// The q35 machine built into the binary (`info mtree -f -d` of QEMU).
pub(crate) const DEFAULT_MACHINE: (&str, &str) = (
    "tests/data/q35-booted.txt",
    include_str!("../../tests/data/q35-booted.txt"),
);

#[derive(Parser)]
#[command(
    name = "physmap",
    version,
    about = "Guest-physical address map for VMMs: simulate, import QEMU maps, look up, dump"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// vCPU threads look up addresses while a control plane changes the topology (the default).
    Simulate(simulate::SimArgs),
    /// Build one map per FlatView of a QEMU `info mtree -f [-d]` dump and compare with QEMU.
    Import {
        /// The dump.
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Look addresses up in one FlatView of a dump.
    Lookup {
        /// The dump.
        file: PathBuf,
        #[command(flatten)]
        space: Space,
        /// Addresses: 0x-prefixed hexadecimal or decimal.
        #[arg(required = true, value_parser = parse_addr)]
        addrs: Vec<u64>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print our tree for one FlatView of a dump, level by level.
    Dump {
        /// The dump.
        file: PathBuf,
        #[command(flatten)]
        space: Space,
    },
}

#[derive(Args)]
struct Space {
    /// Address space name (`AS "name"` in the dump); default "memory", else the first FlatView
    /// with ranges.
    #[arg(long = "as", value_name = "NAME")]
    name: Option<String>,
}

fn parse_addr(s: &str) -> Result<u64, String> {
    let t = s.replace('_', "");
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|_| {
        format!("{s:?} is not an address (use 0x-prefixed hexadecimal or decimal, at most 64 bits)")
    })
}

/// Runs the command line; returns the exit status.
pub(crate) fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli
        .command
        .unwrap_or(Command::Simulate(simulate::SimArgs::default()))
    {
        Command::Simulate(args) => simulate::run(args),
        Command::Import { file, json } => load(&file).map(|d| import(&d, json)),
        Command::Lookup {
            file,
            space,
            addrs,
            json,
        } => load(&file).and_then(|d| pick(&d, &space).map(|fv| lookup(fv, &addrs, json))),
        Command::Dump { file, space } => load(&file).and_then(|d| pick(&d, &space).map(dump)),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("physmap: {message}");
            2
        }
    }
}

fn load(path: &PathBuf) -> Result<Dump, String> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    Dump::parse(&text, &name).map_err(|e| e.to_string())
}

fn pick<'a>(dump: &'a Dump, space: &Space) -> Result<&'a FlatView, String> {
    match &space.name {
        Some(name) => dump.find(name).ok_or_else(|| {
            format!(
                "no address space {name:?}; the dump has: {}",
                dump.address_space_names().join(", ")
            )
        }),
        None => dump
            .find("memory")
            .filter(|fv| !fv.ranges.is_empty())
            .or_else(|| dump.flatviews.iter().find(|fv| !fv.ranges.is_empty()))
            .ok_or_else(|| "the dump has no FlatView with ranges".to_string()),
    }
}

fn build(fv: &FlatView) -> physmap::PhysMap<usize> {
    // Flat ranges never overlap in a well-formed dump; report the line if they do.
    match fv.build() {
        Ok(map) => map,
        Err(e) => {
            eprintln!("physmap: FlatView #{} (line {}): {e}", fv.index, fv.line);
            std::process::exit(2);
        }
    }
}

fn import(dump: &Dump, json: bool) -> i32 {
    let mut rows = Vec::new();
    for fv in &dump.flatviews {
        let stats = build(fv).snapshot().stats();
        rows.push((fv, stats));
    }
    if json {
        let items = rows
            .iter()
            .map(|(fv, s)| {
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
                    .num("levels", s.levels as u64);
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
        println!("{}", Json::obj().arr("flatviews", items));
        return 0;
    }
    println!(
        "{:<4} {:<34} {:>6} | {:>5} {:>8} {:>8} | {:>12} {:>8} {:>8} | {:>6}",
        "FV",
        "address spaces",
        "ranges",
        "nodes",
        "subpages",
        "bytes",
        "QEMU nodes",
        "subpages",
        "bytes",
        "ratio"
    );
    let (mut ours, mut theirs) = (0usize, 0usize);
    for (fv, s) in &rows {
        let mut label = fv.label();
        if label.len() > 34 {
            label.truncate(31);
            label.push_str("...");
        }
        let q = match &fv.dispatch {
            Some(d) => {
                ours += s.bytes;
                theirs += d.bytes();
                format!(
                    "{:>12} {:>8} {:>8} | {:>5.1}%",
                    format!("{} ({} reach)", d.nodes.len(), d.reachable_nodes()),
                    d.subpage_tables(),
                    d.bytes(),
                    100.0 * s.bytes as f64 / d.bytes().max(1) as f64
                )
            }
            None => format!("{:>12} {:>8} {:>8} | {:>6}", "-", "-", "-", "-"),
        };
        println!(
            "{:<4} {:<34} {:>6} | {:>5} {:>8} {:>8} | {q}",
            fv.index,
            label,
            fv.ranges.len(),
            s.nodes,
            s.subpage_tables,
            s.bytes
        );
    }
    if theirs > 0 {
        println!(
            "total bytes: physmap {ours}, QEMU {theirs} ({:.1}% of QEMU's; QEMU counted at 2 KiB a node, 8 KiB a sub-page table)",
            100.0 * ours as f64 / theirs as f64
        );
    }
    0
}

fn lookup(fv: &FlatView, addrs: &[u64], json: bool) -> i32 {
    let map = build(fv);
    let snap = map.snapshot();
    let mut items = Vec::new();
    for &a in addrs {
        let hit = snap.lookup(a).map(|h| (&fv.ranges[*h.value], h.offset));
        if json {
            items.push(match hit {
                Some((r, off)) => Json::obj()
                    .num("addr", a)
                    .str_field("region", &r.name)
                    .str_field("kind", &r.kind)
                    .num("start", r.start)
                    .num("end", r.end)
                    .num("offset", off + r.offset),
                None => Json::obj().num("addr", a).field("region", Json::Null),
            });
            continue;
        }
        match hit {
            Some((r, off)) => println!(
                "{a:#018x}  {}  [{:#x}..={:#x}, {}]  offset {:#x}",
                r.name,
                r.start,
                r.end,
                r.kind,
                off + r.offset
            ),
            None => println!("{a:#018x}  unassigned"),
        }
    }
    if json {
        println!(
            "{}",
            Json::obj()
                .str_field("address_space", &fv.label())
                .arr("lookups", items)
        );
    }
    0
}

fn dump(fv: &FlatView) -> i32 {
    let map = build(fv);
    let snap = map.snapshot();
    let s = snap.stats();
    println!(
        "FlatView #{} ({}): {} ranges, {} nodes, {} sub-page tables, {} bytes, {} levels used",
        fv.index,
        fv.label(),
        fv.ranges.len(),
        s.nodes,
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
        .expect("writing to a String");
    print!("{text}");
    0
}
