//! Without `--cfg loom` the models are compiled out; this says so instead of passing silently.
#[cfg(not(loom))]
#[test]
fn models_need_cfg_loom() {
    eprintln!("loom models skipped: run with RUSTFLAGS=\"--cfg loom\" (see .ci/run)");
}
