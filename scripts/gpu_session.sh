#!/usr/bin/env bash
# One device call, after scripts/gpu_pack.sh (shared/gpu/README.md's recipe): the SPEC §10
# step beside the peers (alone on the GPU), the fused step's profile, then Table 1's eight
# cells as eight processes, training until TRAIN_END s into the call and evaluated by AIS (4
# chains on the sphere, whose host-side MALA is slower), with the GPU test suites beside
# them, and Table 2's four cells beside (TABLES="1 2" by default; "2" for Table 2 alone).
# Everything lands in $OUT (at most 8 files, 16 MiB each; Table 2 without checkpoints)
# before KILL s; run it with
# timeout_s ≥ KILL + 60. BENCH_S, TEST (test digits), TEST_S (per suite) and T1_EXTRA
# (more table1_vae options) size it; DRY=1 rehearses on this machine (lavapipe).
set -u
cd "$(dirname "$0")/.."
W=/tmp/wmvl-session
. scripts/gpu_setup.sh
mkdir -p $W/t1

export PYTHONUNBUFFERED=1
timeout ${BENCH_S:-150} python3 .gpu/bench.py .gpu --wmvl $B/mvl_step --configs paper,small,large \
    --jax-k 1,100 --torch eager,graph --out $W/res/bench.md > $W/res/bench.log 2>&1
rc=$?; log "bench rc=$rc"; cat $W/res/bench.md 2>/dev/null
timeout 30 $B/mvl_step --config all --path fused --profile > $W/res/profile.txt 2>&1
rc=$?; log "profile rc=$rc"

# Table 1: one process per cell; training stops at TRAIN_END s, everything is killed at KILL s.
TRAIN_END=${TRAIN_END:-310}
KILL=${KILL:-450}
T=$((TRAIN_END - $(el)))
[ $T -lt 10 ] && T=10
TABLES=${TABLES:-1 2}
log "tables $TABLES: --train-seconds $T"
T1_CELLS=""
[[ $TABLES == *1* ]] && T1_CELLS="explicit-euclidean-8 explicit-sphere-8 explicit-euclidean-32 explicit-sphere-32 implicit-euclidean-8 implicit-sphere-8 implicit-euclidean-32 implicit-sphere-32"
for c in $T1_CELLS; do
    chains=16
    [[ $c == *sphere* ]] && chains=4
    timeout $((KILL - $(el))) $B/table1_vae --cells $c --train-seconds $T --test ${TEST:-300} --chains $chains \
        --out-dir $W/t1/$c ${T1_EXTRA:-} > $W/res/t1-$c.log 2>&1 &
    PIDS="${PIDS:-} $!"
done
# Table 2: one process per cell, FID with the shipped classifier (the repository travels).
T2_CELLS=""
[[ $TABLES == *2* ]] && T2_CELLS="gan-euclidean gan-sphere mvl-euclidean mvl-sphere"
for c in $T2_CELLS; do
    timeout $((KILL - $(el))) $B/table2_wae --cells $c --train-seconds $T --out-dir $W/t2/$c \
        ${T2_EXTRA:-} > $W/res/t2-$c.log 2>&1 &
    PIDS="${PIDS:-} $!"
done
( for t in fused kernels gradients ais vae wae lenet fid_mnist; do
      timeout ${TEST_S:-60} $B/t_$t > $W/res/test-$t.log 2>&1
      rc=$?
      echo "[$(el) s] test $t rc=$rc" >> $W/res/tests.txt
  done ) &
PIDS="$PIDS $!"
( while [ $(el) -lt $KILL ]; do
      echo "$(el) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)" >> $W/res/util.txt
      sleep 15
  done ) &
UTIL=$!
wait $PIDS
kill $UTIL 2>/dev/null
log "table1 done"
cat $W/res/tests.txt
for f in $W/res/t1-*.log $W/res/t2-*.log; do [ -f "$f" ] && tail -4 "$f"; done
grep -h "reached at step" $W/res/t*-*.log

# Back to $OUT: results (logs, tables, figures) in one file, checkpoints two cells per file.
(cd $W && tar czf $OUT/results.tar.gz res $(cd $W && ls t1/*/*.csv t1/*/*.png t2/*/*.csv t2/*/*.png 2>/dev/null))
k=0
for pair in "explicit-euclidean-8 implicit-euclidean-8" "explicit-sphere-8 implicit-sphere-8" \
            "explicit-euclidean-32 implicit-euclidean-32" "explicit-sphere-32 implicit-sphere-32"; do
    k=$((k + 1))
    files=""
    for c in $pair; do [ -f $W/t1/$c/$c.safetensors ] && files="$files t1/$c/$c.safetensors"; done
    [ -n "$files" ] && (cd $W && tar cf - $files | gzip -1 > $OUT/ck$k.tar.gz)
done
cp $W/res/bench.md $OUT/ 2>/dev/null
ls -la $OUT
log "end"
