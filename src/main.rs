//! `physmap`: run the map against a real machine's memory map.
//!
//! - `physmap` / `physmap simulate`: vCPU threads look up addresses while a control plane
//!   changes the topology; every answer is checked.
//! - `physmap import FILE`: builds one map per FlatView of a QEMU `info mtree -f [-d]` dump
//!   and compares its size with QEMU's own dispatch.
//! - `physmap lookup FILE ADDR...`, `physmap dump FILE`: answers and tree listings.
//!
//! Every input either works or is reported on standard error with a non-zero exit status
//! (2 for bad input, 1 for wrong answers found by `simulate`); nothing panics.

mod cli;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cli::main())
}
