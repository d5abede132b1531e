//! The Fréchet distance between two Gaussians, exactly, in f64 on the CPU: the statistic
//! behind FID (Fréchet Inception Distance; Heusel et al. 2017), here fed with features of a
//! small MNIST classifier instead of Inception's.
//!
//! FD(N(μ₁, Σ₁), N(μ₂, Σ₂)) = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}).
//!
//! Σ₁Σ₂ is not symmetric, and the usual general-matrix square root (scipy's `sqrtm` in
//! pytorch-fid) can return complex round-off or fail on singular covariances. Instead we use
//! that Σ₁Σ₂ = S₁⁻¹(S₁Σ₂S₁)S₁ with S₁ = Σ₁^{1/2} (for singular Σ₁ by continuity), so
//! Σ₁Σ₂ is similar to the symmetric PSD matrix M = S₁Σ₂S₁ and
//! Tr (Σ₁Σ₂)^{1/2} = Tr M^{1/2} = Σᵢ √λᵢ(M). Everything then reduces to symmetric
//! eigenproblems, solved by cyclic Jacobi ([`sym_eigen`]).
//!
//! # Accuracy
//!
//! Jacobi is backward stable: the computed eigenpairs are exact for A + E with
//! ‖E‖ ≈ d·ε·‖A‖ (ε = 2⁻⁵²), and the eigenvectors are orthonormal to about the same
//! (tests/fid.rs measures ‖A − VΛVᵀ‖/‖A‖ and ‖VᵀV − I‖ at round-off, ≲ 1e-14 at d = 50).
//! For the distance, full-rank, well-conditioned covariances give FD to a few d·ε relative
//! to Tr Σ₁ + Tr Σ₂. Rank-deficient covariances lose more: an eigenvalue that is 0 in exact
//! arithmetic comes out as ±d·ε·‖M‖, and its square root as up to √(d·ε·‖M‖), so each
//! missing direction may add ~1e-7·√‖M‖ to the trace term (the √ε floor of any matrix square
//! root; more samples than dimensions avoids it).
//!
//! # Reference
//!
//! M. Heusel, H. Ramsauer, T. Unterthiner, B. Nessler, S. Hochreiter (2017), GANs trained by
//! a two time-scale update rule converge to a local Nash equilibrium, NeurIPS; D. C. Dowson,
//! B. V. Landau (1982), The Fréchet distance between multivariate normal distributions;
//! J. Demmel, K. Veselić (1992), Jacobi's method is more accurate than QR.

use std::ops::Range;

use crate::error::{Error, Result};

/// A Gaussian N(mean, cov) in `dim` dimensions, as fitted from `n` samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    pub mean: Vec<f64>,
    /// dim × dim, row-major, symmetric positive semi-definite.
    pub cov: Vec<f64>,
    pub dim: usize,
    /// The number of samples it was fitted from; 0 for one given by its parameters.
    pub n: usize,
}

/// Rows summed sequentially at the leaves of the pairwise sums: long enough to amortise the
/// recursion, short enough that a leaf's round-off (≤ LEAF·ε relative) stays negligible.
const LEAF_ROWS: usize = 128;

impl Gaussian {
    /// A Gaussian given by its parameters (`n` = 0); refuses shapes that do not fit and
    /// non-finite values. Positive semi-definiteness is checked where it is used.
    pub fn new(mean: Vec<f64>, cov: Vec<f64>) -> Result<Gaussian> {
        let g = Gaussian {
            dim: mean.len(),
            mean,
            cov,
            n: 0,
        };
        g.validate()?;
        Ok(g)
    }

    /// Mean and unbiased covariance (divided by n − 1) of `rows` samples of dimension `dim`,
    /// stored row after row in `features`.
    ///
    /// Two passes: the mean first, then the cross products of the *centred* samples, because
    /// the one-pass `E(xxᵀ) − E(x)E(x)ᵀ` loses all digits when the mean is large compared with
    /// the spread. Both sums are pairwise (over blocks of rows), so their round-off grows like
    /// log n rather than n.
    pub fn fit(features: &[f64], rows: usize, dim: usize) -> Result<Gaussian> {
        check_features(features, rows, dim)?;
        let mut mean = pairwise_sum(0..rows, dim, &|range, out| {
            add_rows(features, dim, range, out)
        });
        for m in &mut mean {
            *m /= rows as f64;
        }
        let mut cov = pairwise_sum(0..rows, dim * dim, &|range, out| {
            add_centred_cross_products(features, &mean, range, out)
        });
        let scale = 1.0 / (rows - 1) as f64;
        for i in 0..dim {
            for j in i..dim {
                let v = cov[i * dim + j] * scale;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        Ok(Gaussian {
            mean,
            cov,
            dim,
            n: rows,
        })
    }

    /// Shapes fit and every parameter is finite.
    fn validate(&self) -> Result<()> {
        if self.mean.len() != self.dim {
            return Err(Error::Shape(format!(
                "Gaussian: mean has {} entries for dimension {}",
                self.mean.len(),
                self.dim
            )));
        }
        if Some(self.cov.len()) != self.dim.checked_mul(self.dim) {
            return Err(Error::Shape(format!(
                "Gaussian: covariance has {} entries, a {d}×{d} matrix needs {}",
                self.cov.len(),
                self.dim * self.dim,
                d = self.dim
            )));
        }
        if self.mean.iter().chain(&self.cov).any(|v| !v.is_finite()) {
            return Err(Error::Invalid(
                "Gaussian: mean or covariance has a NaN or infinite entry".into(),
            ));
        }
        Ok(())
    }
}

/// Refuse what `Gaussian::fit` cannot fit, saying which row and column is bad.
fn check_features(features: &[f64], rows: usize, dim: usize) -> Result<()> {
    if dim == 0 {
        return Err(Error::Shape("Gaussian::fit: feature dimension is 0".into()));
    }
    if rows.checked_mul(dim) != Some(features.len()) {
        return Err(Error::Shape(format!(
            "Gaussian::fit: {} feature values are not {rows} rows × {dim} columns",
            features.len()
        )));
    }
    if rows < 2 {
        return Err(Error::Invalid(format!(
            "Gaussian::fit: the unbiased covariance needs at least 2 rows, got {rows}"
        )));
    }
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "Gaussian::fit: feature value {} at row {}, column {} is not finite",
            features[i],
            i / dim,
            i % dim
        )));
    }
    Ok(())
}

/// Σ over the rows in `rows` of `leaf`'s per-block sums (vectors of `width`), combined as a
/// balanced binary tree so round-off grows with the tree's depth, not the number of rows.
fn pairwise_sum(
    rows: Range<usize>,
    width: usize,
    leaf: &dyn Fn(Range<usize>, &mut [f64]),
) -> Vec<f64> {
    if rows.len() <= LEAF_ROWS {
        let mut out = vec![0.0; width];
        leaf(rows, &mut out);
        return out;
    }
    let mid = rows.start + rows.len() / 2;
    let mut left = pairwise_sum(rows.start..mid, width, leaf);
    let right = pairwise_sum(mid..rows.end, width, leaf);
    for (l, r) in left.iter_mut().zip(&right) {
        *l += r;
    }
    left
}

/// out += the rows `range` of the row-major `x` (row length `dim`).
fn add_rows(x: &[f64], dim: usize, range: Range<usize>, out: &mut [f64]) {
    for row in x[range.start * dim..range.end * dim].chunks_exact(dim) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// out (dim × dim) += Σ (x_r − mean)(x_r − mean)ᵀ over the rows `range`, upper triangle only
/// (the caller mirrors it).
fn add_centred_cross_products(x: &[f64], mean: &[f64], range: Range<usize>, out: &mut [f64]) {
    let dim = mean.len();
    let mut c = vec![0.0; dim];
    for row in x[range.start * dim..range.end * dim].chunks_exact(dim) {
        for ((ci, v), m) in c.iter_mut().zip(row).zip(mean) {
            *ci = v - m;
        }
        for i in 0..dim {
            let ci = c[i];
            for (o, cj) in out[i * dim + i..(i + 1) * dim].iter_mut().zip(&c[i..]) {
                *o += ci * cj;
            }
        }
    }
}

/// Jacobi gives up after this many sweeps. It converges quadratically once the off-diagonal
/// part is small; 9–16 sweeps are typical for d ≤ 256, so reaching this is a bug.
const MAX_SWEEPS: usize = 100;

/// The eigen-decomposition A = V diag(λ) Vᵀ of a symmetric d × d matrix (row-major), by cyclic
/// Jacobi rotations. Returns (λ ascending, V row-major with the eigenvectors as columns:
/// V[i·d + k] is component i of eigenvector k).
///
/// A rotation zeroes one off-diagonal entry a_pq; a sweep visits every p < q once (in
/// round-robin order, see `jacobi`). An entry
/// is left alone once |a_pq| ≤ ε·√(|a_pp|·|a_qq|) (Demmel–Veselić's test, which keeps small
/// eigenvalues of positive definite matrices accurate to nearly full relative precision) or
/// |a_pq| ≤ ε²·‖A‖_F (far below the input's own round-off, so sweeps stop even when diagonal
/// entries are exactly zero); the iteration stops after a sweep that rotates nothing.
/// Accuracy: backward stable, ‖A − VΛVᵀ‖ and ‖VᵀV − I‖ are a small multiple of d·ε·‖A‖
/// (measured in tests/fid.rs: ~2e-15 at d = 50, ~4e-15 at d = 256). Cost: about 9·d³ flops
/// per sweep with vectors (6·d³ without), and 9–16 sweeps up to d = 256 (the last ones rotate
/// little): ~0.15 s at d = 256 on one core of the 2-core development machine.
///
/// The matrix must be symmetric up to round-off (|a_ij − a_ji| ≤ 1e-8·max|a|); its symmetric
/// part is decomposed. Refuses a wrong length, NaN/Inf, or a clearly asymmetric matrix.
pub fn sym_eigen(a: &[f64], d: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut m = symmetric_part(a, d, "sym_eigen")?;
    let mut vt = vec![0.0; d * d];
    for i in 0..d {
        vt[i * d + i] = 1.0;
    }
    jacobi(&mut m, d, Some(&mut vt))?;
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&i, &j| m[i * d + i].total_cmp(&m[j * d + j]));
    let values = order.iter().map(|&k| m[k * d + k]).collect();
    // vt holds the eigenvectors as rows; transpose into columns in ascending order.
    let mut vectors = vec![0.0; d * d];
    for (col, &k) in order.iter().enumerate() {
        for i in 0..d {
            vectors[i * d + col] = vt[k * d + i];
        }
    }
    Ok((values, vectors))
}

/// The eigenvalues of a symmetric matrix, in no particular order (Jacobi without vectors).
fn sym_eigenvalues(a: &[f64], d: usize, what: &str) -> Result<Vec<f64>> {
    let mut m = symmetric_part(a, d, what)?;
    jacobi(&mut m, d, None)?;
    Ok((0..d).map(|i| m[i * d + i]).collect())
}

/// (A + Aᵀ)/2, after checking A's length, finiteness and symmetry up to round-off.
fn symmetric_part(a: &[f64], d: usize, what: &str) -> Result<Vec<f64>> {
    if d.checked_mul(d) != Some(a.len()) {
        return Err(Error::Shape(format!(
            "{what}: {} entries do not make a {d}×{d} matrix",
            a.len()
        )));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "{what}: the matrix has a NaN or infinite entry"
        )));
    }
    let scale = a.iter().fold(0.0f64, |s, v| s.max(v.abs()));
    let mut m = a.to_vec();
    for i in 0..d {
        for j in i + 1..d {
            let (x, y) = (a[i * d + j], a[j * d + i]);
            if (x - y).abs() > 1e-8 * scale {
                return Err(Error::Invalid(format!(
                    "{what}: the matrix is not symmetric: a[{i}][{j}] = {x:e} but a[{j}][{i}] = {y:e}"
                )));
            }
            let s = 0.5 * (x + y);
            m[i * d + j] = s;
            m[j * d + i] = s;
        }
    }
    Ok(m)
}

/// One Jacobi rotation J in the (p, q) plane, p < q, chosen to zero a_pq of JᵀAJ.
struct Rotation {
    p: usize,
    q: usize,
    /// tan θ; the new diagonal is a_pp − t·a_pq, a_qq + t·a_pq.
    t: f64,
    s: f64,
    /// s/(1 + c): the updates are written as corrections to limit round-off (Rutishauser).
    tau: f64,
}

impl Rotation {
    /// The rotation for the (p, q) entry of the symmetric `m`, or None when a_pq is already
    /// negligible (see [`sym_eigen`] for the test).
    fn plan(m: &[f64], d: usize, p: usize, q: usize, floor: f64) -> Option<Rotation> {
        let apq = m[p * d + q];
        let (app, aqq) = (m[p * d + p], m[q * d + q]);
        if apq.abs() <= f64::EPSILON * app.abs().sqrt() * aqq.abs().sqrt() || apq.abs() <= floor {
            return None;
        }
        // The smaller of the two angles that zero a_pq (|θ| ≤ π/4), overflow-safe.
        let theta = (aqq - app) / (2.0 * apq);
        let t = theta.signum() / (theta.abs() + theta.hypot(1.0));
        let c = 1.0 / t.hypot(1.0);
        let s = t * c;
        Some(Rotation {
            p,
            q,
            t,
            s,
            tau: s / (1.0 + c),
        })
    }
}

/// Cyclic Jacobi on the symmetric row-major `m`, in place: on return its diagonal holds the
/// eigenvalues. With `vt`, the rotations are also applied to its rows (start from I to get
/// the eigenvectors as rows). See [`sym_eigen`] for the stopping rule.
///
/// The pairs are visited in round-robin ("tournament") order: each round is d/2 disjoint
/// pairs, whose rotations commute, so a round is applied as one pass over the rows and one
/// over the columns. That touches memory in order, where rotating one pair at a time would
/// write columns p and q with stride d (measured 2.3× slower at d = 256).
fn jacobi(m: &mut [f64], d: usize, mut vt: Option<&mut [f64]>) -> Result<()> {
    let floor = f64::EPSILON.powi(2) * m.iter().map(|v| v * v).sum::<f64>().sqrt();
    // An odd d gets a dummy player; its partner sits the round out.
    let players = d + d % 2;
    let mut order: Vec<usize> = (0..players).collect();
    let mut round = Vec::with_capacity(players / 2);
    for _ in 0..MAX_SWEEPS {
        let mut rotated = false;
        for _ in 1..players {
            round.clear();
            for i in 0..players / 2 {
                let (a, b) = (order[i], order[players - 1 - i]);
                let (p, q) = (a.min(b), a.max(b));
                if q < d {
                    round.extend(Rotation::plan(m, d, p, q, floor));
                }
            }
            if !round.is_empty() {
                rotated = true;
                apply_round(m, d, &round);
                if let Some(vt) = vt.as_deref_mut() {
                    for r in &round {
                        rotate_rows(vt, d, r.p, r.q, r.s, r.tau);
                    }
                }
            }
            // Everyone but the first player moves one seat: the next round's pairs.
            order[1..].rotate_right(1);
        }
        if !rotated {
            return Ok(());
        }
    }
    Err(Error::Invalid(format!(
        "sym_eigen: Jacobi did not converge in {MAX_SWEEPS} sweeps at d = {d} (a wmvl bug, \
         please report it)"
    )))
}

/// m ← JᵀmJ for the product J of the disjoint rotations in `round`: rows first, then
/// columns, then each 2 × 2 block set to its exact diagonal form.
fn apply_round(m: &mut [f64], d: usize, round: &[Rotation]) {
    let blocks: Vec<(f64, f64, f64)> = round
        .iter()
        .map(|r| (m[r.p * d + r.p], m[r.q * d + r.q], m[r.p * d + r.q]))
        .collect();
    for r in round {
        rotate_rows(m, d, r.p, r.q, r.s, r.tau);
    }
    for row in m.chunks_exact_mut(d) {
        for r in round {
            let (g, h) = (row[r.p], row[r.q]);
            row[r.p] = g - r.s * (h + g * r.tau);
            row[r.q] = h + r.s * (g - h * r.tau);
        }
    }
    for (r, &(app, aqq, apq)) in round.iter().zip(&blocks) {
        m[r.p * d + r.p] = app - r.t * apq;
        m[r.q * d + r.q] = aqq + r.t * apq;
        m[r.p * d + r.q] = 0.0;
        m[r.q * d + r.p] = 0.0;
    }
}

/// Rows p < q of the row-major `m` (row length d) ← the plane rotation by (c, s), written
/// with τ = s/(1 + c): r_p ← r_p − s(r_q + τ r_p), r_q ← r_q + s(r_p − τ r_q).
fn rotate_rows(m: &mut [f64], d: usize, p: usize, q: usize, s: f64, tau: f64) {
    let (head, tail) = m.split_at_mut(q * d);
    let rp = &mut head[p * d..(p + 1) * d];
    let rq = &mut tail[..d];
    for (x, y) in rp.iter_mut().zip(rq.iter_mut()) {
        let (g, h) = (*x, *y);
        *x = g - s * (h + g * tau);
        *y = h + s * (g - h * tau);
    }
}

/// Refuse eigenvalues of a PSD matrix that are negative beyond round-off: below
/// −√ε·max|λ|, far more than the ~d·ε·max|λ| that rounding produces.
fn check_psd(values: &[f64], what: &str) -> Result<()> {
    let scale = values.iter().fold(0.0f64, |s, v| s.max(v.abs()));
    let tol = f64::EPSILON.sqrt() * scale;
    match values.iter().copied().find(|&v| v < -tol) {
        Some(v) => Err(Error::Invalid(format!(
            "{what}: not positive semi-definite (eigenvalue {v:e}, largest magnitude {scale:e})"
        ))),
        None => Ok(()),
    }
}

/// The symmetric PSD square root S = V diag(√λ) Vᵀ of a symmetric PSD d × d matrix
/// (row-major), S·S = A.
///
/// Eigenvalues are clipped at 0 first: those of a singular or nearly singular PSD matrix
/// come out of any eigensolver as tiny values of either sign (±d·ε·‖A‖ from round-off), and
/// √ of a negative one would be NaN. Eigenvalues negative beyond round-off (< −√ε·max|λ|)
/// mean the input is not PSD and are refused.
pub fn sqrtm_psd(a: &[f64], d: usize) -> Result<Vec<f64>> {
    let (values, vectors) = sym_eigen(a, d)?;
    check_psd(&values, "sqrtm_psd")?;
    // S = W Wᵀ with W = V diag(λ^¼): symmetric by construction.
    let quarter: Vec<f64> = values.iter().map(|v| v.max(0.0).sqrt().sqrt()).collect();
    let mut w = vectors;
    for row in w.chunks_exact_mut(d.max(1)) {
        for (x, q) in row.iter_mut().zip(&quarter) {
            *x *= q;
        }
    }
    Ok(gram(&w, d))
}

/// W Wᵀ for a row-major d × d W (dot products of rows, mirrored).
fn gram(w: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for j in i..d {
            let wi = &w[i * d..(i + 1) * d];
            let wj = &w[j * d..(j + 1) * d];
            let v: f64 = wi.iter().zip(wj).map(|(x, y)| x * y).sum();
            out[i * d + j] = v;
            out[j * d + i] = v;
        }
    }
    out
}

/// C = A·B for row-major d × d matrices.
fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        let ci = &mut c[i * d..(i + 1) * d];
        for k in 0..d {
            let aik = a[i * d + k];
            for (x, y) in ci.iter_mut().zip(&b[k * d..(k + 1) * d]) {
                *x += aik * y;
            }
        }
    }
    c
}

/// Tr (Σ₁Σ₂)^{1/2} as Tr (S₁Σ₂S₁)^{1/2} = Σ √λᵢ(S₁Σ₂S₁), S₁ = Σ₁^{1/2} (see the module
/// docs); also returns ‖S₁Σ₂S₁‖_F for the round-off bound.
fn trace_sqrt_product(cov1: &[f64], cov2: &[f64], d: usize) -> Result<(f64, f64)> {
    let s1 = sqrtm_psd(cov1, d).map_err(|e| context(e, "covariance 1"))?;
    let mut m = matmul(&matmul(&s1, cov2, d), &s1, d);
    // Exactly symmetric in exact arithmetic; average away the round-off asymmetry.
    for i in 0..d {
        for j in i + 1..d {
            let s = 0.5 * (m[i * d + j] + m[j * d + i]);
            m[i * d + j] = s;
            m[j * d + i] = s;
        }
    }
    let norm = m.iter().map(|v| v * v).sum::<f64>().sqrt();
    let values = sym_eigenvalues(&m, d, "frechet_distance")?;
    // M is PSD exactly when Σ₂ is (S₁ being symmetric): a clearly negative λ means Σ₂ is not.
    check_psd(&values, "frechet_distance: covariance 2")?;
    Ok((values.iter().map(|v| v.max(0.0).sqrt()).sum(), norm))
}

/// Prefix an error's message with which argument it is about.
fn context(e: Error, what: &str) -> Error {
    match e {
        Error::Invalid(m) => Error::Invalid(format!("frechet_distance: {what}: {m}")),
        Error::Shape(m) => Error::Shape(format!("frechet_distance: {what}: {m}")),
        other => other,
    }
}

/// The Fréchet (2-Wasserstein²) distance between N(a.mean, a.cov) and N(b.mean, b.cov):
/// ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁Σ₂)^{1/2}.
///
/// It is ≥ 0 exactly, but computed as a difference of traces it can come out slightly
/// negative for (near-)equal Gaussians. A value ≥ −r is returned as max(0, FD), where r
/// bounds the round-off: 2·d·√(d·ε·‖M‖_F) for the square roots of M = S₁Σ₂S₁'s eigenvalues
/// (each known to ±d·ε·‖M‖, whose square root is the dominant error for eigenvalues near
/// 0) plus 16·d·ε·(Tr Σ₁ + Tr Σ₂ + ‖μ₁ − μ₂‖²) for the sums. Anything more negative is
/// an error, as are mismatched dimensions and covariances that are not PSD.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    a.validate().map_err(|e| context(e, "first Gaussian"))?;
    b.validate().map_err(|e| context(e, "second Gaussian"))?;
    if a.dim != b.dim {
        return Err(Error::Shape(format!(
            "frechet_distance: the Gaussians have dimensions {} and {}",
            a.dim, b.dim
        )));
    }
    let d = a.dim;
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let trace = |c: &[f64]| (0..d).map(|i| c[i * d + i]).sum::<f64>();
    let (tr1, tr2) = (trace(&a.cov), trace(&b.cov));
    let (tr_sqrt, m_norm) = trace_sqrt_product(&a.cov, &b.cov, d)?;
    let fd = mean_term + tr1 + tr2 - 2.0 * tr_sqrt;
    if fd >= 0.0 {
        return Ok(fd);
    }
    let eps = f64::EPSILON;
    let n = d as f64;
    let round_off = 2.0 * n * (n * eps * m_norm).sqrt() + 16.0 * n * eps * (tr1 + tr2 + mean_term);
    if fd >= -round_off {
        Ok(0.0)
    } else {
        Err(Error::Invalid(format!(
            "frechet_distance: came out as {fd:e}, negative beyond round-off ({round_off:e}); \
             are the covariances positive semi-definite?"
        )))
    }
}

/// FID-style convenience: fit a Gaussian to each feature set (row-major, `dim` columns) and
/// return their Fréchet distance.
pub fn fid(
    features_a: &[f64],
    rows_a: usize,
    features_b: &[f64],
    rows_b: usize,
    dim: usize,
) -> Result<f64> {
    let a = Gaussian::fit(features_a, rows_a, dim)?;
    let b = Gaussian::fit(features_b, rows_b, dim)?;
    frechet_distance(&a, &b)
}
