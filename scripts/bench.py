#!/usr/bin/env python3
"""Run the SPEC §10 training-step benchmark of wmvl (fused kernels and tape) and of the peers
in one run, one after the other on the same machine, and print the timings with ratios; then
the tape's anchor, Table 1's Gaussian VAE step, against its peers.

    python3 scripts/bench.py PEERS_DIR [--configs paper,small,large] [--steps 200]
                             [--wmvl target/release/examples/mvl_step] [--jax-k 1,10,100]
                             [--torch eager,graph] [--vae 8] [--out results.md]

PEERS_DIR holds peer_jax_mvl.py, peer_torch_mvl.py, peer_jax_vae.py and peer_torch_vae.py
(e.g. ../shared/bench). JAX runs with JAX_DEFAULT_MATMUL_PRECISION=highest (f32 matrix
products, as wmvl); a peer whose framework is not installed is reported as missing, not as a
failure. `--configs ""` skips the MVL step, `--vae ""` the VAE step. Build wmvl's binaries
first: cargo build --release --example mvl_step --example vae_step (on a machine without
cargo, pass --wmvl; vae_step is looked for beside it).
"""
import argparse
import os
import re
import subprocess
import sys

LINE = re.compile(
    r"^(?P<engine>\S+) (?P<device>\S+) (?P<mode>\S+) d=(?P<d>\d+) h=(?P<h>\d+) B=(?P<b>\d+) "
    r"step_us=(?P<us>[0-9.]+) loss=(?P<loss>\S+)"
)
VAE_LINE = re.compile(
    r"^(?P<engine>\S+) (?P<device>\S+) (?P<mode>\S+) vae nz=(?P<nz>\d+) B=(?P<b>\d+) "
    r"step_us=(?P<us>[0-9.]+) loss=(?P<loss>\S+)"
)
CONFIGS = {"paper": (2, 100, 200), "small": (8, 256, 128), "large": (32, 512, 4096)}


def run(cmd, env=None, timeout=3600, line=LINE):
    """Run a command, echo its output, return its result lines parsed (and the error if any)."""
    print("$", " ".join(cmd), flush=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], str(e)
    rows = []
    for raw in p.stdout.splitlines():
        print("  " + raw, flush=True)
        m = line.match(raw.strip())
        if m:
            rows.append(m.groupdict())
    err = None
    if p.returncode != 0:
        tail = (p.stderr or "").strip().splitlines()[-3:]
        err = f"exit {p.returncode}: " + " | ".join(tail)
        print("  " + err, flush=True)
    return rows, err


def check_targets(rows, configs, device):
    """Each speed target of issue #17 that these rows can judge, met or missed and by how much."""
    key = lambda r: (int(r["d"]), int(r["h"]), int(r["b"]))
    cpu = "llvmpipe" in device or "lavapipe" in device
    out = []
    for c in configs:
        got = {f"{r['engine']} {r['mode']}": float(r["us"]) for r in rows if key(r) == CONFIGS[c]}
        fused, fused_k = got.get("wmvl fused"), got.get("wmvl fused-k100")
        def line(what, value, bound, better="≤"):
            ok = value <= bound if better == "≤" else value >= bound
            out.append(f"{c}: {what} = {value:.2f} (target {better} {bound}): {'met' if ok else 'MISSED'}")
        if cpu:
            if fused and got.get("jax jit"):
                line("fused / JAX jit", fused / got["jax jit"], 2.0)
            if fused and got.get("wmvl tape"):
                line("tape / fused", got["wmvl tape"] / fused, 5.0, "≥")
            for mode in ("tape", "tape-replay"):
                if c == "paper" and got.get(f"wmvl {mode}") and got.get("jax jit"):
                    line(f"{mode} / JAX jit (issue #18)", got[f"wmvl {mode}"] / got["jax jit"], 6.0)
        else:
            best = min(v for v in (fused, fused_k) if v) if (fused or fused_k) else None
            bound = {"paper": 20.0, "small": 40.0, "large": 1000.0}[c]
            if best:
                line("fused µs per step (best of chunk 10, 100)", best, bound)
            scan = got.get("jax scan100")
            if best and scan and c != "large":
                line("JAX scan×100 / fused", scan / best, {"paper": 5.0, "small": 3.0}[c], "≥")
    return out or ["(no rows to judge)"]


def vae_targets(got, cpu):
    """Issue #18's targets for the VAE step that these timings can judge."""
    out = []
    def line(what, value, bound):
        out.append(f"{what} = {value:.2f} (target ≤ {bound}): {'met' if value <= bound else 'MISSED'}")
    # The step built every step, and the same step recorded once and replayed.
    for mode in ("tape", "tape-replay"):
        tape = got.get(f"wmvl {mode}")
        if tape and cpu and got.get("jax jit"):
            line(f"VAE {mode} / JAX jit", tape / got["jax jit"], 5.0)
        if tape and not cpu:
            if got.get("torch eager"):
                line(f"VAE {mode} / PyTorch eager", tape / got["torch eager"], 1.0)
            if got.get("torch graph"):
                line(f"VAE {mode} / PyTorch CUDA graph", tape / got["torch graph"], 2.0)
    return out


def vae_bench(a, notes):
    """The VAE step of wmvl's tape and of the peers, one after the other: table lines."""
    nzs = [n.strip() for n in a.vae.split(",") if n.strip()]
    if not nzs:
        return []
    exe = os.path.join(os.path.dirname(a.wmvl) or ".", "vae_step")
    rows = []
    for nz in nzs:
        if os.path.exists(exe):
            r, err = run([exe, "--nz", nz, "--steps", str(a.steps)], line=VAE_LINE)
            rows += r
            if err:
                notes.append(f"wmvl vae: {err}")
        else:
            notes.append(f"wmvl vae: {exe} not found (cargo build --release --example vae_step)")
        jax_peer = os.path.join(a.peers, "peer_jax_vae.py")
        if os.path.exists(jax_peer) and has_module("jax"):
            env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")
            r, err = run([sys.executable, jax_peer, str(a.steps), a.jax_k, nz], env=env, line=VAE_LINE)
            rows += r
            if err:
                notes.append(f"jax vae: {err}")
        torch_peer = os.path.join(a.peers, "peer_torch_vae.py")
        if os.path.exists(torch_peer) and has_module("torch"):
            device, modes = torch_modes(a)
            r, err = run([sys.executable, torch_peer, device, ",".join(modes), str(a.steps), nz], line=VAE_LINE)
            rows += r
            if err:
                notes.append(f"torch vae: {err}")
    names = []
    for r in rows:
        n = f"{r['engine']} {r['mode']}"
        if n not in names:
            names.append(n)
    device = next((r["device"] for r in rows if r["engine"] == "wmvl"), rows[0]["device"] if rows else "?")
    cpu = "llvmpipe" in device or "lavapipe" in device
    out = ["", f"median µs per training step of Table 1's Gaussian VAE (B = 128) on {device}; same run", "",
           "| n_z | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    judged = []
    for nz in nzs:
        got = {f"{r['engine']} {r['mode']}": float(r["us"]) for r in rows if r["nz"] == nz}
        out.append(f"| {nz} | " + " | ".join(f"{got[n]:.1f}" if n in got else "—" for n in names) + " |")
        judged += [f"nz={nz}: {t}" for t in vae_targets(got, cpu)]
    if judged:
        out += ["", "targets (issue #18):"] + judged
    return out


def torch_modes(a):
    """PyTorch's device and the requested modes it can run there (graph needs CUDA)."""
    cuda = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True, text=True).stdout.strip() == "True"
    device = "cuda" if cuda else "cpu"
    return device, [m for m in a.torch.split(",") if m and (m != "graph" or cuda)]


def has_module(name):
    return subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True).returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peers", help="folder with peer_jax_mvl.py and peer_torch_mvl.py")
    ap.add_argument("--configs", default="paper,small,large")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--wmvl", default="target/release/examples/mvl_step")
    ap.add_argument("--jax-k", default="1,10,100", help="JAX: 1 = jit per step, k > 1 = lax.scan over k steps")
    ap.add_argument("--torch", default="eager,graph", help="PyTorch modes (graph needs CUDA)")
    ap.add_argument("--vae", default="8", help="n_z values of the VAE step (empty: skip it)")
    ap.add_argument("--out", help="also write the table (markdown) here")
    a = ap.parse_args()

    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            sys.exit(f"unknown config {c!r}; use {', '.join(CONFIGS)}")
    if not os.path.exists(a.wmvl):
        sys.exit(f"{a.wmvl} not found: cargo build --release --example mvl_step (or pass --wmvl)")
    jax_peer = os.path.join(a.peers, "peer_jax_mvl.py")
    torch_peer = os.path.join(a.peers, "peer_torch_mvl.py")

    rows, notes = [], []
    for c in configs:
        # Chunks of 10 steps per wait (as JAX jit's loop), and 100 steps per submission (as
        # JAX's lax.scan over 100 steps).
        for extra in (["--path", "both"], ["--path", "fused", "--chunk", "100"]):
            r, err = run([a.wmvl, "--config", c, "--steps", str(a.steps)] + extra)
            rows += r
            if err:
                notes.append(f"wmvl {c}: {err}")

    if not configs:
        pass  # the MVL step skipped (--configs "")
    elif os.path.exists(jax_peer) and has_module("jax"):
        env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")
        r, err = run([sys.executable, jax_peer, str(a.steps), a.jax_k], env=env)
        rows += r
        if err:
            notes.append(f"jax: {err}")
    else:
        notes.append("jax: not installed (or no peer_jax_mvl.py) — not run")

    if not configs:
        pass  # the MVL step skipped
    elif os.path.exists(torch_peer) and has_module("torch"):
        device, modes = torch_modes(a)
        r, err = run([sys.executable, torch_peer, device, ",".join(modes), str(a.steps)])
        rows += r
        if err:
            notes.append(f"torch: {err}")
    else:
        notes.append("torch: not installed (or no peer_torch_mvl.py) — not run")

    # Table: one row per configuration, one column per engine/mode, then ratios to fused.
    key = lambda r: (int(r["d"]), int(r["h"]), int(r["b"]))
    names = []
    for r in rows:
        n = f"{r['engine']} {r['mode']}"
        if n not in names:
            names.append(n)
    out = ["| config (d, h, B) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    ratios = []
    for c in configs:
        cfg = CONFIGS[c]
        got = {f"{r['engine']} {r['mode']}": float(r["us"]) for r in rows if key(r) == cfg}
        out.append(f"| {c} {cfg} | " + " | ".join(f"{got[n]:.1f}" if n in got else "—" for n in names) + " |")
        fused = got.get("wmvl fused")
        if fused:
            parts = [f"{n} / fused = {got[n] / fused:.2f}" for n in names if n in got and n != "wmvl fused"]
            ratios.append(f"{c}: " + ", ".join(parts))
    device = rows[0]["device"] if rows else "?"
    lines = []
    if configs:
        targets = check_targets(rows, configs, device)
        lines = ([f"median µs per training step (SPEC §10) on {device}; same run, one engine after the other", ""]
                 + out + ["", "ratios (> 1: the other is slower than wmvl fused):"] + ratios
                 + ["", "targets (issues #17, #18):"] + targets)
    lines += vae_bench(a, notes)
    text = "\n".join(lines + ([""] + ["notes:"] + notes if notes else []))
    print()
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
