#!/usr/bin/env bash
# One device call for the fused MVL step (issue #17), after scripts/gpu_pack.sh: the SPEC §10
# step beside the peers (one run), every fused shape at 10 and 100 steps per submission, a
# sweep of tile sizes, the layers shape's per-kernel profile, and the fused test suite on the
# GPU. Everything lands in $OUT. Run it with
#     run(command="bash scripts/gpu_step.sh 2>&1 | tee $OUT/log.txt", carry=[".gl", ".gpu"],
#         timeout_s=420)
# (about 5 minutes on an H100-class GPU). DRY=1 rehearses on this machine (lavapipe, slow:
# it then runs only the paper configuration).
set -u
cd "$(dirname "$0")/.."
W=/tmp/wmvl-step
. scripts/gpu_setup.sh
OUT=${OUT:-$W/out}
mkdir -p "$OUT"
CONFIGS=paper,small,large
[ -n "${DRY:-}" ] && CONFIGS=paper

export PYTHONUNBUFFERED=1
# wmvl (auto shape, chunks of 10 and 100) and the peers, one after the other, with ratios.
timeout ${BENCH_S:-200} python3 .gpu/bench.py .gpu --wmvl $B/mvl_step --configs $CONFIGS \
    --jax-k 1,100 --torch eager,graph --out $W/res/bench.md > $W/res/bench.log 2>&1
log "bench rc=$?"; cat $W/res/bench.md 2>/dev/null
# Every shape, 100 steps per submission.
for c in ${CONFIGS//,/ }; do
    timeout 60 $B/mvl_step --config $c --path fused --shape all --chunk 100 --steps 300 \
        >> $W/res/shapes.txt 2>&1
done
log "shapes"; cat $W/res/shapes.txt
# Tile sizes (rows,groups,size) for the GPU tile shape.
for c in paper small; do
    for t in "1,,256" "2,,256" "4,,256" "8,,256" "2,,128" "4,,128" "8,,64" "16,,256"; do
        echo "WMVL_TILE=$t" >> $W/res/tiles.txt
        WMVL_TILE=$t timeout 30 $B/mvl_step --config $c --path fused --shape tile-gpu --chunk 100 \
            --steps 300 >> $W/res/tiles.txt 2>&1
    done
done
log "tiles"; grep -E "WMVL_TILE|step_us" $W/res/tiles.txt
timeout 60 $B/mvl_step --config all --path fused --shape layers --profile > $W/res/profile.txt 2>&1
log "profile rc=$?"
timeout ${TEST_S:-150} $B/t_fused > $W/res/test-fused.log 2>&1
log "test fused rc=$?"; tail -3 $W/res/test-fused.log
(cd $W && tar czf "$OUT/step-results.tar.gz" res)
cp $W/res/bench.md "$OUT/" 2>/dev/null
log "end"
