//! The typed Rust↔WGSL seam of the fused kernels: every struct a kernel reads — the
//! per-dispatch parameter block in its uniform buffer, and the compile-time descriptors of
//! its streams, layers and sweeps — is defined once here, with [`wgsl_struct!`], which gives
//! the `#[repr(C)]` Rust struct, its WGSL declaration (same names, same field order) and the
//! WGSL constructor of a value. Kernels receive their descriptors as WGSL `const` values made
//! from the Rust ones, so a name or offset cannot disagree between the two sides; the uniform
//! block's byte layout is checked against naga's by a test (`tests/fused.rs`).

/// How a Rust field value is written in WGSL.
pub trait WgslValue {
    fn wgsl(&self) -> String;
}

impl WgslValue for u32 {
    fn wgsl(&self) -> String {
        format!("{self}u")
    }
}

impl WgslValue for f32 {
    /// An exact hexadecimal float literal (decimal literals go through f64 and could round
    /// twice). Non-finite values cannot be written in WGSL; the plan refuses them before.
    fn wgsl(&self) -> String {
        hex_f32(*self)
    }
}

impl WgslValue for [u32; 2] {
    fn wgsl(&self) -> String {
        format!("vec2<u32>({}u, {}u)", self[0], self[1])
    }
}

impl WgslValue for [u32; 4] {
    fn wgsl(&self) -> String {
        format!(
            "vec4<u32>({}u, {}u, {}u, {}u)",
            self[0], self[1], self[2], self[3]
        )
    }
}

/// `x` as a WGSL hexadecimal float literal (`0x1.8p-3f`), exactly.
pub fn hex_f32(x: f32) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0f"
        } else {
            "0.0f"
        }
        .into();
    }
    let bits = x.to_bits();
    let sign = if bits >> 31 == 1 { "-" } else { "" };
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0 {
        // Subnormal: 0x0.m p-126.
        return format!("{sign}0x0.{:06x}p-126f", mant << 1);
    }
    format!("{sign}0x1.{:06x}p{}f", mant << 1, exp - 127)
}

/// A `#[repr(C)]` struct shared with WGSL: `field: RustType = "wgsl type"` per field.
/// Generates the struct (Pod), `WGSL` (its declaration), `layout()` (field byte offsets,
/// for the test against naga) and `wgsl_value()` (a WGSL constructor of the value).
macro_rules! wgsl_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $wgsl:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }

        impl $name {
            /// The WGSL declaration of this struct: the same field names in the same order.
            pub const WGSL: &'static str = concat!(
                "struct ", stringify!($name), " {\n",
                $( "    ", stringify!($field), ": ", $wgsl, ",\n", )*
                "}\n"
            );

            /// (field name, byte offset) in declaration order.
            pub fn layout() -> Vec<(&'static str, usize)> {
                vec![$( (stringify!($field), std::mem::offset_of!($name, $field)) ),*]
            }

            /// This value as a WGSL constructor expression, `Name(1u, 0x1p-1f, …)`.
            pub fn wgsl_value(&self) -> String {
                let fields: Vec<String> = vec![$( $crate::fused::seam::WgslValue::wgsl(&self.$field) ),*];
                format!("{}({})", stringify!($name), fields.join(", "))
            }
        }
    };
}

/// Marks an unused slot or offset (an SN slot of a layer without spectral norm, say).
pub const NONE: u32 = u32::MAX;

wgsl_struct! {
    /// The per-dispatch parameter block of every fused kernel (binding 0, a uniform window).
    /// Training steps take their random draws and optimiser step from the device counter
    /// (`Ctl`), so every step of a submission has the same block.
    pub struct StepParams {
        /// Philox words of the minibatch-row draw (evaluation: unused).
        idx_words: [u32; 4] = "vec4<u32>",
        /// Philox words of the standard-normal draw (evaluation with drawn noise).
        noise_words: [u32; 4] = "vec4<u32>",
        /// Training: the seed of the draws (low, high word).
        seed: [u32; 2] = "vec2<u32>",
        /// Training: the stream of step t_base's first draw minus one; step t draws streams
        /// stream_base + draws·(t − t_base) + 1 (rows) and + 2 (noise), as `rng::Rng` does
        /// (one draw per step: the noise is + 1).
        stream_base: [u32; 2] = "vec2<u32>",
        /// Training: the optimiser step count that `stream_base` and `lr0` refer to.
        t_base: u32 = "u32",
        /// Rows of the bound data that minibatch rows are drawn from.
        data_rows: u32 = "u32",
        /// First row of this launch: in the drawn minibatch (training in sub-batches), or in
        /// the data (evaluation).
        row0: u32 = "u32",
        /// Live rows of this launch (the rest of the workspace rows are padding).
        rows: u32 = "u32",
        /// Rows of the whole minibatch: the loss is their mean.
        total: u32 = "u32",
        /// Layers shape, sub-batches after the first: 1 adds to the sums of the earlier ones.
        acc: u32 = "u32",
        /// Length of the loss ring in `ctl` (the loss of step t goes to slot t mod ring_len).
        ring_len: u32 = "u32",
        /// The learning rate at optimiser step lr_t0 and its change per step (linear decay:
        /// lr0 + lr_slope·(t − lr_t0), the same numbers before and after a resume), optimiser
        /// decay ρ/α/β₁, ε, and momentum or Adam's β₂ (see shaders/optim_lib.wgsl).
        lr0: f32 = "f32",
        lr_slope: f32 = "f32",
        rho: f32 = "f32",
        opt_eps: f32 = "f32",
        f3: f32 = "f32",
        /// Adam: ln β₁ and ln β₂ (the bias corrections 1/(1 − βᵗ) are computed on the device
        /// from the counter); 0 for RMSProp.
        log_beta1: f32 = "f32",
        log_beta2: f32 = "f32",
        /// The base step ε₀ (εᵢ = ε₀/max(1, ‖gᵢ‖²) with rescaling) and the energy-scale
        /// regulariser c: values, not compile-time constants, so that a change of either
        /// (the figures sweep ε₀) reuses the compiled kernels.
        eps0: f32 = "f32",
        reg: f32 = "f32",
        /// What this step does (`flags`): train, given rows, given noise. Values, not
        /// separate kernels: one kernel serves every mode (used in `select`s, never in
        /// branches: lavapipe recompiles a shader for every value of a uniform it branches on).
        flags: u32 = "u32",
        /// Draws per training step: 2 (minibatch rows, then noise) or 1 (noise only: the
        /// auto-encoders' energies train on given rows, and their stream has no row draw).
        draws: u32 = "u32",
        lr_t0: u32 = "u32",
        pad2: u32 = "u32",
    }
}

/// Bits of `StepParams::flags`.
pub mod flags {
    /// A training step: the power iteration moves u, the optimiser steps, the counter and
    /// the loss ring advance, the draws come from the counter.
    pub const TRAIN: u32 = 1;
    /// The launch's rows are data rows row0.. in order (else drawn minibatch rows).
    pub const GIVEN_ROWS: u32 = 2;
    /// The noise is the bound `given` rows (else a Philox draw).
    pub const GIVEN_NOISE: u32 = 4;
}

/// Words of the device counter buffer `ctl` (u32), then the loss ring (f32 bits).
pub mod ctl {
    /// The optimiser step count t read by a step's first kernels (samples, draws).
    pub const T_IN: u32 = 0;
    /// t + 1, written by the first kernel of a step for its last ones (the update), which
    /// write it back to T_IN: each kernel reads one slot and writes the other, so no kernel
    /// reads a word that another workgroup of the same dispatch writes.
    pub const T_OUT: u32 = 1;
    /// Steps recorded on this counter since it was set (for reports).
    pub const RING: u32 = 4;
}

wgsl_struct! {
    /// Dimensions and per-sample streams (offsets in the workspace `ws`, in f32 elements).
    /// Streams are row-major blocks of WS_ROWS rows: a training step's rows in flight.
    pub struct Io {
        /// Rows of every stream block (the plan's rows in flight).
        rows: u32 = "u32",
        /// Width of the energy's variable and of ψ (the data's width; the sphere: n + 1).
        d: u32 = "u32",
        /// Width of the network's input: d, or d + dc for a conditional energy.
        din: u32 = "u32",
        /// Width of a data row: d, or d − 1 in the Poincaré ball.
        dw: u32 = "u32",
        /// Width of a condition row (conditional energy), else 0.
        dc: u32 = "u32",
        /// Scale s of the network's input ỹ = s·y (the auto-encoders' √dim on the sphere).
        scale: f32 = "f32",
        /// ỹ₀ = [s·y₀, c] (din wide), the left factor of W₁'s gradient: [x0; q0; r0].
        x0: u32 = "u32",
        q0: u32 = "u32",
        r0: u32 = "u32",
        /// The right factor of W_L's gradient: [pl; x0l; dxl] (d wide each).
        pl: u32 = "u32",
        x0l: u32 = "u32",
        dxl: u32 = "u32",
        /// Standard-normal draw z (d wide).
        nz: u32 = "u32",
        /// g = ∇_y E(y₀) in data coordinates (d wide).
        g: u32 = "u32",
        /// ψ(ỹ₀), ψ(ỹ₁) − ψ(ỹ₀) (d wide).
        psi: u32 = "u32",
        dpsi: u32 = "u32",
        /// ∇_y E(y₁) − g (d wide).
        dg: u32 = "u32",
        /// The control variate's noise: ξ in R^d, Jξ on a chart (d wide).
        xi: u32 = "u32",
        /// Δỹ = s·(y₁ − y₀) (d wide).
        dx: u32 = "u32",
        /// ṽ = s·v, v the cotangent of g (d wide).
        v: u32 = "u32",
        /// Charts: the chart form (x, σ) of y₀ and the chart move Δx (d wide).
        ch: u32 = "u32",
        dch: u32 = "u32",
        /// Per-sample scalars: εᵢ, E₀, E₁, −ediff/εᵢ, c₀, c₁.
        eps: u32 = "u32",
        e0: u32 = "u32",
        e1: u32 = "u32",
        loss: u32 = "u32",
        c0: u32 = "u32",
        c1: u32 = "u32",
        /// The tile shape: a sweep's raw products before its epilogue, raw_stride per row
        /// (the widest layer: workgroups at different sweeps must not share words).
        raw: u32 = "u32",
        raw_stride: u32 = "u32",
        /// The tile shape's transposed weights (theta's layout, each W_l as fan_out × fan_in).
        wt: u32 = "u32",
        /// Per spectrally normalised layer and row: ⟨∂W̃ terms, W⟩/σ (NSN blocks of rows).
        dots: u32 = "u32",
        /// [loss, mean E₀, mean E₁, unused] of the last step.
        out: u32 = "u32",
        /// Partial gradient sums: `parts` slots of theta_len (split-K chunks of the layers
        /// shape, workgroups of the tile shape), added up by the update in slot order.
        part: u32 = "u32",
        parts: u32 = "u32",
        /// Partial scalar sums: `scal_slots` slots of `scal_len` (SCAL_FIXED: loss, E₀, E₁,
        /// E₀², E₁²; then one dot per normalised layer).
        scal: u32 = "u32",
        scal_slots: u32 = "u32",
        scal_len: u32 = "u32",
        /// The gradient (theta_len, in theta's layout).
        grad: u32 = "u32",
        theta_len: u32 = "u32",
    }
}

/// Scalars of a partial-sum slot before the per-layer dots: Σ loss, Σ E₀, Σ E₁, Σ E₀², Σ E₁².
pub const SCAL_FIXED: u32 = 5;

wgsl_struct! {
    /// One layer l of ψ: W_l (fan_in × fan_out) at w_off, b_l at b_off in theta; its
    /// spectral-norm slots in `sn` (NONE without); its hidden streams (NONE for the output).
    pub struct Layer {
        fan_in: u32 = "u32",
        fan_out: u32 = "u32",
        w_off: u32 = "u32",
        b_off: u32 = "u32",
        /// σ_l, u_l (the stored vector), u_l after this step's iteration, v_l; NONE without SN.
        sigma: u32 = "u32",
        u: u32 = "u32",
        u_new: u32 = "u32",
        v: u32 = "u32",
        /// Index of this layer among the normalised ones (its dot in a scalar slot), or NONE.
        sn_index: u32 = "u32",
        /// Hidden streams (rows × fan_out): z, a, f(z+Δz) − f(z), Δz, ż, ȧ, δa, δz, Δδz, ρ,
        /// and the gradient factors q, r, p. The left factor [a; q; r] and the right
        /// factor [p; dz; ddz] are contiguous.
        z: u32 = "u32",
        a: u32 = "u32",
        q: u32 = "u32",
        r: u32 = "u32",
        ad: u32 = "u32",
        zd: u32 = "u32",
        tz: u32 = "u32",
        ta: u32 = "u32",
        da: u32 = "u32",
        p: u32 = "u32",
        dz: u32 = "u32",
        ddz: u32 = "u32",
        rho: u32 = "u32",
    }
}

/// What a layer sweep computes (`Sweep::mode`).
pub mod mode {
    /// At x₀: z, f(z) forward; δa, δz, g backward.
    pub const VALUE: u32 = 0;
    /// The propagated difference at x₁: Δz, Δa forward; Δδz, Δg backward.
    pub const DIFF: u32 = 1;
    /// The v-path: the tangents ż, ȧ (and Q, R) forward; the adjoints ρ, P backward.
    pub const ADJOINT: u32 = 2;
}

wgsl_struct! {
    /// One layer sweep, out = in·W̃_l (forward: rows × fan_out) or in·W̃_lᵀ (backward:
    /// rows × fan_in, the target layer l − 1 or the input), with its epilogue (see
    /// shaders/fused/layers.wgsl). Offsets are in `ws`; the layer's own are in `Layer`.
    pub struct Sweep {
        /// 1: forward (out = in·W̃), 0: backward (out = in·W̃ᵀ).
        forward: u32 = "u32",
        mode: u32 = "u32",
        /// The layer l (1-based) whose weight the sweep multiplies by.
        layer: u32 = "u32",
        /// Output columns N and inner dimension K (a sweep may use only the first K rows or N
        /// columns of the weight: the conditional energy's Δ and v have no condition part).
        n: u32 = "u32",
        k: u32 = "u32",
        /// Input stream (rows × in_stride, K columns used).
        input: u32 = "u32",
        in_stride: u32 = "u32",
        /// Forward into a hidden layer, or backward into one (else the output ψ / the input).
        hidden: u32 = "u32",
        /// Output-layer or input targets: ψ/Δψ (forward), ψ/Δψ read and g/Δg written (backward).
        out: u32 = "u32",
        psi: u32 = "u32",
        /// The (hidden) target layer's streams: forward its own layer's, backward layer l − 1's.
        z: u32 = "u32",
        a: u32 = "u32",
        ad: u32 = "u32",
        zd: u32 = "u32",
        tz: u32 = "u32",
        ta: u32 = "u32",
        q: u32 = "u32",
        r: u32 = "u32",
        da: u32 = "u32",
        dz: u32 = "u32",
        ddz: u32 = "u32",
        rho: u32 = "u32",
        p: u32 = "u32",
        w_off: u32 = "u32",
        b_off: u32 = "u32",
        /// Weights from the workgroup copy (1: tile shape where they fit) or theta.
        wg_weights: u32 = "u32",
        wg_w_off: u32 = "u32",
        /// Backward sweeps: from the transposed copy (1) instead, rows of wt_stride (fan_in).
        wt: u32 = "u32",
        wt_stride: u32 = "u32",
    }
}

wgsl_struct! {
    /// The gradient sums of layer l: out ((fan_in + 1) × fan_out, the last row the bias) =
    /// [a; q; r]ᵀ·[p; dz; ddz] over K = 3·rows rows (see shaders/fused/layers.wgsl).
    pub struct GradSweep {
        layer: u32 = "u32",
        /// fan_in + 1 and fan_out.
        m: u32 = "u32",
        n: u32 = "u32",
        /// The left blocks (rows × fan_in each): [a; q; r], a = x0 for layer 1 (din wide;
        /// q0, r0 are d wide: their condition columns are zero and not stored).
        left: u32 = "u32",
        left_q: u32 = "u32",
        left_r: u32 = "u32",
        left_stride: u32 = "u32",
        qr_width: u32 = "u32",
        /// The right blocks (rows × fan_out each), contiguous from `right`.
        right: u32 = "u32",
        w_off: u32 = "u32",
        b_off: u32 = "u32",
        /// Rows of each stream block (a block's rows are `rows` apart).
        rows: u32 = "u32",
    }
}

wgsl_struct! {
    /// The objective and model settings every fused kernel is specialised for.
    pub struct Mvl {
        /// Activation (an `ops::Fun` code).
        act: u32 = "u32",
        /// εᵢ = ε₀/max(1, ‖gᵢ‖²) (ε₀ is in the uniform block).
        rescale: u32 = "u32",
        /// Subtract the control variate g·ξ.
        cv: u32 = "u32",
        /// Data on the sphere S^(d−1) in chart form (x, σ), or in the Poincaré ball of R^(d−1)
        /// (the network sees the hyperboloid point): the Riemannian step of SPEC §5.
        sphere: u32 = "u32",
        ball: u32 = "u32",
        /// Optimiser rule code (shaders/optim_lib.wgsl).
        opt: u32 = "u32",
        /// Layers L and spectrally normalised (hidden) layers.
        nl: u32 = "u32",
        nsn: u32 = "u32",
    }
}

wgsl_struct! {
    /// The tile shape: workgroup w of `groups` takes tiles w, w + groups, … of `rows` rows;
    /// its streams are workspace rows w·rows … (w+1)·rows − 1, its partial sums slot w.
    pub struct Tile {
        rows: u32 = "u32",
        groups: u32 = "u32",
        /// Invocations per workgroup, and per subgroup (the subgroup core; else 0).
        size: u32 = "u32",
        subgroup: u32 = "u32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgpu::naga;

    /// (field, offset) of struct `name` as naga lays it out from `wgsl`, and its size.
    fn naga_layout(wgsl: &str, name: &str) -> (Vec<(String, usize)>, usize) {
        let module = naga::front::wgsl::parse_str(wgsl).expect("the declaration parses");
        let ty = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(name))
            .expect("the struct is declared")
            .1;
        match &ty.inner {
            naga::TypeInner::Struct { members, span } => (
                members
                    .iter()
                    .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
                    .collect(),
                *span as usize,
            ),
            other => panic!("{name} is {other:?}"),
        }
    }

    /// The uniform block's Rust layout is the one WGSL reads: same names, offsets and size.
    #[test]
    fn uniform_block_layout_matches_wgsl() {
        let (fields, size) = naga_layout(StepParams::WGSL, "StepParams");
        let rust: Vec<(String, usize)> = StepParams::layout()
            .into_iter()
            .map(|(n, o)| (n.to_string(), o))
            .collect();
        assert_eq!(fields, rust);
        assert_eq!(size, std::mem::size_of::<StepParams>());
        assert!(size <= crate::gpu::launch::PARAM_BYTES);
    }

    /// Every descriptor's declaration parses, and a value of it is a valid WGSL constant.
    #[test]
    fn descriptors_declare_and_construct() {
        let decls = [
            (Io::WGSL, Io::default().wgsl_value()),
            (Layer::WGSL, Layer::default().wgsl_value()),
            (Sweep::WGSL, Sweep::default().wgsl_value()),
            (GradSweep::WGSL, GradSweep::default().wgsl_value()),
            (Mvl::WGSL, Mvl::default().wgsl_value()),
            (Tile::WGSL, Tile::default().wgsl_value()),
        ];
        for (decl, value) in decls {
            let src = format!("{decl}\nconst X = {value};\n");
            naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{}\n{src}", e.emit_to_string(&src)));
        }
    }

    /// f32 literals are exact: they parse back to the same bits (normal, subnormal, signs).
    #[test]
    fn float_literals_are_exact() {
        for x in [
            1.0f32,
            -0.1,
            1e-5,
            3.4e38,
            1.2e-38,
            1e-40,
            -0.0,
            0.0,
            0.3,
            f32::MIN_POSITIVE,
        ] {
            let src = format!("const X: f32 = {};\n", hex_f32(x));
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&src)));
            let (_, c) = module.constants.iter().next().expect("the constant");
            let lit = match module.global_expressions[c.init] {
                naga::Expression::Literal(naga::Literal::F32(v)) => v,
                ref other => panic!("{x:e} evaluates to {other:?}"),
            };
            assert_eq!(lit.to_bits(), x.to_bits(), "{x:e} written {}", hex_f32(x));
        }
    }
}
