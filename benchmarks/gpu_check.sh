#!/usr/bin/env bash
# One prepared check of the toolkit on a CUDA machine (docs/gpu.md), in two halves:
#
#   bash benchmarks/gpu_check.sh prepare [BUNDLE]   # normal machine, with PyPI: wheels the GPU machine lacks
#                                                   # + CIFAR-10 into BUNDLE (default gpu_bundle/, git-ignored, <= 64 MiB)
#   bash benchmarks/gpu_check.sh run OUTDIR [BUNDLE] # GPU machine, offline: installs, CUDA tests, bench, capacity
#   bash benchmarks/gpu_check.sh --smoke OUTDIR      # any CPU, tiny sizes, seconds (run by the test suite)
#
# `run` stops itself within DK_GPU_BUDGET_S seconds (default 460, under 8 minutes) and writes
# everything under OUTDIR: env.txt, tests.txt, bench/, workloads/, capacity/, log.txt, summary.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${1:-}

# What the GPU machine lacks: it has Python 3.12 with torch >= 2.11 (CUDA), torchvision, transformers,
# tokenizers, numpy, scipy, matplotlib, pillow (and their dependencies: pyyaml, tqdm, packaging).
# pydantic and pydantic-core must be the pair the project is tested with.
WHEELS=(
  "pydantic==2.14.4" "pydantic-core==2.50.5" "typing-inspection==0.4.5" "annotated-types==0.8.0"
  "pyyaml" "tqdm" "scikit-learn" "joblib" "threadpoolctl"
  "pytest" "pluggy" "iniconfig" "pygments" "setuptools" "wheel"
)

die() { echo "gpu_check: $*" >&2; exit 2; }

prepare() {
  local bundle=${1:-$REPO/gpu_bundle}
  local pip=${PIP:-$REPO/.venv/bin/pip}
  local data=${DK_CIFAR10_JPEG:-$REPO/../shared/data/cifar10_jpeg}
  [[ -f $data/cifar10_jpeg_bytes.npz ]] || die "no CIFAR-10 container at $data (set DK_CIFAR10_JPEG)"
  rm -rf "$bundle"
  mkdir -p "$bundle/wheels" "$bundle/cifar10"
  # a glibc 2.28 machine also runs wheels tagged for older glibc (pydantic-core is manylinux_2_17)
  "$pip" download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --implementation cp --no-deps \
    -d "$bundle/wheels" "${WHEELS[@]}"
  cp "$data/cifar10_jpeg_bytes.npz" "$data/to_cifar_python.py" "$bundle/cifar10/"
  local mib
  mib=$(du -sm "$bundle" | cut -f1)
  ((mib <= 64)) || die "$bundle is $mib MiB, over the 64 MiB a GPU machine receives"
  echo "prepared $bundle ($mib MiB): $(ls "$bundle/wheels" | wc -l) wheels + CIFAR-10"
}

run() {
  local out=$1 smoke=$2 bundle=${3:-$REPO/gpu_bundle}
  local start budget py device
  start=$(date +%s)
  budget=${DK_GPU_BUDGET_S:-460}
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  exec > >(tee -a "$out/log.txt") 2>&1
  left() { echo $((budget - ($(date +%s) - start))); }
  # a step gets at most its share and never more than what is left (minus a margin for the summary);
  # --smoke (the test suite's CPU run) gives every step what is left, so a busy machine slows it but cuts nothing
  slot() { local want=$1 l; l=$(($(left) - 10)); ((smoke || l < want)) && want=$l; ((want < 1)) && want=1; echo "$want"; }
  cd "$REPO"

  py=${PYTHON:-python3}
  if ((smoke)); then
    device=cpu
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    echo "== smoke mode: CPU, tiny sizes; no installs, no CUDA tests"
  else
    device=cuda
    [[ -d $bundle/wheels ]] || die "no $bundle/wheels: run 'prepare' on a machine with PyPI and carry gpu_bundle/"
    echo "== installing the bundle's wheels offline (--no-deps) into /tmp/dk-gpu-site"
    "$py" -m pip install --quiet --no-index --no-deps --upgrade --target /tmp/dk-gpu-site "$bundle"/wheels/*.whl
    export PYTHONPATH="/tmp/dk-gpu-site:$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    echo "== the project (--no-deps); its source stays first on PYTHONPATH either way"
    "$py" -m pip install --quiet --no-index --no-deps --no-build-isolation --upgrade --target /tmp/dk-gpu-project "$REPO" ||
      echo "(install failed; running from $REPO/src)"
  fi

  echo "== environment"
  "$py" - "$device" <<'EOF' | tee "$out/env.txt"
import sys, platform, torch
need = (2, 11)
have = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if sys.argv[1] == "cuda":
    if have < need:
        sys.exit(f"torch {torch.__version__} is older than 2.11")
    if not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device")
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}")
import darkknowledge, pydantic
print("darkknowledge from", darkknowledge.__file__, "pydantic", pydantic.VERSION)
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi >>"$out/env.txt" 2>&1 || true

  if ((smoke)); then
    echo "== CUDA-marked tests: skipped in smoke mode" | tee "$out/tests.txt"
  else
    echo "== CUDA-marked tests"
    mapfile -t files < <(grep -rl "pytest.mark.cuda" tests)
    timeout "$(slot 90)" "$py" -m pytest -q -p no:cacheprovider -m cuda "${files[@]}" 2>&1 | tee "$out/tests.txt" ||
      echo "(tests failed or timed out: see tests.txt)"
  fi

  echo "== bench"
  local bench_args=(--device "$device" --out "$out/bench")
  ((smoke)) && bench_args+=(--teacher cnn_w8 --student cnn_w4 --batch-size 16 --num-classes 10 --image-size 8
    --steps 2 --repeats 1 --methods kd --workers 0 --peak-seconds 0.05)
  timeout "$(slot 100)" "$py" benchmarks/gpu_check.py bench "${bench_args[@]}" || echo "(bench failed or timed out)"

  echo "== language-model and full-resolution workloads"
  local work_args=(--device "$device" --out "$out/workloads")
  ((smoke)) && work_args+=(--smoke)
  timeout "$(slot 90)" "$py" benchmarks/gpu_check.py workloads "${work_args[@]}" || echo "(workloads failed or timed out)"

  echo "== capacity check"
  local cap_args=(--device "$device" --out "$out/capacity")
  if ((smoke)); then
    cap_args+=(--dataset digits --per-class 10 --teachers cnn_w4,cnn_w8,cnn_w16 --teacher-epochs 1 --student cnn_w4
      --student-epochs 1 --student-teachers largest --seeds 0 --batch-size 16 --lr 0.05 --budget-s 900
      --set engine.precision=fp32 engine.channels_last=false)
  else
    echo "   decoding CIFAR-10 (50,000 + 10,000 images at 32x32)"
    "$py" "$bundle/cifar10/to_cifar_python.py" /tmp/dk-cifar10 >/dev/null
    cap_args+=(--dataset cifar10 --root /tmp/dk-cifar10 --budget-s "$(($(left) - 20))")
  fi
  timeout "$(slot 600)" "$py" benchmarks/gpu_check.py capacity "${cap_args[@]}" || echo "(capacity check stopped)"

  {
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - start)) s"
    echo
    cat "$out/env.txt" | head -4
    echo
    echo "## CUDA-marked tests"
    tail -3 "$out/tests.txt"
    echo
    echo "## bench"
    cat "$out/bench/bench.md" 2>/dev/null || echo "(no bench result)"
    echo
    echo "## language-model and full-resolution workloads"
    cat "$out/workloads/workloads.md" 2>/dev/null || echo "(no workloads result)"
    echo
    echo "## capacity"
    cat "$out/capacity/capacity.md" 2>/dev/null || echo "(no capacity result)"
  } >"$out/summary.md"
  echo "== done in $(($(date +%s) - start)) s: $out/summary.md"
}

case "$MODE" in
  prepare) prepare "${2:-}" ;;
  run) run "${2:?usage: gpu_check.sh run OUTDIR [BUNDLE]}" 0 "${3:-}" ;;
  --smoke) run "${2:?usage: gpu_check.sh --smoke OUTDIR}" 1 ;;
  *) die "usage: gpu_check.sh prepare [BUNDLE] | run OUTDIR [BUNDLE] | --smoke OUTDIR" ;;
esac
