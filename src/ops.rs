//! The op vocabulary shared by the tape, the GPU kernels and the CPU reference.
//!
//! Elementwise functions are described by `(Fun, order)`: `order` = 0 is the function itself,
//! `order` = k its k-th derivative. The tape's backward rule for `map(f, k)` is simply
//! `gy * map(f, k + 1)`, so gradients of gradients need no extra rules. We provide
//! derivatives up to [`MAX_ORDER`], enough for a gradient of a gradient of a gradient.

/// Elementwise binary operations with broadcasting of rows and/or columns of size 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    pub(crate) fn code(self) -> u32 {
        self as u32
    }
    pub fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
        }
    }
}

/// Smooth elementwise functions (and, through `order`, their derivatives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fun {
    /// x·σ(x) (a.k.a. SiLU).
    Swish,
    Tanh,
    Sigmoid,
    /// log(1 + eˣ).
    Softplus,
    /// x for x > 0, eˣ − 1 otherwise (α = 1).
    Elu,
    Exp,
    Log,
    /// x².
    Square,
    Sqrt,
    /// 1/x.
    Recip,
}

/// Highest derivative order the kernels implement.
pub const MAX_ORDER: u8 = 3;

impl Fun {
    pub const ALL: [Fun; 10] = [
        Fun::Swish,
        Fun::Tanh,
        Fun::Sigmoid,
        Fun::Softplus,
        Fun::Elu,
        Fun::Exp,
        Fun::Log,
        Fun::Square,
        Fun::Sqrt,
        Fun::Recip,
    ];

    pub(crate) fn code(self) -> u32 {
        self as u32
    }

    /// f⁽ᵏ⁾(x) in f64: the CPU reference of `shaders/map.wgsl`, formula for formula.
    pub fn eval(self, order: u8, x: f64) -> f64 {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        match (self, order) {
            (Fun::Swish, 0) => x * sig(x),
            (Fun::Swish, 1) => {
                let s = sig(x);
                s + x * s * (1.0 - s)
            }
            (Fun::Swish, 2) => {
                let s = sig(x);
                let s1 = s * (1.0 - s);
                2.0 * s1 + x * s1 * (1.0 - 2.0 * s)
            }
            (Fun::Swish, _) => {
                let s = sig(x);
                let s1 = s * (1.0 - s);
                3.0 * s1 * (1.0 - 2.0 * s) + x * s1 * (1.0 - 6.0 * s + 6.0 * s * s)
            }
            (Fun::Tanh, 0) => x.tanh(),
            (Fun::Tanh, 1) => 1.0 - x.tanh().powi(2),
            (Fun::Tanh, 2) => {
                let t = x.tanh();
                -2.0 * t * (1.0 - t * t)
            }
            (Fun::Tanh, _) => {
                let t = x.tanh();
                -2.0 * (1.0 - t * t) * (1.0 - 3.0 * t * t)
            }
            (Fun::Sigmoid, k) | (Fun::Softplus, k) => {
                // softplus⁽ᵏ⁾ = σ⁽ᵏ⁻¹⁾
                let k = if self == Fun::Softplus {
                    if k == 0 {
                        return if x > 0.0 {
                            x + (-x).exp().ln_1p()
                        } else {
                            x.exp().ln_1p()
                        };
                    }
                    k - 1
                } else {
                    k
                };
                let s = sig(x);
                let s1 = s * (1.0 - s);
                match k {
                    0 => s,
                    1 => s1,
                    2 => s1 * (1.0 - 2.0 * s),
                    _ => s1 * (1.0 - 6.0 * s + 6.0 * s * s),
                }
            }
            (Fun::Elu, 0) => {
                if x > 0.0 {
                    x
                } else {
                    x.exp_m1()
                }
            }
            (Fun::Elu, 1) => {
                if x > 0.0 {
                    1.0
                } else {
                    x.exp()
                }
            }
            (Fun::Elu, _) => {
                if x > 0.0 {
                    0.0
                } else {
                    x.exp()
                }
            }
            (Fun::Exp, _) => x.exp(),
            (Fun::Log, 0) => x.ln(),
            (Fun::Log, 1) => 1.0 / x,
            (Fun::Log, 2) => -1.0 / (x * x),
            (Fun::Log, _) => 2.0 / (x * x * x),
            (Fun::Square, 0) => x * x,
            (Fun::Square, 1) => 2.0 * x,
            (Fun::Square, 2) => 2.0,
            (Fun::Square, _) => 0.0,
            (Fun::Sqrt, 0) => x.sqrt(),
            (Fun::Sqrt, 1) => 0.5 / x.sqrt(),
            (Fun::Sqrt, 2) => -0.25 / (x * x.sqrt()),
            (Fun::Sqrt, _) => 0.375 / (x * x * x.sqrt()),
            (Fun::Recip, 0) => 1.0 / x,
            (Fun::Recip, 1) => -1.0 / (x * x),
            (Fun::Recip, 2) => 2.0 / (x * x * x),
            (Fun::Recip, _) => -6.0 / (x * x * x * x),
        }
    }

    /// Inputs on which the function is defined (for tests drawing random arguments).
    pub fn needs_positive(self) -> bool {
        matches!(self, Fun::Log | Fun::Sqrt | Fun::Recip)
    }
}

/// Which axis a reduction removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Sum over rows: (r, c) → (1, c).
    Rows,
    /// Sum over columns: (r, c) → (r, 1).
    Cols,
    /// Sum of everything: (r, c) → (1, 1).
    All,
}

/// Shape after broadcasting `a` against `b` (each dimension equal, or 1 on one side).
pub fn broadcast_shape(a: (usize, usize), b: (usize, usize)) -> Option<(usize, usize)> {
    let dim = |x: usize, y: usize| {
        if x == y || y == 1 {
            Some(x)
        } else if x == 1 {
            Some(y)
        } else {
            None
        }
    };
    Some((dim(a.0, b.0)?, dim(a.1, b.1)?))
}
