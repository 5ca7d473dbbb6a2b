#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 600), PARALLEL at a time (default:
# all cores), with libFuzzer's 2 GB memory cap and 10 s per-input timeout, so an unbounded
# allocation or a hang is a finding like a panic. New inputs grow fuzz/corpus/TARGET (commit
# them; after a clean run the corpus is minimised to the inputs that add coverage, unless
# MINIMIZE=0); crashes land in fuzz/artifacts/TARGET and make the script exit 1.
#
#   tools/fuzz.sh 600            # ≥ 10 minutes per target, the issue's bar
#   tools/fuzz.sh 30 upload npy  # a quick look at two targets
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
targets=("$@")
export CARGO_TARGET_DIR="${CARGO_FUZZ_TARGET_DIR:-$HOME/.cache/visual-search/fuzz-target}"
parallel="${PARALLEL:-$(nproc)}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd fuzz
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
if [ ! -d corpus ]; then
  python="${PYTHON:-$HOME/.cache/visual-search/venv/bin/python}"
  (cd .. && "$python" tools/make_fuzz_corpus.py fuzz/corpus)
fi
# -s none: the code under test is safe Rust (C decoders are not instrumented either), so ASan
# buys little and halves the speed; -a keeps overflow checks and debug assertions on.
cargo +nightly fuzz build -s none -a
mkdir -p logs
status=0
run_one() {
  local t="$1"
  mkdir -p "corpus/$t" "artifacts/$t"
  if cargo +nightly fuzz run -s none -a "$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
      -max_len=262144 -print_final_stats=1 >"logs/$t.log" 2>&1; then
    echo "$t: clean ($(grep -o 'stat::number_of_executed_units: [0-9]*' "logs/$t.log" | awk '{print $2}') runs, $(ls "corpus/$t" | wc -l) corpus files)"
  else
    echo "$t: FOUND A PROBLEM — see fuzz/logs/$t.log and fuzz/artifacts/$t/"
    return 1
  fi
}
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$parallel" ]; then
    wait -n || status=1
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do
  wait -n || status=1
  running=$((running - 1))
done
# Keep the committed corpus small: only the inputs that add coverage.
if [ "$status" -eq 0 ] && [ "${MINIMIZE:-1}" = 1 ]; then
  for t in "${targets[@]}"; do
    before=$(ls "corpus/$t" | wc -l)
    cargo +nightly fuzz cmin -s none -a "$t" "corpus/$t" >"logs/$t.cmin.log" 2>&1
    echo "$t: corpus minimised from $before to $(ls "corpus/$t" | wc -l) files"
  done
fi
exit "$status"
