//! What `simulate` prints at the end: per-vCPU rates, commit latency, tree sizes, and the
//! wrong answers if any (exit status 1).

use super::super::inspect::out;
use super::super::json::Json;
use super::super::{output_error, Outcome};
use super::machine::{Machine, Val};
use super::vcpu::VcpuReport;
use physmap::PhysMap;
use std::io::Write;
use std::time::Duration;

/// A tree's size for `--json`.
fn tree_json(s: &physmap::Stats) -> Json {
    Json::obj()
        .num("nodes", s.nodes as u64)
        .num("subpage_tables", s.subpage_tables as u64)
        .num("pieces", s.pieces as u64)
        .num("bytes", s.bytes as u64)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn write(
    w: &mut dyn Write,
    m: &Machine,
    mem: &PhysMap<Val>,
    io: &PhysMap<Val>,
    vcpus: usize,
    wall: f64,
    reports: &[VcpuReport],
    mut lat: Vec<Duration>,
    json: bool,
) -> Outcome {
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    let total_lookups: u64 = reports.iter().map(|r| r.lookups).sum();
    let mismatches: u64 = reports.iter().map(|r| r.mismatches).sum();
    let mem_snap = mem.snapshot();
    let ms = mem_snap.stats();
    let is = io.snapshot().stats();
    let total_rate: f64 = reports.iter().map(VcpuReport::rate).sum();
    if json {
        let o = Json::obj()
            .str_field("machine", &m.name)
            .num("vcpus", vcpus as u64)
            .float("seconds", wall)
            .arr(
                "per_vcpu",
                reports
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        Json::obj()
                            .num("vcpu", i as u64)
                            .num("lookups", r.lookups)
                            .float("lookups_per_second", r.rate())
                            .float("ns_per_lookup", 1e9 / r.rate())
                            .num("generations_seen", r.generations_seen)
                            .num("mismatches", r.mismatches)
                    })
                    .collect(),
            )
            .num("lookups", total_lookups)
            .float("lookups_per_second", total_rate)
            .num("commits", lat.len() as u64)
            .float("commit_p50_us", p50.as_secs_f64() * 1e6)
            .float("commit_p99_us", p99.as_secs_f64() * 1e6)
            .num("generation", mem_snap.generation())
            .field("memory_map", tree_json(&ms))
            .field("io_map", tree_json(&is))
            .num("mismatches", mismatches);
        out!(w, "{o}");
    } else {
        out!(
            w,
            "{:>6} {:>14} {:>12} {:>10} {:>17} {:>11}",
            "vCPU",
            "lookups",
            "M lookups/s",
            "ns/lookup",
            "generations seen",
            "mismatches"
        );
        for (i, r) in reports.iter().enumerate() {
            out!(
                w,
                "{i:>6} {:>14} {:>12.1} {:>10.1} {:>17} {:>11}",
                r.lookups,
                r.rate() / 1e6,
                1e9 / r.rate(),
                r.generations_seen,
                r.mismatches
            );
        }
        out!(
            w,
            "{:>6} {:>14} {:>12.1} {:>10.1} {:>17} {:>11}",
            "total",
            total_lookups,
            total_rate / 1e6,
            1e9 * vcpus as f64 / total_rate,
            "",
            mismatches
        );
        out!(
            w,
            "(rates count time inside lookup batches; checking every answer is done between batches)"
        );
        out!(
            w,
            "control plane: {} commits in {wall:.1} s, commit latency p50 {:.1} µs, p99 {:.1} µs; newest generation {}",
            lat.len(),
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            mem_snap.generation()
        );
        out!(
            w,
            "memory map: {} nodes, {} sub-page tables, {} pieces, {} bytes; I/O map: {} nodes, {} sub-page tables, {} pieces, {} bytes",
            ms.nodes, ms.subpage_tables, ms.pieces, ms.bytes, is.nodes, is.subpage_tables, is.pieces, is.bytes
        );
    }
    if mismatches > 0 {
        let mut err = std::io::stderr();
        for r in reports {
            if let Some(msg) = &r.first_mismatch {
                let _ = writeln!(err, "physmap: wrong answer: {msg}");
            }
        }
        let _ = writeln!(err, "physmap: {mismatches} wrong answers");
        return Ok(1);
    }
    Ok(0)
}
