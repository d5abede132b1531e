#!/usr/bin/env bash
# One device call for the tape's targets (issue #18), after scripts/gpu_pack.sh: Table 1's
# Gaussian VAE step beside JAX jit, PyTorch eager and its CUDA graph (one run), the tape's
# and the fused MVL step beside the MVL peers, the VAE step's per-kernel profile, and the
# kernel benchmark (matmul GFLOP/s at n = 4096). Everything lands in $OUT. Run it with
#     run(command="bash scripts/gpu_tape.sh 2>&1 | tee $OUT/log.txt", carry=[".gl", ".gpu"],
#         timeout_s=420)
# (a few minutes on an H100-class GPU). DRY=1 rehearses on this machine (lavapipe).
set -u
cd "$(dirname "$0")/.."
W=/tmp/wmvl-tape
. scripts/gpu_setup.sh
OUT=${OUT:-$W/out}
mkdir -p "$OUT"

export PYTHONUNBUFFERED=1
timeout ${BENCH_S:-240} python3 .gpu/bench.py .gpu --wmvl $B/mvl_step --configs paper \
    --vae 8 --jax-k 1,10 --torch eager,graph --out $W/res/bench.md > $W/res/bench.log 2>&1
log "bench rc=$?"; cat $W/res/bench.md 2>/dev/null
timeout 60 $B/vae_step --steps 50 --profile > $W/res/vae-profile.txt 2>&1
log "vae profile rc=$?"; cat $W/res/vae-profile.txt
timeout 120 $B/b_kernels > $W/res/kernels.txt 2>&1
log "kernels rc=$?"; cat $W/res/kernels.txt
(cd $W && tar czf "$OUT/tape-results.tar.gz" res)
cp $W/res/bench.md "$OUT/" 2>/dev/null
log "end"
