//! `physmap simulate`: vCPUs looking up addresses while a control plane changes the topology.
//!
//! - `machine.rs`: the machine, where its moving parts go, and what every answer must be;
//! - `vcpu.rs`: the vCPU threads (timed lookups, then checking);
//! - `report.rs`: the table or JSON at the end;
//! - here: arguments, the control plane, and running it all for `--seconds`.

mod machine;
mod report;
mod vcpu;

use super::Outcome;
use clap::Args;
use machine::{Machine, Topology, Val};
use physmap::PhysMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vcpu::{Progress, VcpuReport};

#[derive(Args)]
pub(crate) struct SimArgs {
    /// vCPU threads [default: the machine's available parallelism]
    #[arg(long)]
    vcpus: Option<usize>,
    /// How long to run, in seconds (more than 0, at most 86400).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Pause between control-plane commits, in microseconds.
    #[arg(long, default_value_t = 200)]
    commit_interval_us: u64,
    /// Memory map to load (`info mtree -f` dump) instead of the built-in q35.
    #[arg(long)]
    machine: Option<PathBuf>,
    /// Machine-readable output (no progress line).
    #[arg(long)]
    json: bool,
    /// Testing aid: every 8th commit also maps a region the topology does not have, so the
    /// vCPUs' checking must report wrong answers.
    #[arg(long, hide = true)]
    inject_fault: bool,
}

impl Default for SimArgs {
    fn default() -> Self {
        SimArgs {
            vcpus: None,
            seconds: 3.0,
            commit_interval_us: 200,
            machine: None,
            json: false,
            inject_fault: false,
        }
    }
}

/// How often the control plane looks at the stop flag while it pauses between commits.
const STOP_CHECK: Duration = Duration::from_millis(10);

/// The control plane: one commit per interval, each moving to the next generation's
/// topology. Returns the commit latencies.
fn control(
    m: &Machine,
    mem: &PhysMap<Val>,
    stop: &AtomicBool,
    interval: Duration,
    inject_fault: bool,
) -> Result<Vec<Duration>, String> {
    let mut lat = Vec::new();
    // Relaxed: `stop` is a plain flag; nothing is published through it.
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let mut t = mem.transaction();
        let g = t.base_generation() + 1;
        let fail = |e: physmap::Error| format!("control plane, generation {g}: {e}");
        m.apply(&mut t, Some(Topology::of(g - 1)), Topology::of(g))
            .map_err(fail)?;
        if inject_fault && g % 8 == 0 {
            // A wrong section over the whole DIMM window, undone by the next DIMM change.
            let wrong = Val {
                id: m.ids.bar,
                base: 0,
            };
            t.overwrite(m.dimm(), wrong).map_err(fail)?;
        }
        t.commit().map_err(fail)?;
        lat.push(t0.elapsed());
        // Pause in short steps, so that a long interval does not outlive `--seconds`.
        let until = Instant::now() + interval;
        while !stop.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(STOP_CHECK));
        }
    }
    Ok(lat)
}

pub(crate) fn run(args: SimArgs, out: &mut dyn Write) -> Outcome {
    if !(args.seconds > 0.0 && args.seconds <= 86_400.0) {
        return Err(format!("--seconds {} must be in (0, 86400]", args.seconds));
    }
    let vcpus = args
        .vcpus
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if vcpus == 0 || vcpus > 4096 {
        return Err(format!("--vcpus {vcpus} must be in 1..=4096"));
    }
    let m = Machine::load(args.machine.as_ref())?;
    let mem: PhysMap<Val> = PhysMap::new();
    let io: PhysMap<Val> = PhysMap::new();
    m.build(&mem, &io)
        .map_err(|e| format!("{}: building the map: {e}", m.name))?;
    let stop = AtomicBool::new(false);
    let progress: Vec<Progress> = (0..vcpus).map(|_| Progress::default()).collect();
    let interval = Duration::from_micros(args.commit_interval_us);
    let show_progress = !args.json && std::io::stderr().is_terminal();
    let mut err = std::io::stderr();
    if !args.json {
        // Progress and banners are best effort: a closed stderr does not stop the run.
        let _ = writeln!(
            err,
            "physmap simulate: {} ({} memory ranges, {} I/O ranges), {vcpus} vCPUs, {} s, a commit every {} µs",
            m.name,
            m.mem.len(),
            m.io.len(),
            args.seconds,
            args.commit_interval_us
        );
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let (reports, latencies) = std::thread::scope(|s| -> Result<_, String> {
        let stop = &stop;
        let spawned = (|| -> std::io::Result<_> {
            let mut vcpu_threads = Vec::with_capacity(vcpus);
            for (id, p) in progress.iter().enumerate() {
                let (m, mem, io) = (&m, &mem, &io);
                vcpu_threads.push(
                    std::thread::Builder::new()
                        .name(format!("vcpu{id}"))
                        .spawn_scoped(s, move || vcpu::run(m, mem, io, id, stop, p))?,
                );
            }
            let (m, mem) = (&m, &mem);
            let control = std::thread::Builder::new()
                .name("control".into())
                .spawn_scoped(s, move || {
                    control(m, mem, stop, interval, args.inject_fault)
                })?;
            Ok((vcpu_threads, control))
        })();
        let (vcpu_threads, control) = match spawned {
            Ok(threads) => threads,
            Err(e) => {
                // The threads already started see the flag and end with the scope.
                stop.store(true, Ordering::Relaxed);
                return Err(format!("starting {vcpus} vCPU threads: {e}"));
            }
        };
        let mut last_print = Instant::now();
        let mut last_total = 0u64;
        while Instant::now() < deadline {
            std::thread::sleep(
                Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())),
            );
            if show_progress && last_print.elapsed() >= Duration::from_millis(500) {
                let total: u64 = progress.iter().map(|p| p.0.load(Ordering::Relaxed)).sum();
                let rate = (total - last_total) as f64 / last_print.elapsed().as_secs_f64();
                let _ = write!(
                    err,
                    "\r  {:5.1} s  generation {:>8}  {:8.1} M lookups/s (incl. checking)   ",
                    started.elapsed().as_secs_f64(),
                    mem.snapshot().generation(),
                    rate / 1e6
                );
                let _ = err.flush();
                last_total = total;
                last_print = Instant::now();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let reports: Vec<VcpuReport> = vcpu_threads
            .into_iter()
            .map(|h| h.join().map_err(|_| "a vCPU thread panicked".to_string()))
            .collect::<Result<_, _>>()?;
        let latencies = control
            .join()
            .map_err(|_| "the control plane thread panicked".to_string())??;
        Ok((reports, latencies))
    })?;
    let wall = started.elapsed().as_secs_f64();
    if show_progress {
        let _ = writeln!(err);
    }
    report::write(
        out, &m, &mem, &io, vcpus, wall, &reports, latencies, args.json,
    )
}
