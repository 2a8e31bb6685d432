#!/usr/bin/env bash
# The probe checks that need a GPU, as one prepared run: the tests in tests/gpu and the probe
# benchmark. Results go under $OUT (default: a new temp dir). Installs nothing: it needs
# torch, pytest, pytest-timeout, anyio, trio, msgspec, psutil, structlog, transitions,
# httpx and nvidia-ml-py importable by $PYTHON (default python3); extra packages may be put
# on PYTHONPATH (e.g. a carried site-packages folder).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  date -u
  nvidia-smi || echo "nvidia-smi failed"
  "$PY" --version
  "$PY" - <<'PY'
import importlib
for name in ("torch", "pynvml", "anyio", "trio", "pytest", "pytest_timeout", "msgspec",
             "psutil", "structlog", "transitions", "httpx", "torch_memory_saver"):
    try:
        mod = importlib.import_module(name)
        print(f"{name}: {getattr(mod, '__version__', 'ok')}")
    except Exception as exc:
        print(f"{name}: MISSING ({exc})")
PY
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

"$PY" -m pytest -q -p no:cacheprovider -rA tests/gpu --junitxml="$OUT/gpu-tests.xml" \
  2>&1 | tee "$OUT/gpu-tests.txt"
rc_tests=${PIPESTATUS[0]}

"$PY" -m tests.bench.bench_probe --json "$OUT/bench_probe.json" 2>&1 | tee "$OUT/bench_probe.txt"
rc_bench=${PIPESTATUS[0]}
# Gates polling together on real NVML: a shared round vs a round each (appended to the same file).
"$PY" -m tests.bench.bench_shared_rounds 2>&1 | tee -a "$OUT/bench_probe.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc_bench=1

"$PY" -m offload_fsm doctor > "$OUT/doctor.txt" 2>&1
rc_doctor=$?

# End to end on real GPU memory: stand-in engine and trainer processes, NVML-gated wakes; the
# run's log must replay clean (the demo's exit code says so).
"$PY" -m offload_fsm demo --engines torch --steps 3 --rollout 0.5 --train 0.5 \
  --run-id gpu-demo --out "$OUT" 2>&1 | tee "$OUT/demo.txt"
rc_demo=${PIPESTATUS[0]}
"$PY" -m offload_fsm trace "$OUT/gpu-demo.jsonl" -o "$OUT/gpu-demo.trace.json" >/dev/null 2>&1

echo "gpu tests rc=$rc_tests, bench rc=$rc_bench, doctor rc=$rc_doctor, demo rc=$rc_demo;" \
  "results in $OUT" | tee "$OUT/summary.txt"
# The device tool brings back at most 8 files: pack the rest.
(cd "$OUT" && tar czf results.tgz --remove-files env.txt doctor.txt gpu-tests.xml \
  gpu-demo.trace.json 2>/dev/null)
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ] && [ "$rc_doctor" -eq 0 ] && [ "$rc_demo" -eq 0 ]
