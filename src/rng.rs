//! Counter-based random numbers: Philox4x32-10, the same stream on the GPU
//! (`shaders/philox.wgsl`) and here. A draw is named by (seed, stream): the same pair
//! always gives the same numbers, on any device, in any order of draws.

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

/// The `n` numbers of draw (seed, stream) in f64, computed as the GPU computes them
/// (uniform bits identical; the normal transform in f64).
pub fn reference_draw(n: usize, dist: Dist, seed: u64, stream: u64) -> Vec<f64> {
    let w = words(seed, stream);
    let mut out = Vec::with_capacity(n + 3);
    for t in 0..n.div_ceil(4) {
        let r = philox4x32([t as u32, w[0], w[1], 0], [w[2], w[3]]);
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
    let w = words(seed, stream);
    let mut out = Vec::with_capacity(len + 3);
    for t in 0..len.div_ceil(4) {
        let r = philox4x32([t as u32, w[0], w[1], 0], [w[2], w[3]]);
        out.extend(r.map(|x| mulhilo(x, bound).0));
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
