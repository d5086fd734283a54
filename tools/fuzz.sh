#!/usr/bin/env bash
# Coverage-guided fuzzing of the core's parsers: the fuzz/ crate under cargo-fuzz (libFuzzer)
# on the nightly toolchain, one target at a time (the machine's cores are shared).
#
#   tools/fuzz.sh SECS short   (make test) SECS per target from the committed corpora; new
#                              inputs go to a scratch directory, so the tree stays clean.
#   tools/fuzz.sh SECS long    (make fuzz) SECS per target, libFuzzer's progress shown; new
#                              inputs join fuzz/corpus/<target>, which is then minimised with
#                              `cargo fuzz cmin` to the inputs that reach every code edge
#                              reached: commit what changed.
#   tools/fuzz.sh 0 install    only install cargo-fuzz if it is missing.
#
# Each target ends with one summary line: executions, libFuzzer's coverage figures (`cov`:
# code edges reached, `ft`: features, i.e. edges with hit counts and compared values) and the
# corpus size. A broken property or a crash stops the run with libFuzzer's report; the input
# is kept in fuzz/artifacts/<target>/. FUZZ_SANITIZER=address builds with ASan (default
# none: the core has no `unsafe` of its own, and ASan cost about five times the executions).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-600}
mode=${2:-long}
targets=(${FUZZ_TARGETS:-config record control_route mode_body token classifier retry_after timeline})
sanitizer=${FUZZ_SANITIZER:-none}
cargo_fuzz_version=0.13.2

case $mode in short | long | install) ;; *) echo "usage: $0 SECS short|long|install" >&2; exit 2 ;; esac
if [[ $mode != install ]] && ! [[ $secs =~ ^[0-9]+$ && $secs -gt 0 ]]; then
  # libFuzzer reads -max_total_time=0 as "no limit".
  echo "fuzz: SECS must be a whole number above 0, not '$secs'" >&2
  exit 2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz | skipped: no nightly toolchain (cargo +nightly); tests/fuzz.rs replays the committed corpora on stable"
  exit 0
fi
if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]]; then
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi
[[ $mode == install ]] && exit 0

fuzz() { nice -n 10 cargo +nightly fuzz "$@"; }
fuzz build -s "$sanitizer"

logs=target/fuzz-logs
mkdir -p "$logs"
summary=()
for t in "${targets[@]}"; do
  log=$logs/$t.log
  dirs=()
  if [[ $mode == short ]]; then
    rm -rf "target/fuzz-scratch/$t"
    mkdir -p "target/fuzz-scratch/$t"
    dirs+=("target/fuzz-scratch/$t")
  fi
  # A new target starts with an empty corpus; libFuzzer refuses a directory that is missing.
  mkdir -p "fuzz/corpus/$t"
  dirs+=("fuzz/corpus/$t")
  # Hand-made seeds (tests/fuzz.rs writes them) and past failures: read, never minimised.
  for d in seeds regressions; do
    [[ -d fuzz/$d/$t ]] && dirs+=("fuzz/$d/$t")
  done
  # The config target takes whole plugin files; the rest take header- or body-sized input.
  max_len=4096
  [[ $t == config ]] && max_len=16384
  args=(-max_total_time="$secs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  echo "fuzz | $t | ${secs}s coverage-guided | log: $log"
  status=0
  if [[ $mode == short ]]; then
    fuzz run -s "$sanitizer" "$t" "${dirs[@]}" -- "${args[@]}" >"$log" 2>&1 || status=$?
  else
    fuzz run -s "$sanitizer" "$t" "${dirs[@]}" -- "${args[@]}" 2>&1 | tee "$log" || status=$?
  fi
  if [[ $status != 0 ]]; then
    tail -n 60 "$log"
    echo "fuzz | $t | FAILED (exit $status); the input is in fuzz/artifacts/$t/"
    exit 1
  fi
  if [[ $mode == long ]]; then
    # A smallest set of inputs that still reaches every edge (set cover, edges without hit
    # counts): a few hundred files, not thousands; the hit-count variety is quickly regained.
    fuzz cmin -s "$sanitizer" "$t" "fuzz/corpus/$t" -- -max_len="$max_len" \
      -set_cover_merge=1 -use_counters=0 >"$logs/$t.cmin.log" 2>&1
  fi
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
  execs=$(sed -nE 's/^stat::number_of_executed_units: ([0-9]+)/\1/p' "$log" | tail -n 1)
  cov=$(sed -nE 's/.* cov: ([0-9]+) .*/\1/p' <<<"$done_line")
  ft=$(sed -nE 's/.* ft: ([0-9]+) .*/\1/p' <<<"$done_line")
  rate=$(sed -nE 's/.* exec\/s: ([0-9]+) .*/\1/p' <<<"$done_line")
  files=$(find "fuzz/corpus/$t" -type f | wc -l)
  bytes=$(du -sb "fuzz/corpus/$t" | cut -f1)
  line="fuzz | $t | ${secs}s | ${execs:-?} executions (${rate:-?}/s) | cov ${cov:-?} ft ${ft:-?} | corpus $files files, $bytes bytes"
  echo "$line"
  summary+=("$line")
done
echo "fuzz | summary (sanitizer: $sanitizer)"
printf '%s\n' "${summary[@]}"
