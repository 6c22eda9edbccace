//! Command-line front end (binary only): argument parsing and dispatch to the commands.

mod inspect;
mod json;
mod simulate;

use clap::{Args, Parser, Subcommand};
use physmap::mtree::{Dump, FlatView};
use std::io::Write;
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
    ///
    /// Each map spans the fewest address bits that hold its FlatView's last range (port I/O:
    /// 16 bits, one node of 16 pages), as a VMM sizes its maps.
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
        /// Build with flat nodes (`Config::flat_nodes`): sparse subtrees as runs.
        #[arg(long)]
        flat: bool,
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

/// What a command gives back: its exit status, or a message for standard error (status 2).
pub(crate) type Outcome = Result<u8, String>;

/// Runs the command line; returns the exit status. The only place that decides it.
pub(crate) fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0; usage errors to stderr with 2.
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match cli
        .command
        .unwrap_or(Command::Simulate(simulate::SimArgs::default()))
    {
        Command::Simulate(args) => simulate::run(args, &mut out),
        Command::Import { file, json } => {
            load(&file).and_then(|d| inspect::import(&d, json, &mut out))
        }
        Command::Lookup {
            file,
            space,
            addrs,
            json,
        } => load(&file).and_then(|d| {
            pick(&d, &space).and_then(|fv| inspect::lookup(fv, &addrs, json, &mut out))
        }),
        Command::Dump { file, space, flat } => load(&file)
            .and_then(|d| pick(&d, &space).and_then(|fv| inspect::dump(fv, flat, &mut out))),
    };
    let result = result.and_then(|code| {
        out.flush().map_err(output_error)?;
        Ok(code)
    });
    match result {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "physmap: {message}");
            2
        }
    }
}

/// A failed write to standard output (a closed pipe, a full disk), as a message.
pub(crate) fn output_error(e: std::io::Error) -> String {
    format!("writing output: {e}")
}

/// Reads and checks a dump: it must parse, hold at least one flat range, and no FlatView
/// may have overlapping ranges. Every command goes through here.
pub(crate) fn load(path: &PathBuf) -> Result<Dump, String> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    parse(&text, &name)
}

/// [`load`] for text already in memory.
pub(crate) fn parse(text: &str, name: &str) -> Result<Dump, String> {
    let dump = Dump::parse(text, name).map_err(|e| e.to_string())?;
    if dump.flatviews.iter().all(|fv| fv.ranges.is_empty()) {
        return Err(format!(
            "{name}: no flat ranges in the dump (expected the output of QEMU's `info mtree -f`)"
        ));
    }
    for fv in &dump.flatviews {
        fv.check(name).map_err(|e| e.to_string())?;
    }
    Ok(dump)
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

/// The map of one (checked) FlatView, dense or with flat nodes, over the space a VMM would
/// give it: the fewest address bits that hold its last range (`FlatView::config`).
fn build(fv: &FlatView, flat: bool) -> Result<physmap::PhysMap<usize>, String> {
    let config = physmap::Config {
        flat_nodes: flat,
        ..fv.config()
    };
    fv.build_with(config)
        .map_err(|e| format!("FlatView #{} (line {}): {e}", fv.index, fv.line))
}
