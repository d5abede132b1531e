//! FID with the shipped classifier's features (src/lenet.rs, src/fid.rs) on real digits:
//! held-out digits against training digits score near the floor that sampling alone gives,
//! and the score grows monotonically as the images are blurred or noised (issue: "How we will
//! know").

use std::sync::OnceLock;

use wmvl::fid::{fid, sym_eigen, Gaussian};
use wmvl::gpu::Gpu;
use wmvl::lenet::{LeNet, FEATURES};
use wmvl::mnist::{load_dir, Mnist};
use wmvl::rng::HostRng;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

fn data() -> &'static Mnist {
    static DATA: OnceLock<Mnist> = OnceLock::new();
    DATA.get_or_init(|| load_dir(std::path::Path::new("data/mnist10k")).unwrap())
}

/// Box blur of radius r (a (2r+1)² mean, clipped at the border) of 28 × 28 images.
fn blur(images: &[f32], r: usize) -> Vec<f32> {
    let mut out = vec![0.0; images.len()];
    for (img, dst) in images.chunks(784).zip(out.chunks_mut(784)) {
        for y in 0..28usize {
            for x in 0..28usize {
                let (mut s, mut n) = (0.0, 0.0);
                for yy in y.saturating_sub(r)..(y + r + 1).min(28) {
                    for xx in x.saturating_sub(r)..(x + r + 1).min(28) {
                        s += img[yy * 28 + xx];
                        n += 1.0;
                    }
                }
                dst[y * 28 + x] = s / n;
            }
        }
    }
    out
}

/// Gaussian pixel noise of standard deviation `s`, clipped to [0, 1].
fn noise(images: &[f32], s: f64, seed: u64) -> Vec<f32> {
    let mut rng = HostRng::new(seed);
    images
        .iter()
        .map(|&v| (v as f64 + s * rng.normal()).clamp(0.0, 1.0) as f32)
        .collect()
}

/// The FID expected between two sets of n samples of one Gaussian with covariance
/// eigenvalues λ (sampling alone; rotation-invariant, so the diagonal formula of
/// tests/fid.rs applies in the eigenbasis): 2·Σλ/n + Σᵢⱼ(λᵢλⱼ + δᵢⱼλᵢ²)/((n − 1)(λᵢ + λⱼ)).
fn sampling_floor(lambda: &[f64], n: usize) -> f64 {
    let n = n as f64;
    let mut s = 2.0 * lambda.iter().sum::<f64>() / n;
    for (i, &a) in lambda.iter().enumerate() {
        for (j, &b) in lambda.iter().enumerate() {
            if a + b > 0.0 {
                s += (a * b + if i == j { a * a } else { 0.0 }) / ((n - 1.0) * (a + b));
            }
        }
    }
    s
}

#[test]
fn fid_is_near_zero_for_real_digits_and_grows_as_they_degrade() {
    let g = gpu();
    let m = data();
    let net = LeNet::load(g, std::path::Path::new("data/lenet-mnist10k.safetensors")).unwrap();
    let n = 1000;
    let held = net.features(&m.test.data[..n * 784], n).unwrap();
    let score =
        |images: &[f32]| fid(&net.features(images, n).unwrap(), n, &held, n, FEATURES).unwrap();
    // Real training digits, disjoint from the held-out ones: only sampling separates them.
    let base = &m.train.data[..n * 784];
    let real_b = score(&m.train.data[n * 784..2 * n * 784]);
    let blurred: Vec<f64> = [0, 1, 2, 3]
        .iter()
        .map(|&r| score(&blur(base, r)))
        .collect();
    let noised: Vec<f64> = [0.0, 0.1, 0.2, 0.4]
        .iter()
        .map(|&s| score(&noise(base, s, 5)))
        .collect();
    let cov = Gaussian::fit(&held, n, FEATURES).unwrap().cov;
    let (lambda, _) = sym_eigen(&cov, FEATURES).unwrap();
    let lambda: Vec<f64> = lambda.iter().map(|l| l.max(0.0)).collect();
    let floor = sampling_floor(&lambda, n);
    eprintln!(
        "FID: training digits {:.3} / {real_b:.3} (sampling alone: {floor:.3}); blur r = 0..3: {blurred:?}; noise σ = 0, 0.1, 0.2, 0.4: {noised:?}",
        blurred[0]
    );
    // "Near zero": real digits score what finite samples of one distribution score.
    for real in [blurred[0], real_b] {
        assert!(
            real > 0.5 * floor && real < 2.0 * floor,
            "real digits score {real:.3}, sampling alone {floor:.3}"
        );
    }
    for (what, v) in [("blur", &blurred), ("noise", &noised)] {
        assert!(
            v.windows(2).all(|w| w[1] > w[0]),
            "{what}: FID should grow with the degradation: {v:?}"
        );
    }
}
