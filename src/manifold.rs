//! The spaces data live in, behind one interface (SPEC §5): Euclidean space R^d; the sphere
//! S^n ⊂ R^(n+1) through stereographic charts with the hemisphere flip; hyperbolic space H^n
//! as the Poincaré ball (one global chart). Both curved charts are conformal — g = c(r)·I
//! with r = ‖x‖² — so a chart is described by c, its derivative and the embedding.
//!
//! Data are stored in *chart form*, computed once on the host in f64: for the sphere a row
//! [x₁ … x_n, σ], the chart point and the chart's sign σ = 1 − 2f (f = 1 on the southern
//! hemisphere), which each sample keeps during its step; for the ball the point itself; for
//! R^d the point itself. The energy network always sees embedded points y(x): the unit vector
//! for S^n; for H^n the point of the hyperboloid model in R^(n+1),
//! y = (2x/(1 − r), (1 + r)/(1 − r)), which grows without bound towards the ball's boundary —
//! so that an energy such as a·y_last can beat the infinite Riemannian volume there and
//! exp(−E) can be normalised (an energy of the bounded ball coordinates never is).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tape::Var;

/// Where data live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Manifold {
    #[default]
    Euclidean,
    /// S^n, data as unit vectors in R^(n+1).
    Sphere,
    /// H^n as the Poincaré ball: data as points of the open unit ball in R^n.
    Hyperbolic,
}

/// How far a sphere point may be from unit norm before it is refused (it is renormalised).
const UNIT_TOL: f64 = 1e-3;

impl Manifold {
    pub const NAMES: [&'static str; 3] = ["euclidean", "sphere", "hyperbolic"];

    pub fn from_name(s: &str) -> Result<Manifold> {
        match s {
            "euclidean" => Ok(Manifold::Euclidean),
            "sphere" => Ok(Manifold::Sphere),
            "hyperbolic" => Ok(Manifold::Hyperbolic),
            _ => Err(Error::Invalid(format!(
                "unknown manifold {s:?}; use {}",
                Manifold::NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Manifold::Euclidean => "euclidean",
            Manifold::Sphere => "sphere",
            Manifold::Hyperbolic => "hyperbolic",
        }
    }

    /// The model's input width for data with `cols` columns (H^n: one more, the hyperboloid).
    pub fn model_dim(self, cols: usize) -> usize {
        match self {
            Manifold::Hyperbolic => cols + 1,
            _ => cols,
        }
    }

    /// The model's input for a data point (see the module docs).
    pub fn model_input(self, p: &[f64]) -> Vec<f64> {
        match self {
            Manifold::Hyperbolic => {
                let r: f64 = p.iter().map(|v| v * v).sum();
                let mut y: Vec<f64> = p.iter().map(|v| 2.0 * v / (1.0 - r)).collect();
                y.push((1.0 + r) / (1.0 - r));
                y
            }
            _ => p.to_vec(),
        }
    }

    /// Intrinsic dimension n (chart coordinates) of data with `embedded` columns.
    pub fn chart_dim(self, embedded: usize) -> usize {
        match self {
            Manifold::Sphere => embedded.saturating_sub(1),
            _ => embedded,
        }
    }

    /// One embedded row y → its chart form (see the module docs). Refuses points off the
    /// manifold, naming the problem; sphere points within 1e-3 of unit norm are renormalised.
    pub fn to_chart(self, y: &[f64]) -> Result<Vec<f64>> {
        let norm2: f64 = y.iter().map(|v| v * v).sum();
        match self {
            Manifold::Euclidean => Ok(y.to_vec()),
            Manifold::Sphere => {
                if y.len() < 2 {
                    return Err(Error::Shape(
                        "sphere data need at least 2 columns (S¹ ⊂ R²)".into(),
                    ));
                }
                let norm = norm2.sqrt();
                if (norm - 1.0).abs() > UNIT_TOL {
                    return Err(Error::Invalid(format!(
                        "a point of norm {norm:.6} is not on the unit sphere (tolerance {UNIT_TOL}); normalise the data"
                    )));
                }
                // Flip to the northern hemisphere: the chart point then lies in the closed
                // unit ball, where the stereographic metric is well conditioned.
                let n = y.len() - 1;
                let sign = if y[n] < 0.0 { -1.0 } else { 1.0 };
                let yp: Vec<f64> = y.iter().map(|v| sign * v / norm).collect();
                let mut x: Vec<f64> = yp[..n].iter().map(|v| v / (1.0 + yp[n])).collect();
                x.push(sign);
                Ok(x)
            }
            Manifold::Hyperbolic => {
                if norm2 >= 1.0 {
                    return Err(Error::Invalid(format!(
                        "a point of norm {:.6} is outside the Poincaré ball (norm < 1)",
                        norm2.sqrt()
                    )));
                }
                Ok(y.to_vec())
            }
        }
    }

    /// A chart-form row → the embedded point y (inverse of [`Manifold::to_chart`]).
    pub fn from_chart(self, x: &[f64]) -> Vec<f64> {
        match self {
            Manifold::Sphere => {
                let n = x.len() - 1;
                let sign = x[n];
                let r: f64 = x[..n].iter().map(|v| v * v).sum();
                let mut y: Vec<f64> = x[..n].iter().map(|v| sign * 2.0 * v / (1.0 + r)).collect();
                y.push(sign * (1.0 - r) / (1.0 + r));
                y
            }
            _ => x.to_vec(),
        }
    }

    /// The chart sign σ a point y gets (sphere: −1 on the southern hemisphere; else 1).
    pub fn sign_of(self, y: &[f64]) -> f64 {
        match self {
            Manifold::Sphere if y[y.len() - 1] < 0.0 => -1.0,
            _ => 1.0,
        }
    }

    /// Chart coordinates of y in the chart of sign σ (no sign column): for the sphere the
    /// stereographic projection of σy from its south pole (any y ≠ −σ·north pole).
    pub fn chart_in(self, y: &[f64], sign: f64) -> Vec<f64> {
        match self {
            Manifold::Sphere => {
                let n = y.len() - 1;
                y[..n]
                    .iter()
                    .map(|v| sign * v / (1.0 + sign * y[n]))
                    .collect()
            }
            _ => y.to_vec(),
        }
    }

    /// The embedded point of chart coordinates x in the chart of sign σ.
    pub fn point(self, x: &[f64], sign: f64) -> Vec<f64> {
        match self {
            Manifold::Sphere => {
                let mut f = x.to_vec();
                f.push(sign);
                self.from_chart(&f)
            }
            _ => x.to_vec(),
        }
    }

    /// g⁻¹ (a multiple of I) at chart coordinates x.
    pub fn g_inv(self, x: &[f64]) -> f64 {
        1.0 / self.metric(x.iter().map(|v| v * v).sum())
    }

    /// ∇ₓ(E∘y) = Jᵀ∇_yE at chart coordinates x (chart sign σ), from the embedded gradient.
    pub fn chart_grad(self, x: &[f64], sign: f64, grad_y: &[f64]) -> Vec<f64> {
        match self {
            Manifold::Sphere => {
                // y = σ(2x/(1+r), (1−r)/(1+r)): ∂y_i/∂x_j = σ[2δ_ij/(1+r) − 4x_i x_j/(1+r)²],
                // ∂y_last/∂x_j = −4σ x_j/(1+r)².
                let n = x.len();
                let r: f64 = x.iter().map(|v| v * v).sum();
                let (a, b) = (2.0 / (1.0 + r), 4.0 / ((1.0 + r) * (1.0 + r)));
                let xv: f64 = x.iter().zip(grad_y).map(|(p, q)| p * q).sum();
                (0..n)
                    .map(|j| sign * (a * grad_y[j] - b * x[j] * (xv + grad_y[n])))
                    .collect()
            }
            Manifold::Hyperbolic => {
                // y = (2x/(1−r), (1+r)/(1−r)): ∂y_i/∂x_j = 2δ_ij/(1−r) + 4x_i x_j/(1−r)²,
                // ∂y_last/∂x_j = 4x_j/(1−r)².
                let n = x.len();
                let r: f64 = x.iter().map(|v| v * v).sum();
                let (a, b) = (2.0 / (1.0 - r), 4.0 / ((1.0 - r) * (1.0 - r)));
                let xv: f64 = x.iter().zip(grad_y).map(|(p, q)| p * q).sum();
                (0..n)
                    .map(|j| a * grad_y[j] + b * x[j] * (xv + grad_y[n]))
                    .collect()
            }
            Manifold::Euclidean => grad_y.to_vec(),
        }
    }

    /// The Langevin drift towards q^s at chart coordinates x: −g⁻¹∇ₓ[s·E − ½Σ log g] + ∂g⁻¹
    /// (R^d: −s∇E), from the embedded gradient ∇_yE.
    pub fn drift(self, x: &[f64], sign: f64, grad_y: &[f64], s: f64) -> Vec<f64> {
        let g = self.chart_grad(x, sign, grad_y);
        let n = x.len() as f64;
        let r: f64 = x.iter().map(|v| v * v).sum();
        match self {
            Manifold::Euclidean => g.iter().map(|v| -s * v).collect(),
            Manifold::Sphere => {
                let nu = (1.0 + r) * (1.0 + r) / 4.0;
                (0..x.len())
                    .map(|j| -nu * (s * g[j] + 2.0 * n * x[j] / (1.0 + r)) + (1.0 + r) * x[j])
                    .collect()
            }
            Manifold::Hyperbolic => {
                let nu = (1.0 - r) * (1.0 - r) / 4.0;
                (0..x.len())
                    .map(|j| -nu * (s * g[j] - 2.0 * n * x[j] / (1.0 - r)) - (1.0 - r) * x[j])
                    .collect()
            }
        }
    }

    /// Whether chart coordinates x are a point of the manifold (the ball: ‖x‖ < 1).
    pub fn contains_chart(self, x: &[f64]) -> bool {
        match self {
            Manifold::Hyperbolic => x.iter().map(|v| v * v).sum::<f64>() < 1.0,
            _ => x.iter().all(|v| v.is_finite()),
        }
    }

    /// The Riemannian score −grad E at a data point y from the model's Euclidean score −∇E at
    /// its input (sphere: the tangent projection; ball: g⁻¹Jᵀ of it, in ball coordinates).
    pub fn riemannian_score(self, y: &[f64], score_y: &[f64]) -> Vec<f64> {
        match self {
            Manifold::Sphere => {
                let ys: f64 = y.iter().zip(score_y).map(|(a, b)| a * b).sum();
                let yy: f64 = y.iter().map(|v| v * v).sum();
                score_y
                    .iter()
                    .zip(y)
                    .map(|(s, v)| s - ys / yy * v)
                    .collect()
            }
            Manifold::Hyperbolic => {
                let nu = self.g_inv(y);
                let g = self.chart_grad(y, 1.0, score_y);
                g.iter().map(|s| nu * s).collect()
            }
            Manifold::Euclidean => score_y.to_vec(),
        }
    }

    /// The conformal factor c(r) of g = c·I at r = ‖x‖² (1 for R^d).
    pub fn metric(self, r: f64) -> f64 {
        match self {
            Manifold::Euclidean => 1.0,
            Manifold::Sphere => 4.0 / ((1.0 + r) * (1.0 + r)),
            Manifold::Hyperbolic => 4.0 / ((1.0 - r) * (1.0 - r)),
        }
    }
}

/// The chart terms the Riemannian Langevin step needs at a batch of chart points, on a tape
/// (all constants for differentiation: the data are constants).
pub struct ChartTerms<'t, B: Backend> {
    /// g^ii (rows, 1).
    pub g_inv: Var<'t, B>,
    /// ∂ᵢ g^ii (rows, n).
    pub d_g_inv: Var<'t, B>,
    /// ∇ₓ(½ Σᵢ log g_ii) (rows, n).
    pub grad_half_log_det: Var<'t, B>,
}

/// A batch in chart form split into the chart point x (rows, n) and, for the sphere, the
/// chart signs σ (rows, 1).
pub fn split<'t, B: Backend>(
    m: Manifold,
    form: Var<'t, B>,
) -> Result<(Var<'t, B>, Option<Var<'t, B>>)> {
    let (_, c) = form.shape();
    match m {
        Manifold::Sphere => Ok((form.slice_cols(0, c - 1)?, Some(form.slice_cols(c - 1, c)?))),
        _ => Ok((form, None)),
    }
}

/// y(x) on the tape, differentiable in x (sphere: σ·(2x/(1+r), (1−r)/(1+r))).
pub fn embed<'t, B: Backend>(
    m: Manifold,
    x: Var<'t, B>,
    sign: Option<Var<'t, B>>,
) -> Result<Var<'t, B>> {
    match (m, sign) {
        (Manifold::Sphere, Some(s)) => {
            let inv = x.rowdot(x)?.affine(1.0, 1.0)?.recip()?; // 1/(1+r)
            let head = x.mul(inv.scale(2.0)?)?;
            let last = inv.affine(2.0, -1.0)?; // (1−r)/(1+r) = 2/(1+r) − 1
            head.concat_cols(last)?.mul(s)
        }
        (Manifold::Sphere, None) => Err(Error::Shape("sphere points need their chart sign".into())),
        (Manifold::Hyperbolic, _) => {
            let inv = x.rowdot(x)?.affine(-1.0, 1.0)?.recip()?; // 1/(1−r)
            let head = x.mul(inv.scale(2.0)?)?;
            let last = inv.affine(2.0, -1.0)?; // (1+r)/(1−r) = 2/(1−r) − 1
            head.concat_cols(last)
        }
        _ => Ok(x),
    }
}

/// The chart form of unit vectors y (rows, n + 1) computed on the tape: the GPU twin of
/// [`Manifold::to_chart`] for the sphere, for points made on the device (an encoder's latents)
/// that should not travel to the host. Constant (detached): chart forms are data.
pub fn sphere_chart_form<'t, B: Backend>(y: Var<'t, B>) -> Result<Var<'t, B>> {
    let (_, m) = y.shape();
    if m < 2 {
        return Err(Error::Shape(
            "sphere points need at least 2 columns (S¹ ⊂ R²)".into(),
        ));
    }
    let y = y.detach();
    // σ = sign(y_last); the 1e-30 makes an exact 0 count as the northern hemisphere.
    let last = y.slice_cols(m - 1, m)?.affine(1.0, 1e-30)?;
    let sign = last.div(last.square()?.sqrt()?)?;
    let yp = y.mul(sign)?;
    let x = yp
        .slice_cols(0, m - 1)?
        .div(yp.slice_cols(m - 1, m)?.affine(1.0, 1.0)?)?;
    Ok(x.concat_cols(sign)?.detach())
}

/// g^ii, ∂ᵢg^ii and ∇(½Σ log g_ii) at chart points x (rows, n); None for R^d (g = I).
pub fn chart_terms<'t, B: Backend>(
    m: Manifold,
    x: Var<'t, B>,
) -> Result<Option<ChartTerms<'t, B>>> {
    let n = x.shape().1 as f32;
    let r = x.rowdot(x)?;
    let (one_pm_r, sign) = match m {
        Manifold::Euclidean => return Ok(None),
        Manifold::Sphere => (r.affine(1.0, 1.0)?, 1.0), // 1 + r
        Manifold::Hyperbolic => (r.affine(-1.0, 1.0)?, -1.0), // 1 − r
    };
    // c = 4/(1 ± r)²: g^ii = (1 ± r)²/4, ∂ᵢg^ii = ±(1 ± r)·xᵢ, ∇(½ n log c) = ∓2n·x/(1 ± r).
    Ok(Some(ChartTerms {
        g_inv: one_pm_r.square()?.scale(0.25)?.detach(),
        d_g_inv: x.mul(one_pm_r.scale(sign)?)?.detach(),
        grad_half_log_det: x.mul(one_pm_r.recip()?.scale(-sign * 2.0 * n)?)?.detach(),
    }))
}
