#!/usr/bin/env bash
# Assembles examples/kvm/guest.S into the flat binary examples/kvm/guest.bin (loaded at
# 0x1000) with binutils, and says whether the committed guest.bin matches the source.
# Usage: scripts/build-guest.sh [--write]
set -euo pipefail
cd "$(dirname "$0")/../examples/kvm"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
as --32 -o "$tmp/guest.o" guest.S
ld -m elf_i386 -Ttext=0x1000 -e _start --oformat binary -o "$tmp/guest.bin" "$tmp/guest.o"
if [ "${1:-}" = "--write" ]; then
  cp "$tmp/guest.bin" guest.bin
  echo "wrote examples/kvm/guest.bin ($(stat -c %s guest.bin) bytes)"
elif cmp -s "$tmp/guest.bin" guest.bin; then
  echo "examples/kvm/guest.bin matches guest.S"
else
  echo "examples/kvm/guest.bin does not match guest.S (run with --write)" >&2
  exit 1
fi
