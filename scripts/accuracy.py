#!/usr/bin/env python3
"""An independent check of the MVL loss and parameter gradient that wmvl computes: the same
loss written in JAX (SPEC §2, with the stored spectral-norm vectors as `wmvl eval` uses them),
evaluated in float64 (the reference) and float32 (what a straightforward f32 implementation
gives), on the same checkpoint, data and noise as `wmvl eval --path fused` and `--path tape`.

    python3 scripts/accuracy.py [--wmvl target/release/wmvl] [--rows 4096] [--eps 1e-3,1e-5]

Trains a small paper-architecture model on banana first (wmvl train, 50 steps) so the
weights are realistic. Prints, per eps, the relative error of each loss and gradient against
float64. Needs numpy and jax (pip install jax).
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(t["shape"])
    return out, header.get("__metadata__", {})


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    return p.stdout


def jax_loss_and_grad(params, u, x, z, eps0, dtype):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    cast = lambda a: jnp.asarray(a, dtype=dtype)
    params = [(cast(w), cast(b)) for w, b in params]
    u = [cast(v) for v in u]
    x, z = cast(x), cast(z)

    def energy(ps, xx):
        h = xx
        for l, (w, b) in enumerate(ps):
            if l < len(u):  # spectral norm with the stored u (evaluation: no iteration)
                v = u[l] @ w.T
                v = jax.lax.stop_gradient(v / jnp.sqrt(jnp.sum(v * v) + 1e-24))
                sigma = (v @ w) @ jax.lax.stop_gradient(u[l])
                w = w / sigma
            h = h @ w + b
            if l < len(ps) - 1:
                h = jax.nn.silu(h)
        return jnp.sum(xx * h, -1)

    def loss(ps):
        e0, vjp = jax.vjp(lambda xx: energy(ps, xx), x)
        g = vjp(jnp.ones_like(e0))[0]
        a = jax.lax.stop_gradient(jnp.sum(g * g, -1))
        step = eps0 / jnp.maximum(1.0, a)
        xi = jax.lax.stop_gradient(z * jnp.sqrt(2 * step)[:, None])
        x1 = x - g * (0.5 * step)[:, None] + xi
        ediff = energy(ps, x1) - e0 - jnp.sum(g * xi, -1)
        return jnp.mean(-ediff / step)

    val, grad = jax.value_and_grad(loss)(params)
    flat = np.concatenate([np.asarray(t, dtype=np.float64).ravel() for wb in grad for t in wb])
    return float(val), flat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wmvl", default="target/release/wmvl")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--eps", default="1e-3,1e-5")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="wmvl-accuracy-")
    ck = os.path.join(d, "model.safetensors")
    run([a.wmvl, "train", "--dataset", "banana", "--steps", "50", "--out", ck, "--heldout", "0"])
    rng = np.random.default_rng(0)
    x1 = 2.0 * rng.standard_normal(a.rows)
    x = np.stack([x1, 0.2 * (x1 ** 2 - 4.0) + rng.standard_normal(a.rows)], -1).astype(np.float32)
    z = rng.standard_normal((a.rows, 2)).astype(np.float32)
    np.save(os.path.join(d, "x.npy"), x)
    np.save(os.path.join(d, "z.npy"), z)

    tensors, meta = read_safetensors(ck)
    layers = len([k for k in tensors if k.endswith(".weight")])
    params = [(tensors[f"layers.{l}.weight"], tensors[f"layers.{l}.bias"][0]) for l in range(layers)]
    u = [tensors[f"layers.{l}.sn_u"][0] for l in range(layers) if f"layers.{l}.sn_u" in tensors]
    names = [n for l in range(layers) for n in (f"layers.{l}.weight", f"layers.{l}.bias")]
    print(f"model: {meta.get('hidden')} {meta.get('activation')}, spectral norm {meta.get('spectral_norm')}; {a.rows} rows")
    print(f"{'eps':>8} {'implementation':<16} {'loss':>14} {'loss rel. err':>14} {'grad rel. err':>14}")
    for eps in [float(e) for e in a.eps.split(",")]:
        ref_loss, ref_grad = jax_loss_and_grad(params, u, x, z, eps, "float64")
        rows = []
        for path in ["fused", "tape"]:
            g = os.path.join(d, f"g-{path}.safetensors")
            out = run([a.wmvl, "eval", "--checkpoint", ck, "--data", os.path.join(d, "x.npy"),
                       "--noise", os.path.join(d, "z.npy"), "--objective", "mvl", "--eps", str(eps),
                       "--grad-out", g, "--path", path])
            loss = float(out.split("=")[1].split("±")[0])
            gt, _ = read_safetensors(g)
            grad = np.concatenate([gt[n].astype(np.float64).ravel() for n in names])
            rows.append((f"wmvl {path}", loss, grad))
        l32, g32 = jax_loss_and_grad(params, u, x, z, eps, "float32")
        rows.append(("jax float32", l32, g32))
        print(f"{eps:>8.0e} {'jax float64':<16} {ref_loss:>14.8f} {'(reference)':>14} {'':>14}")
        for name, loss, grad in rows:
            le = abs(loss - ref_loss) / abs(ref_loss)
            ge = np.linalg.norm(grad - ref_grad) / np.linalg.norm(ref_grad)
            print(f"{'':>8} {name:<16} {loss:>14.8f} {le:>14.2e} {ge:>14.2e}")


if __name__ == "__main__":
    main()
