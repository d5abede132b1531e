//! Random numbers. On the device: counter-based Philox4x32-10, the same stream on the GPU
//! (`shaders/philox.wgsl`) and here; a draw is named by (seed, stream): the same pair always
//! gives the same numbers, on any device, in any order of draws. Steps replayed from a
//! recording (`gpu::Recording`) name their draws by (seed, place in the step, step) instead
//! ([`DrawName::Replayed`]), so that the device can move them on from step to step. On the host: [`HostRng`],
//! the one sequential generator (toy data, initial parameters, sampler chains, shuffles).

use rand_core::{RngCore, SeedableRng};

/// Distribution of a random fill.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist {
    /// Uniform on (lo, hi).
    Uniform { lo: f32, hi: f32 },
    /// Normal with this mean and standard deviation (Box–Muller).
    Normal { mean: f32, std: f32 },
}

impl Dist {
    pub const STANDARD_NORMAL: Dist = Dist::Normal {
        mean: 0.0,
        std: 1.0,
    };
    pub const UNIT: Dist = Dist::Uniform { lo: 0.0, hi: 1.0 };
}

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// One Philox4x32-10 block.
pub fn philox4x32(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for _ in 0..10 {
        let (hi0, lo0) = mulhilo(0xD251_1F53, c[0]);
        let (hi1, lo1) = mulhilo(0xCD9E_8D57, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [
            k[0].wrapping_add(0x9E37_79B9),
            k[1].wrapping_add(0xBB67_AE85),
        ];
    }
    c
}

/// 24 random bits to (0, 1), never 0 or 1 (as `to_unit` in the shader). The top bin's
/// centre 1 − 2⁻²⁵ is not an f32 and would round to 1.0: it is clamped to 1 − 2⁻²⁴.
pub fn to_unit(x: u32) -> f32 {
    ((x >> 8) as f32 * 5.960_464_5e-8 + 2.980_232_2e-8).min(0.999_999_94)
}

/// Counter and key words of block `t` of draw (seed, stream).
pub(crate) fn words(seed: u64, stream: u64) -> [u32; 4] {
    [
        stream as u32,
        (stream >> 32) as u32,
        seed as u32,
        (seed >> 32) as u32,
    ]
}

/// Which Philox blocks a draw takes: block t of draw (seed, stream) is counter
/// (t, stream, 0) under key seed; in a replayed step (`gpu::Recording`) the draw at place j
/// of training step s is counter (t, j, s with its top bit set) under its seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrawName {
    Stream { seed: u64, stream: u64 },
    Replayed { seed: u64, place: u32, step: u64 },
}

impl DrawName {
    /// Philox block t of this draw.
    fn block(&self, t: u32) -> [u32; 4] {
        match *self {
            DrawName::Stream { seed, stream } => {
                let w = words(seed, stream);
                philox4x32([t, w[0], w[1], 0], [w[2], w[3]])
            }
            DrawName::Replayed { seed, place, step } => {
                let w = words(seed, 0);
                let hi = (step >> 32) as u32 | 0x8000_0000;
                philox4x32([t, place, step as u32, hi], [w[2], w[3]])
            }
        }
    }
}

/// The `n` numbers of draw (seed, stream) in f64, computed as the GPU computes them
/// (uniform bits identical; the normal transform in f64).
pub fn reference_draw(n: usize, dist: Dist, seed: u64, stream: u64) -> Vec<f64> {
    reference_draw_of(n, dist, DrawName::Stream { seed, stream })
}

/// [`reference_draw`] for any [`DrawName`].
pub fn reference_draw_of(n: usize, dist: Dist, name: DrawName) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 3);
    for t in 0..n.div_ceil(4) {
        let r = name.block(t as u32);
        let u = r.map(|x| to_unit(x) as f64);
        match dist {
            Dist::Uniform { lo, hi } => {
                out.extend(u.iter().map(|&u| u * (hi - lo) as f64 + lo as f64))
            }
            Dist::Normal { mean, std } => {
                let tau = std::f64::consts::TAU;
                let (r0, r1) = ((-2.0 * u[0].ln()).sqrt(), (-2.0 * u[2].ln()).sqrt());
                let z = [
                    r0 * (tau * u[1]).cos(),
                    r0 * (tau * u[1]).sin(),
                    r1 * (tau * u[3]).cos(),
                    r1 * (tau * u[3]).sin(),
                ];
                out.extend(z.iter().map(|&z| z * std as f64 + mean as f64))
            }
        }
    }
    out.truncate(n);
    out
}

/// The `len` row indices in 0..bound of draw (seed, stream), as the GPU makes them.
pub fn reference_index(len: usize, bound: u32, seed: u64, stream: u64) -> Vec<u32> {
    reference_index_of(len, bound, DrawName::Stream { seed, stream })
}

/// [`reference_index`] for any [`DrawName`].
pub fn reference_index_of(len: usize, bound: u32, name: DrawName) -> Vec<u32> {
    let mut out = Vec::with_capacity(len + 3);
    for t in 0..len.div_ceil(4) {
        out.extend(name.block(t as u32).map(|x| mulhilo(x, bound).0));
    }
    out.truncate(len);
    out
}

/// A seed plus a running stream counter: each draw takes the next stream, so a
/// training loop gets fresh numbers every step without any host–GPU traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    pub seed: u64,
    pub stream: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { seed, stream: 0 }
    }
    /// The (seed, stream) of the next draw.
    pub fn next_draw(&mut self) -> (u64, u64) {
        self.stream += 1;
        (self.seed, self.stream)
    }
}

/// The host's random numbers: a seeded PCG64 stream with uniform and standard-normal draws.
/// Ours rather than rand_distr's: rand's value streams may change between minor versions,
/// and every seed here must give the same data, initial model and samples in every release.
pub struct HostRng {
    rng: rand_pcg::Pcg64,
    spare: Option<f64>,
}

/// SplitMix64's finaliser: a bijection of u64 that scatters nearby inputs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl HostRng {
    pub fn new(seed: u64) -> HostRng {
        HostRng {
            rng: rand_pcg::Pcg64::seed_from_u64(seed),
            spare: None,
        }
    }

    /// Stream `k` of `seed` (one per sampler chain, say). Hashed rather than using PCG's
    /// stream parameter, whose streams from one state are known to be correlated.
    pub fn for_stream(seed: u64, k: u64) -> HostRng {
        HostRng::new(mix(seed ^ mix(k.wrapping_add(0x9e37_79b9_7f4a_7c15))))
    }

    /// Uniform on [0, 1), 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal by Box–Muller: with u₁ ∈ (0, 1], u₂ ∈ [0, 1),
    /// z₁ = √(−2 ln u₁) cos(2πu₂), z₂ = √(−2 ln u₁) sin(2πu₂) (z₂ kept for the next call).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}
