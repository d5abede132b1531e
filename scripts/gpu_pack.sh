#!/usr/bin/env bash
# Build here what one device call runs and pack it into .gpu/ (with the GL/Vulkan loader
# packages in .gl/), both ignored by git and carried by the call:
#     scripts/gpu_pack.sh [SHARED_DIR]        (default ../shared)
# then  run(command="bash scripts/gpu_session.sh 2>&1 | tee $OUT/log.txt", carry=[".gl", ".gpu"]).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
shared=${1:-../shared}
for d in .gl .gpu; do
    grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
done
rm -rf .gpu .gl
mkdir -p .gl .gpu/bin
cp "$shared"/gpu/gl/*.deb .gl/
cp "$shared"/bench/*.py scripts/bench.py .gpu/
cargo build --release --bin wmvl --example mvl_step --example vae_step --example table1_vae --example table2_wae
cp target/release/wmvl target/release/examples/mvl_step target/release/examples/vae_step target/release/examples/table1_vae \
    target/release/examples/table2_wae .gpu/bin/
# The kernel benchmark (matmul GFLOP/s up to n = 4096 on a GPU).
exe=$(cargo bench --no-run --bench kernels 2>&1 | grep -o "target/release/deps/kernels-[0-9a-f]*" | tail -1)
cp "$exe" .gpu/bin/b_kernels
# The suites that need no files beyond the repository (which travels with the call).
for t in fused kernels gradients ais vae wae lenet fid_mnist; do
    exe=$(cargo test --release --no-run --test "$t" 2>&1 | grep -o "target/release/deps/$t-[0-9a-f]*" | tail -1)
    cp "$exe" ".gpu/bin/t_$t"
done
strip .gpu/bin/*
(cd .gpu && tar cJf bin.tar.xz bin && rm -rf bin)
du -sh .gl .gpu
