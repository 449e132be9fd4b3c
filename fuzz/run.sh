#!/usr/bin/env bash
# Runs fuzz targets for a given time each, one at a time, at the lowest CPU priority.
#   fuzz/run.sh [TARGET|all] SECONDS
# Builds first (cargo +nightly fuzz build -O, no sanitizer: the relay is safe Rust, and without
# ASan the targets run about twice as fast). Per target it prints one line with the number of
# executions, the time and the rate, and exits non-zero when any target finds a crash (libFuzzer
# leaves the input in fuzz/artifacts/TARGET/). New corpus entries go to fuzz/corpus/TARGET/
# (not committed); fuzz/seeds/TARGET/ and fuzz/regressions/TARGET/ (past findings) are read as well.
set -euo pipefail

ALL=(smtp_session convert big_attachment base64_stream config)
target=${1:-all}
seconds=${2:-60}
cd "$(dirname "$0")"

if [[ $target == all ]]; then
  targets=("${ALL[@]}")
  build=()
else
  targets=("$target")
  build=("$target")
fi

# Longest input per target: enough for a few SMTP transactions or a real message's headers and
# parts, short enough to keep the rate up.
max_len() {
  case $1 in
    smtp_session) echo 8192 ;;
    convert) echo 16384 ;;
    big_attachment) echo 2048 ;;
    *) echo 4096 ;;
  esac
}

nice -n 19 cargo +nightly fuzz build -O -s none "${build[@]}" >&2

status=0
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t"
  # libFuzzer runs every input of these directories first, then fuzzes; new inputs go to the first.
  dirs=("corpus/$t" "seeds/$t")
  [[ -d regressions/$t ]] && dirs+=("regressions/$t")
  log="logs/$t.log"
  set +e
  # FUZZ_SEED fixes libFuzzer's random seed, so a run from the same corpus takes the same path
  # (the CI smoke does: what it can find in its 30 s was tried here first).
  nice -n 19 cargo +nightly fuzz run -O -s none "$t" "${dirs[@]}" -- \
    -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=60 -rss_limit_mb=4096 \
    ${FUZZ_SEED:+-seed="$FUZZ_SEED"} -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  secs=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  if [[ $rc -eq 0 ]]; then
    echo "$t: ${execs:-?} execs in ${seconds} s (${secs:-?}/s), no crash"
  else
    status=1
    echo "$t: CRASH after ${execs:-?} execs (exit $rc); see fuzz/$log and fuzz/artifacts/$t/"
    grep -m3 -E "panicked at|^==[0-9]+== ERROR|Test unit written to" "$log" || true
  fi
done
exit $status
