//! The `physmap` command on real QEMU dumps.

use std::process::Command;

const DUMPS: [&str; 7] = [
    "q35-idle.txt",
    "q35-booted.txt",
    "q35-4g-virtio.txt",
    "q35-24-virtio-net.txt",
    "pc-i440fx.txt",
    "pc-dimms.txt",
    "virt-arm.txt",
];

fn physmap(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_physmap"))
        .args(args)
        .output()
        .expect("run physmap");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn data(name: &str) -> String {
    // This file is the test of the workspace member `cli/`.
    format!("{}/../tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// An independent, minimal reading of the dump: per FlatView, its first address-space name
/// and its ranges as (start, end, kind, name, offset).
type Range = (u64, u64, String, String, u64);

fn flatviews(text: &str) -> Vec<(String, Vec<Range>)> {
    let mut out: Vec<(String, Vec<_>)> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("FlatView #") {
            out.push((String::new(), Vec::new()));
        } else if let Some(rest) = t.strip_prefix("AS \"") {
            let fv = out.last_mut().unwrap();
            if fv.0.is_empty() {
                fv.0 = rest[..rest.find('"').unwrap()].to_string();
            }
        } else if t.contains(" (prio ") {
            let (span, rest) = t.split_once(" (prio ").unwrap();
            let (a, b) = span.split_once('-').unwrap();
            let (attrs, name) = rest.split_once("): ").unwrap();
            let kind = attrs.split_once(", ").unwrap().1.to_string();
            // `name [@offset] [KVM]`: QEMU marks ranges registered with KVM after the offset.
            let (name, offset) = match name.split_once(" @") {
                Some((n, rest)) => {
                    let (o, flag) = rest.split_once(' ').unwrap_or((rest, ""));
                    let n = if flag.is_empty() {
                        n.to_string()
                    } else {
                        format!("{n} {flag}")
                    };
                    (n, u64::from_str_radix(o, 16).unwrap())
                }
                None => (name.to_string(), 0),
            };
            let range = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
                kind,
                name,
                offset,
            );
            out.last_mut().unwrap().1.push(range);
        }
    }
    out
}

#[test]
fn every_flat_range_resolves_to_its_name_and_offset() {
    let mut checked = 0;
    for dump in DUMPS {
        let path = data(dump);
        let text = std::fs::read_to_string(&path).unwrap();
        for (space, ranges) in flatviews(&text) {
            if ranges.is_empty() {
                continue;
            }
            let mut addrs = Vec::new();
            for r in &ranges {
                addrs.extend([
                    r.0,
                    r.1,
                    r.0 + (r.1 - r.0) / 2,
                    r.0.wrapping_sub(1),
                    r.1.wrapping_add(1),
                ]);
            }
            let mut args = vec![
                "lookup".to_string(),
                path.clone(),
                "--as".into(),
                space.clone(),
            ];
            args.extend(addrs.iter().map(|a| format!("{a:#x}")));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, err) = physmap(&args);
            assert_eq!(code, 0, "{dump} {space}: {err}");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), addrs.len(), "{dump} {space}");
            for (a, line) in addrs.iter().zip(lines) {
                let want = match ranges.iter().find(|r| r.0 <= *a && *a <= r.1) {
                    Some((s, e, kind, name, off)) => {
                        format!(
                            "{a:#018x}  {name}  [{s:#x}..={e:#x}, {kind}]  offset {:#x}",
                            a - s + off
                        )
                    }
                    None => format!("{a:#018x}  unassigned"),
                };
                assert_eq!(line, want, "{dump} {space}");
                checked += 1;
            }
        }
    }
    assert!(checked > 2000, "{checked}");
}

#[test]
fn import_prints_our_and_qemus_figures() {
    for dump in DUMPS {
        let (code, out, err) = physmap(&["import", &data(dump)]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("QEMU nodes") && out.contains("total bytes: physmap"),
            "{out}"
        );
        let (code, out, _) = physmap(&["import", "--json", &data(dump)]);
        assert_eq!(code, 0);
        let flatviews = json(&out)["flatviews"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            flatviews.iter().any(|fv| fv["qemu"]["nodes"].is_u64()),
            "{out}"
        );
    }
    // q35 as booted: QEMU's "memory" FlatView has 12 nodes (9 reachable) and 4 sub-page tables.
    let (_, out, _) = physmap(&["import", "--json", &data("q35-booted.txt")]);
    let v = json(&out);
    let memory = v["flatviews"]
        .as_array()
        .unwrap()
        .iter()
        .find(|fv| fv["qemu"]["nodes"] == 12)
        .unwrap_or_else(|| panic!("no FlatView with QEMU's 12 nodes: {out}"));
    assert_eq!(memory["qemu"]["reachable_nodes"], 9, "{out}");
    assert_eq!(memory["qemu"]["subpage_tables"], 4, "{out}");
}

/// Standard output parsed as JSON (the test fails on anything else).
fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn dump_lists_the_tree() {
    let (code, out, err) = physmap(&["dump", &data("q35-booted.txt"), "--as", "memory"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("node") && out.contains("leaf 0x100000..=0x7fffffff pc.ram @0x100000"),
        "{out}"
    );
    assert!(out.contains("sub-page table"), "{out}");
    assert!(
        out.contains(" 0 flat nodes, ") && !out.contains("  flat node "),
        "{out}"
    );
    // With flat nodes: the same pieces, sparse subtrees as runs (the ioapic page, the hpet).
    let (code, flat, err) = physmap(&["dump", &data("q35-booted.txt"), "--flat"]);
    assert_eq!(code, 0, "{err}");
    assert!(flat.contains(" flat nodes, "), "{flat}");
    assert!(flat.contains("  flat node "), "{flat}");
    assert!(
        flat.contains("from 0xfec00000: leaf 0xfec00000..=0xfec00fff ioapic")
            && flat.contains("leaf 0xfed00000..=0xfed003ff hpet"),
        "{flat}"
    );
}

#[test]
fn import_shows_both_layouts_and_the_flat_one_is_smaller() {
    let (code, out, err) = physmap(&["import", "--json", &data("q35-booted.txt")]);
    assert_eq!(code, 0, "{err}");
    // Every FlatView: its "bytes" and its "with_flat_nodes" "bytes".
    let mut compared = 0;
    let v = json(&out);
    for fv in v["flatviews"].as_array().unwrap() {
        let dense = fv["bytes"].as_u64().unwrap();
        let Some(flat) = fv["with_flat_nodes"]["bytes"].as_u64() else {
            continue;
        };
        // Never bigger; smaller where there are 2 KiB nodes to replace (not in the port I/O
        // space, one node of its 16 pages).
        assert!(flat <= dense, "{fv}");
        if flat < dense {
            compared += 1;
        }
    }
    assert!(compared >= 2, "{out}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("physmap-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.txt");
    std::fs::write(
        &bad,
        "FlatView #0\n AS \"memory\", root: system\n  0000-zz (prio 0, ram): pc.ram\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    for args in [
        vec!["import", bad],
        vec!["lookup", bad, "0x10"],
        vec!["dump", bad],
    ] {
        let (code, _, err) = physmap(&args);
        assert_ne!(code, 0);
        assert!(err.contains(&format!("{bad}:3:")), "{err}");
    }
    let inverted = dir.join("inverted.txt");
    std::fs::write(&inverted, "FlatView #0\n AS \"memory\", root: system\n  0000000000002000-0000000000001000 (prio 0, ram): r\n").unwrap();
    let (code, _, err) = physmap(&["import", inverted.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains(":3:") && err.contains("ends before it starts"),
        "{err}"
    );
    let garbage = dir.join("garbage.txt");
    std::fs::write(&garbage, "hello\n").unwrap();
    let (code, _, err) = physmap(&["import", garbage.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains(":1:"), "{err}");
    let (code, _, err) = physmap(&["import", "/nonexistent/dump.txt"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/dump.txt"), "{err}");
    // Unknown address space: the names that exist are listed.
    let (code, _, err) = physmap(&["lookup", &data("q35-booted.txt"), "--as", "nope", "0"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no address space \"nope\"") && err.contains("I/O") && err.contains("memory"),
        "{err}"
    );
    // Unparsable address.
    let (code, _, err) = physmap(&["lookup", &data("q35-booted.txt"), "0xzz"]);
    assert_ne!(code, 0);
    assert!(err.contains("0xzz"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lookup_json() {
    let (code, out, _) = physmap(&[
        "lookup",
        "--json",
        &data("q35-booted.txt"),
        "0xfed00010",
        "0x90000000",
    ]);
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(
        v["lookups"],
        serde_json::json!([
            {"addr": 0xfed00010u64, "region": "hpet", "kind": "i/o",
             "start": 0xfed00000u64, "end": 0xfed003ffu64, "offset": 16},
            {"addr": 0x90000000u64, "region": null}
        ]),
        "{out}"
    );
}

#[test]
fn simulation_runs_checks_every_answer_and_reports() {
    let (code, out, err) = physmap(&["simulate", "--seconds", "0.5", "--vcpus", "3", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["vcpus"], 3, "{out}");
    assert_eq!(v["mismatches"], 0, "{out}");
    assert_eq!(v["per_vcpu"].as_array().map(Vec::len), Some(3), "{out}");
    assert!(v["commit_p99_us"].is_number(), "{out}");
    let (code, out, err) = physmap(&["simulate", "--seconds", "0.3", "--vcpus", "2"]);
    assert_eq!(code, 0, "{err}");
    for word in [
        "M lookups/s",
        "ns/lookup",
        "commit latency p50",
        "p99",
        "generations seen",
        "nodes",
        "bytes",
        "mismatches",
    ] {
        assert!(out.contains(word), "{word}: {out}");
    }
    let (code, _, err) = physmap(&["simulate", "--seconds", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--seconds"), "{err}");
    // A control plane that maps something the topology does not have is caught.
    let (code, _, err) = physmap(&[
        "simulate",
        "--seconds",
        "0.5",
        "--vcpus",
        "2",
        "--json",
        "--inject-fault",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("wrong answer") && err.contains("expected"),
        "{err}"
    );
    // Other machines load too.
    let (code, out, err) = physmap(&[
        "simulate",
        "--seconds",
        "0.2",
        "--vcpus",
        "1",
        "--json",
        "--machine",
        &data("q35-4g-virtio.txt"),
    ]);
    assert_eq!(code, 0, "{err}{out}");
}

/// A scratch directory for dumps written by one test.
fn scratch(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("physmap-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A one-FlatView "memory" dump with the given ranges (start, end, kind, name, offset).
fn write_dump(dir: &std::path::Path, name: &str, ranges: &[(u64, u64, &str, &str, u64)]) -> String {
    let mut text =
        String::from("FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n");
    for (s, e, kind, n, off) in ranges {
        text += &format!("  {s:016x}-{e:016x} (prio 0, {kind}): {n}");
        if *off != 0 {
            text += &format!(" @{off:016x}");
        }
        text += "\n";
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn no_panic(err: &str) {
    assert!(!err.contains("panicked"), "the command panicked: {err}");
}

/// Machines the simulator had not seen: overlapping ranges are an error naming the line;
/// ranges up to the top of the space, and a machine with nothing at or above 2 GiB, run
/// with every answer right (the moving parts are placed in real gaps, with checked sums).
#[test]
fn simulate_survives_any_machine() {
    let dir = scratch("sim");
    let overlap = write_dump(
        &dir,
        "overlap.txt",
        &[
            (0, 0xfffff, "ram", "ram", 0),
            (0x8000, 0x8fff, "i/o", "dev", 0),
        ],
    );
    for cmd in [
        vec![
            "simulate",
            "--seconds",
            "0.1",
            "--vcpus",
            "1",
            "--machine",
            &overlap,
        ],
        vec!["import", &overlap],
        vec!["lookup", &overlap, "0"],
        vec!["dump", &overlap],
    ] {
        let (code, _, err) = physmap(&cmd);
        no_panic(&err);
        assert_ne!(code, 0, "{cmd:?}");
        assert!(
            err.contains("overlaps") && err.contains(":5"),
            "{cmd:?}: {err}"
        );
    }
    let top = write_dump(
        &dir,
        "top.txt",
        &[
            (0, 0x7fff_ffff, "ram", "pc.ram", 0),
            (0xfee0_0000, 0xfee0_0fff, "i/o", "apic", 0),
            (
                0xffff_ffff_0000_0000,
                0xffff_ffff_ffff_ffff,
                "ram",
                "high",
                0x1000,
            ),
        ],
    );
    let low = write_dump(&dir, "low.txt", &[(0, 0x3fff_ffff, "ram", "pc.ram", 0)]);
    let full_top = write_dump(
        &dir,
        "full-top.txt",
        &[
            (0, 0x7fff_ffff, "ram", "pc.ram", 0),
            (0x1_0000_0000, 0xffff_ffff_ffff_ffff, "ram", "everything", 0),
        ],
    );
    for machine in [&top, &low, &full_top] {
        let (code, out, err) = physmap(&[
            "simulate",
            "--seconds",
            "0.3",
            "--vcpus",
            "2",
            "--commit-interval-us",
            "50",
            "--json",
            "--machine",
            machine,
        ]);
        no_panic(&err);
        assert_eq!(code, 0, "{machine}: {err}{out}");
        assert_eq!(json(&out)["mismatches"], 0, "{machine}: {out}");
    }
    // A machine with no room left for the moving parts is an error, not a panic.
    let full = write_dump(&dir, "full.txt", &[(0, u64::MAX, "ram", "all", 0)]);
    let (code, _, err) = physmap(&["simulate", "--seconds", "0.1", "--machine", &full]);
    no_panic(&err);
    assert_ne!(code, 0);
    assert!(err.contains("no free"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--seconds` is honoured even with a commit interval 200 times longer: the run does not
/// wait for the control plane's next commit. Time is what this test is about, so it reads the
/// clock, with a margin no loaded machine reaches: a run that waited for the next commit
/// would take 60 s, and this one must take less than half of that.
#[test]
fn simulate_stops_on_time() {
    let t0 = std::time::Instant::now();
    let (code, out, err) = physmap(&[
        "simulate",
        "--seconds",
        "0.3",
        "--vcpus",
        "1",
        "--commit-interval-us",
        "60000000",
        "--json",
    ]);
    let took = t0.elapsed();
    no_panic(&err);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["commits"],
        1,
        "one commit, then the run ended: {out}"
    );
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
}

/// An empty dump (or one with no ranges) is an error for every command; so is a range whose
/// region offset would run past 2^64.
#[test]
fn empty_dumps_and_offsets_past_the_top_are_errors() {
    let dir = scratch("empty");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap().to_string();
    let no_ranges = dir.join("no-ranges.txt");
    std::fs::write(
        &no_ranges,
        "FlatView #0\n AS \"memory\", root: system\n No rendered FlatView\n",
    )
    .unwrap();
    let no_ranges = no_ranges.to_str().unwrap().to_string();
    let wrap = write_dump(
        &dir,
        "wrap.txt",
        &[(0x1000, 0x1fff, "ram", "r", 0xffff_ffff_ffff_f800)],
    );
    for file in [&empty, &no_ranges, &wrap] {
        for cmd in [
            vec!["import", file.as_str()],
            vec!["lookup", file.as_str(), "0x1800"],
            vec!["dump", file.as_str()],
            vec!["simulate", "--seconds", "0.1", "--machine", file.as_str()],
        ] {
            let (code, _, err) = physmap(&cmd);
            no_panic(&err);
            assert_ne!(code, 0, "{cmd:?} exited 0");
            assert!(err.contains(file.as_str()), "{cmd:?}: {err}");
        }
    }
    let (_, _, err) = physmap(&["lookup", &wrap, "0x1800"]);
    assert!(err.contains(":4:") && err.contains("offset"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Arguments out of range are errors; output into a closed pipe ends the command quietly.
#[test]
fn bad_arguments_and_closed_pipes() {
    for args in [
        vec!["simulate", "--vcpus", "0"],
        vec!["simulate", "--seconds", "nan"],
        vec!["simulate", "--seconds", "-1"],
        vec!["simulate", "--commit-interval-us", "-5"],
        vec!["lookup", "x.txt"],
        vec!["lookup", "x.txt", "0x1_0000_0000_0000_0000"],
        vec!["frobnicate"],
    ] {
        let (code, _, err) = physmap(&args);
        no_panic(&err);
        assert_ne!(code, 0, "{args:?}");
        assert!(!err.is_empty(), "{args:?}");
    }
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_physmap"))
        .args(["dump", &data("q35-4g-virtio.txt")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before the first line
    let out = child.wait_with_output().unwrap();
    no_panic(&String::from_utf8_lossy(&out.stderr));
}
