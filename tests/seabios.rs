//! Debian's SeaBIOS boots on the physmap KVM machine (feature `kvm`, Linux on x86-64); see
//! `examples/seabios`. Skipped, saying why, where `/dev/kvm` or the firmware is missing
//! (`scripts/guest-seabios.sh` provides the firmware).

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
