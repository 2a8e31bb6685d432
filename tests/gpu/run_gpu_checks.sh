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

"$PY" -m offload_fsm doctor > "$OUT/doctor.txt" 2>&1
rc_doctor=$?

echo "gpu tests rc=$rc_tests, bench rc=$rc_bench, doctor rc=$rc_doctor; results in $OUT" \
  | tee "$OUT/summary.txt"
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ] && [ "$rc_doctor" -eq 0 ]
