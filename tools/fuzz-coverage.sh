#!/usr/bin/env bash
# Line and region coverage of the code each fuzz target is there for, reached by its
# committed inputs: `cargo fuzz coverage` replays fuzz/{corpus,seeds,regressions}/<target> through a build
# instrumented for source coverage, then llvm-cov (nightly's llvm-tools) reports the files
# under test. Reports go to target/fuzz-coverage/<target>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz-coverage | skipped: no nightly toolchain (cargo +nightly)"
  exit 0
fi
rustup component list --toolchain nightly --installed | grep -q '^llvm-tools' \
  || rustup component add llvm-tools-preview --toolchain nightly
tools/fuzz.sh 0 install
llvm_bin="$(rustc +nightly --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin"
out=target/fuzz-coverage
mkdir -p "$out"

declare -A files=(
  [config]="src/core/config.rs src/core/duration.rs src/core/outcome.rs"
  [record]="src/core/codec.rs"
  [control_route]="src/core/control.rs"
  [mode_body]="src/core/control.rs"
  [token]="src/core/control.rs"
  [classifier]="src/core/outcome.rs"
  [retry_after]="src/core/retry_after.rs"
)
for t in ${FUZZ_TARGETS:-config record control_route mode_body token classifier retry_after}; do
  dirs=()
  for d in corpus seeds regressions; do
    [[ -d fuzz/$d/$t ]] && dirs+=("fuzz/$d/$t")
  done
  nice -n 10 cargo +nightly fuzz coverage "$t" "${dirs[@]}" >"$out/$t.build.log" 2>&1
  # cargo-fuzz 0.13 puts the coverage build under the project's target/, not fuzz/target/.
  bin=$(ls -d {target,fuzz/target}/x86_64-unknown-linux-gnu/coverage/x86_64-unknown-linux-gnu/release/"$t" 2>/dev/null | head -n 1 || true)
  paths=()
  for f in ${files[$t]}; do paths+=("$PWD/$f"); done
  "$llvm_bin/llvm-cov" report "$bin" -instr-profile="fuzz/coverage/$t/coverage.profdata" \
    "${paths[@]}" >"$out/$t.txt"
  echo "fuzz-coverage | $t | $(find "${dirs[@]}" -type f | wc -l) inputs (${dirs[*]})"
  # Filename, regions, missed, cover, functions, missed, executed, lines, missed, cover.
  awk '/\.rs / || /^TOTAL/ {sub(".*/", "", $1); printf "  %-28s regions %s of %s (%s)  lines %s of %s (%s)\n", $1, $2-$3, $2, $4, $8-$9, $8, $10}' "$out/$t.txt"
done
