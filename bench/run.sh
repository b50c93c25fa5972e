#!/usr/bin/env bash
# Run every zhongtai benchmark, one after the other, and repeat the verdict lines at the end.
#
#   bench/run.sh            # defaults (bench/jobs.py alone: about 5 minutes on 2 cores)
#   QUICK=1 bench/run.sh    # fewer samples, shorter runs (a smoke test, noisier figures)
#
# Full output of each script is kept in bench/results/<name>.txt (git-ignored), the
# figures as JSON in bench/results/<name>.json. Exits 0 even when a target fails:
# benchmarks report, they do not gate.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p bench/results

if [[ "${QUICK:-}" == 1 ]]; then
    startup_args=(--samples 3)
    http_args=(--rounds 1 --duration 3 --seq-requests 500)
    auth_args=(--rounds 1 --duration 3)
    jobs_args=(--quick)
    ui_args=(--jobs 2000 --requests 50)
    data_args=(--quick)
    tracking_args=(--quick)
    series_args=(--quick)
    training_args=(--quick)
else
    startup_args=()
    http_args=()
    auth_args=()
    jobs_args=()
    ui_args=()
    data_args=()
    tracking_args=()
    series_args=()
    training_args=()
fi

if ! command -v wrk >/dev/null; then
    echo "note: wrk not installed, http_overhead.py falls back to its Python load generator"
    echo "      (preferred: apt-get update && apt-get install -y wrk)"
fi

"$PY" bench/startup.py "${startup_args[@]}" | tee bench/results/startup.txt
echo
"$PY" bench/http_overhead.py "${http_args[@]}" | tee bench/results/http_overhead.txt
echo
"$PY" bench/auth_overhead.py "${auth_args[@]}" | tee bench/results/auth_overhead.txt
echo
"$PY" bench/jobs.py "${jobs_args[@]}" | tee bench/results/jobs.txt
echo
"$PY" bench/ui.py "${ui_args[@]}" | tee bench/results/ui.txt
echo
"$PY" bench/data.py "${data_args[@]}" | tee bench/results/data.txt
echo
"$PY" bench/tracking.py "${tracking_args[@]}" | tee bench/results/tracking.txt
echo
"$PY" bench/tracking_series.py "${series_args[@]}" | tee bench/results/tracking_series.txt
echo
"$PY" bench/training.py "${training_args[@]}" | tee bench/results/training.txt

echo
echo "== summary ($(date +%F), $(nproc) cores) =="
grep -hE '(PASS|FAIL|no target)' bench/results/startup.txt bench/results/http_overhead.txt \
    bench/results/auth_overhead.txt bench/results/jobs.txt bench/results/ui.txt \
    bench/results/data.txt bench/results/tracking.txt bench/results/tracking_series.txt \
    bench/results/training.txt
