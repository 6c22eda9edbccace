#!/usr/bin/env bash
# Makes Debian's SeaBIOS (package `seabios`, bios-256k.bin) available to examples/seabios and
# tests/seabios.rs: the installed package's /usr/share/seabios/bios-256k.bin, or else the
# package downloaded with `apt-get download` and unpacked with `dpkg-deb -x` under
# target/seabios (no root needed, unless the package lists must be fetched first).
# Idempotent; says what is missing where it cannot. Only Debian's binary is used.
# Usage: bash scripts/guest-seabios.sh        (SEABIOS_NO_INSTALLED=1: ignore /usr/share)
set -euo pipefail
cd "$(dirname "$0")/.."
installed=/usr/share/seabios/bios-256k.bin
cache=target/seabios
cached=$cache/usr/share/seabios/bios-256k.bin
missing() {
  echo "guest-seabios: MISSING: $*; examples/seabios cannot run and tests/seabios.rs will skip" >&2
  exit 1
}
if [ -f "$installed" ] && [ -z "${SEABIOS_NO_INSTALLED:-}" ]; then
  echo "guest-seabios: $installed (seabios $(dpkg-query -W -f='${Version}' seabios 2>/dev/null || echo '?'), installed)"
  exit 0
fi
if [ -f "$cached" ]; then
  echo "guest-seabios: $cached (unpacked earlier)"
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
  missing "no $installed, and no apt-get/dpkg-deb to fetch Debian's seabios package"
mkdir -p "$cache/deb"
download() { (cd "$cache/deb" && apt-get download -q seabios 2>&1 | grep -v "unsandboxed" || true); }
download
if ! ls "$cache"/deb/seabios_*.deb >/dev/null 2>&1; then
  # A fresh machine may have no package lists yet: fetch them (root only), then try again.
  [ "$(id -u)" = 0 ] || missing "apt-get download seabios failed (no package lists? run apt-get update as root)"
  apt-get update -qq || missing "apt-get update failed"
  download
fi
deb=$(ls "$cache"/deb/seabios_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || missing "apt-get download seabios fetched nothing"
dpkg-deb -x "$deb" "$cache"
[ -f "$cached" ] || missing "$deb holds no usr/share/seabios/bios-256k.bin"
echo "guest-seabios: $cached (from $(basename "$deb"))"
