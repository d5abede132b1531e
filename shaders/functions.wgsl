// Smooth functions f^(k)(x) shared by the elementwise kernels and the fused MVL kernels.
// Codes match ops::Fun; formulas match Fun::eval (the f64 reference).

fn sigmoid(x: f32) -> f32 {
    // Both branches stay finite for any finite x.
    if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
    let e = exp(x);
    return e / (1.0 + e);
}

// σ^(k) for k = 0..3.
fn sigmoid_d(x: f32, k: u32) -> f32 {
    let s = sigmoid(x);
    let s1 = s * (1.0 - s);
    switch k {
        case 0u: { return s; }
        case 1u: { return s1; }
        case 2u: { return s1 * (1.0 - 2.0 * s); }
        default: { return s1 * (1.0 - 6.0 * s + 6.0 * s * s); }
    }
}

// f^(k)(x). Codes match ops::Fun; formulas match Fun::eval (the f64 reference).
fn fun(code: u32, k: u32, x: f32) -> f32 {
    switch code {
        case 0u: { // swish
            let s = sigmoid(x);
            let s1 = s * (1.0 - s);
            switch k {
                case 0u: { return x * s; }
                case 1u: { return s + x * s1; }
                case 2u: { return 2.0 * s1 + x * s1 * (1.0 - 2.0 * s); }
                default: { return 3.0 * s1 * (1.0 - 2.0 * s) + x * s1 * (1.0 - 6.0 * s + 6.0 * s * s); }
            }
        }
        case 1u: { // tanh
            let t = tanh(x);
            switch k {
                case 0u: { return t; }
                case 1u: { return 1.0 - t * t; }
                case 2u: { return -2.0 * t * (1.0 - t * t); }
                default: { return -2.0 * (1.0 - t * t) * (1.0 - 3.0 * t * t); }
            }
        }
        case 2u: { return sigmoid_d(x, k); }
        case 3u: { // softplus, stable: max(x, 0) + log(1 + e^-|x|)
            if (k == 0u) { return max(x, 0.0) + log(1.0 + exp(-abs(x))); }
            return sigmoid_d(x, k - 1u);
        }
        case 4u: { // elu
            if (x > 0.0) { return select(0.0, select(1.0, x, k == 0u), k <= 1u); }
            return select(exp(x), exp(x) - 1.0, k == 0u);
        }
        case 5u: { return exp(x); }
        case 6u: { // log
            switch k {
                case 0u: { return log(x); }
                case 1u: { return 1.0 / x; }
                case 2u: { return -1.0 / (x * x); }
                default: { return 2.0 / (x * x * x); }
            }
        }
        case 7u: { // square
            switch k {
                case 0u: { return x * x; }
                case 1u: { return 2.0 * x; }
                case 2u: { return 2.0; }
                default: { return 0.0; }
            }
        }
        case 8u: { // sqrt
            let r = sqrt(x);
            switch k {
                case 0u: { return r; }
                case 1u: { return 0.5 / r; }
                case 2u: { return -0.25 / (x * r); }
                default: { return 0.375 / (x * x * r); }
            }
        }
        default: { // reciprocal
            switch k {
                case 0u: { return 1.0 / x; }
                case 1u: { return -1.0 / (x * x); }
                case 2u: { return 2.0 / (x * x * x); }
                default: { return -6.0 / (x * x * x * x); }
            }
        }
    }
}

// tanh(x) with small relative error also for tiny |x| (x − tanh's ulp-level absolute
// accuracy near 0 is not enough: the fused kernels' differences divide by ε).
fn tanh_acc(x: f32) -> f32 {
    let a = abs(x);
    if (a < 0.25) {
        let y = x * x;
        return x * (1.0 + y * (-0.33333333 + y * (0.13333333 + y * (-0.053968254 + y * 0.021869489))));
    }
    let e = exp(-2.0 * a);
    return sign(x) * (1.0 - e) / (1.0 + e);
}

// e^h − 1 = 2t/(1 − t), t = tanh(h/2): accurate for small |h| (WGSL has no expm1).
fn expm1_acc(h: f32) -> f32 {
    if (abs(h) > 0.5) { return exp(h) - 1.0; }
    let t = tanh_acc(0.5 * h);
    return 2.0 * t / (1.0 - t);
}
