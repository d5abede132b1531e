// The fused MVL step (SPEC §2, paper §3.2) for the score-net energy E(y) = ⟨ỹ, ψ(ỹ)⟩ (ỹ = s·y,
// and for a conditional energy ỹ = [s·y, c]): declarations and helpers shared by every fused
// kernel. src/fused/mod.rs explains the streams and lists the kernels of each shape; every
// kernel's module is a generated header (the structs of src/fused/seam.rs and this plan's
// values of them as `const`s: IO, M, LAYERS, …) + these files + its matmul cores.
//
// Notation per sample (a row): a₀ = ỹ, z_l = a_{l−1}·W̃_l + b_l, a_l = f(z_l) for the hidden
// layers l < L, ψ = z_L; W̃ = W/σ on spectrally normalised layers. Streams in `ws` are
// (IO.rows, width) row-major blocks at the offsets of IO and LAYERS.

// Bindings. Every kernel of a step binds the same buffers, once (FusedMvl::bind).
@group(0) @binding(0) var<uniform> st: StepParams;
@group(0) @binding(1) var<storage, read> data: array<f32>;        // data rows (dw wide)
@group(0) @binding(2) var<storage, read_write> theta: array<f32>;  // W₁, b₁, W₂, … packed
@group(0) @binding(3) var<storage, read_write> sn: array<f32>;     // u, u_new, v, σ per normalised layer
@group(0) @binding(4) var<storage, read_write> ws: array<f32>;     // streams, partial sums, gradient
@group(0) @binding(5) var<storage, read_write> s1: array<f32>;     // optimiser state
@group(0) @binding(6) var<storage, read_write> s2: array<f32>;
@group(0) @binding(7) var<storage, read> given: array<f32>;       // given noise (one row per data row)
@group(0) @binding(8) var<storage, read_write> ctl: array<u32>;    // step counter, loss ring (ctl.rs)
@group(0) @binding(9) var<storage, read> cond: array<f32>;        // condition rows (conditional energy)

const NONE: u32 = 0xffffffffu;

// 1/σ of layer l as stored in sn (1 without spectral norm).
fn inv_sigma(l: Layer) -> f32 {
    if (l.sigma == NONE) { return 1.0; }
    return 1.0 / sn[l.sigma];
}

fn act(x: f32) -> f32 { return fun(M.act, 0u, x); }
fn act1(x: f32) -> f32 { return fun(M.act, 1u, x); }
fn act2(x: f32) -> f32 { return fun(M.act, 2u, x); }

// σ(z+h) − σ(z) = σ(z+h)·σ(−z)·(1 − e^(−h)): no cancellation for any z, h.
fn dsig(z: f32, h: f32) -> f32 {
    return -sigmoid(z + h) * sigmoid(-z) * expm1_acc(-h);
}

// log(1 + y) for y > −1, accurate for small |y| (2·atanh(y/(2+y)) as a series).
fn log1p_acc(y: f32) -> f32 {
    if (abs(y) < 0.25) {
        let s = y / (2.0 + y);
        let q = s * s;
        return 2.0 * s * (1.0 + q * (0.33333333 + q * (0.2 + q * (0.14285714 + q * 0.11111111))));
    }
    return log(1.0 + y);
}

// f(z+h) − f(z) computed as a difference, not by subtracting (SPEC §2, "Precision").
fn dact(z: f32, h: f32) -> f32 {
    switch M.act {
        case 0u: { return h * sigmoid(z + h) + z * dsig(z, h); }          // swish
        case 1u: { return 2.0 * dsig(2.0 * z, 2.0 * h); }                 // tanh = 2σ(2x) − 1
        case 2u: { return dsig(z, h); }                                   // sigmoid
        default: {                                                        // softplus
            return log1p_acc(sigmoid(z) * expm1_acc(h));
        }
    }
}

// f′(z+h) − f′(z), likewise.
fn dact1(z: f32, h: f32) -> f32 {
    let s0 = sigmoid(z);
    switch M.act {
        case 0u: { // f′ = σ(1 + x(1 − σ))
            let s1 = sigmoid(z + h);
            let ds = dsig(z, h);
            return ds + h * s1 * (1.0 - s1) + z * ds * (1.0 - s1 - s0);
        }
        case 1u: { // f′ = 1 − t², Δf′ = −Δt·(t₁ + t₀)
            let t0 = tanh(z);
            let t1 = tanh(z + h);
            return -2.0 * dsig(2.0 * z, 2.0 * h) * (t1 + t0);
        }
        case 2u: { // f′ = σ(1 − σ)
            let s1 = sigmoid(z + h);
            return dsig(z, h) * (1.0 - s1 - s0);
        }
        default: { return dsig(z, h); } // softplus′ = σ
    }
}
