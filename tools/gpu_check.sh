#!/usr/bin/env bash
# tools/gpu_check.sh — one-shot CUDA backend check for a machine with an NVIDIA GPU.
#
# Promise: from the repository root of a working-tree copy, builds everything with `make`
# (which installs missing Debian packages when run as root), shows the GPU (nvidia-smi), says
# why the core does or does not see CUDA, runs spec/cuda_spec.lua under busted as TAP, and ends
# with one plain line `N passed, N failed, N skipped`. Exit status 0 only when the build worked,
# the CUDA backend loaded, nothing failed and nothing was skipped for lack of a GPU. Designed to
# finish in well under 5 minutes (parallel build, each step under its own timeout).
#
# Usage: bash tools/gpu_check.sh            (from the repo root)
#        SANITIZE=1 bash tools/gpu_check.sh (also runs the spec under compute-sanitizer memcheck; slower)
set -u
cd "$(dirname "$0")/.." || exit 2
t0=$(date +%s)
jobs=$(nproc 2>/dev/null || echo 4)
status=0
say() { printf '\n==== %s (t=%ss)\n' "$*" "$(( $(date +%s) - t0 ))"; }

say "GPU (nvidia-smi)"
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,compute_cap \
        --format=csv || true
    timeout 30 nvidia-smi | head -n 15 || true
    gpu_seen=1
else
    echo "nvidia-smi not found: no NVIDIA driver on this machine"
    gpu_seen=0
fi

say "build"
NVCC_BIN=$(command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
if [ -n "$NVCC_BIN" ]; then
    echo "nvcc: $NVCC_BIN ($("$NVCC_BIN" --version | tail -n 1))"
    CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC_BIN")")}
    timeout 240 make -j"$jobs" || { echo "BUILD FAILED"; status=1; }
    timeout 120 make -j"$jobs" cuda || { echo "CUDA BUILD FAILED"; status=1; }
else
    echo "nvcc not found: building the core only (CUDA=0); lib/libnanochat_cuda.so must already exist"
    CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
    timeout 240 make -j"$jobs" CUDA=0 || { echo "BUILD FAILED"; status=1; }
fi
ls -l lib/ 2>/dev/null || true

# the CUDA library is dlopen'ed next to libnanochat.so; let the loader find cudart / cuBLAS
for d in "$CUDA_HOME/lib64" "$CUDA_HOME/lib" "$CUDA_HOME/targets/x86_64-linux/lib"; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
if [ -f lib/libnanochat_cuda.so ]; then
    echo "lib/libnanochat_cuda.so dependencies:"
    ldd lib/libnanochat_cuda.so | grep -E 'cuda|cublas|not found' || true
    echo "exported symbols: $(nm -D --defined-only lib/libnanochat_cuda.so | awk '{print $3}' | tr '\n' ' ')"
else
    echo "lib/libnanochat_cuda.so is missing"
    status=1
fi

say "CUDA as the core sees it"
avail=$(timeout 60 luajit -e "
package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
local nc = require 'nanochat'
io.write(nc.cuda_available() and 'yes' or 'no', ' | ', nc.cuda_status(), '\n')" 2>&1)
echo "cuda_available: $avail"
case "$avail" in
    yes*) ;;
    *) echo "CUDA BACKEND NOT AVAILABLE"; status=1 ;;
esac

say "spec/cuda_spec.lua"
tap=$(mktemp)
timeout 180 busted --lua=luajit -o TAP spec/cuda_spec.lua | tee "$tap"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || status=1
[ "$rc" -eq 124 ] && echo "SPEC TIMED OUT"
read -r passed failed skipped < <(awk '/^ok /{p++} /^not ok /{f++} /# SKIP/{s++} END{print p-s+0, f+0, s+0}' "$tap")
[ "$skipped" -eq 0 ] || status=1
[ "$passed" -gt 0 ] || status=1

if [ "${SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
    say "compute-sanitizer memcheck over spec/cuda_spec.lua"
    timeout 300 compute-sanitizer --tool memcheck --error-exitcode 99 \
        busted --lua=luajit -o TAP spec/cuda_spec.lua | grep -E '^(not ok|=========)|ERROR SUMMARY' | head -50
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "SANITIZER REPORTED ERRORS"; status=1; }
fi

say "summary"
echo "gpu visible: $([ "$gpu_seen" = 1 ] && echo yes || echo no); cuda_available: ${avail%% *}; busted exit: $rc"
echo "elapsed: $(( $(date +%s) - t0 ))s"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$status" -eq 0 ] && echo "GPU CHECK: PASS" || echo "GPU CHECK: FAIL"
rm -f "$tap"
exit "$status"
