#!/usr/bin/env bash
# Assembles examples/seabios/optionrom.S into the PCI option ROM examples/seabios/optionrom.bin
# with binutils, writes the PnP header's checksum and the ROM's (each region sums to 0 mod
# 256), and says whether the committed optionrom.bin matches the source.
# Usage: scripts/build-optionrom.sh [--write]
set -euo pipefail
cd "$(dirname "$0")/../examples/seabios"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
as --32 -o "$tmp/rom.o" optionrom.S
ld -m elf_i386 -Ttext=0 -e _start --oformat binary -o "$tmp/rom.bin" "$tmp/rom.o"
sym() { local h; h=$(nm "$tmp/rom.o" | awk -v s="$1" '$3 == s { print $1 }'); echo $((16#$h)); }
size=$(stat -c %s "$tmp/rom.bin")
[ $((size % 512)) -eq 0 ] || { echo "optionrom.bin: $size bytes, not a multiple of 512" >&2; exit 1; }
# sum OFFSET LEN: the bytes' sum mod 256.
sum() { od -An -tu1 -v -j "$1" -N "$2" "$tmp/rom.bin" | awk '{ for (i = 1; i <= NF; i++) s += $i } END { print s % 256 }'; }
poke() { printf "$(printf '\\%03o' "$2")" | dd of="$tmp/rom.bin" bs=1 seek="$1" conv=notrunc status=none; }
pnp=$(sym pnp)
poke "$(sym pnp_sum)" $(( (256 - $(sum "$pnp" 32)) % 256 ))
poke "$(sym rom_sum)" $(( (256 - $(sum 0 "$size")) % 256 ))
[ "$(sum 0 "$size")" -eq 0 ] && [ "$(sum "$pnp" 32)" -eq 0 ] || { echo "checksums do not add up" >&2; exit 1; }
if [ "${1:-}" = "--write" ]; then
  cp "$tmp/rom.bin" optionrom.bin
  echo "wrote examples/seabios/optionrom.bin ($size bytes)"
elif cmp -s "$tmp/rom.bin" optionrom.bin; then
  echo "examples/seabios/optionrom.bin matches optionrom.S"
else
  echo "examples/seabios/optionrom.bin does not match optionrom.S (run with --write)" >&2
  exit 1
fi
