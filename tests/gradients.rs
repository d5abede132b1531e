//! Gradient correctness of the tape, first, second and third order, on the GPU (f32) and on
//! the f64 CPU reference.
//!
//! Every function under test is written once, generic over `B: Backend`, and evaluated on
//! both devices. References are either central finite differences in f64 of the *same*
//! function run on the CPU tape, or closed forms.
//!
//! Inputs are drawn with fixed seeds, rounded to f32 (so the GPU and the CPU see exactly the
//! same numbers) and bounded away from zero.
//!
//! Error measure, used throughout ([`check_groups`]): for each entry
//! `|got − want| / max(|want|, floor)`, with an absolute `floor` chosen per test as a
//! fraction of the largest |want| of the group compared (all leaves of a program, all
//! parameters of a network). Without the floor, an entry that is tiny only because its
//! contributions cancel would demand more than f32 (or finite differences) can give; with
//! it, such an entry is still checked to `rtol · floor`, far below what any wrong backward
//! rule produces (wrong rules give O(1) errors). Each floor is justified where it is used.
//!
//! Sensitivity was checked by mutation: each of a dozen one-token bugs in
//! `Tape::backward_rule` (a swapped transpose flag, a lost minus sign, a dropped scale,
//! overwriting instead of accumulating, a wrong derivative order, `create_graph` ignored, a
//! wrong slice offset, …) and in the WGSL kernels (a 0.05% error in tanh'', a 0.3% error in
//! swish''', a scatter that overwrites) makes at least one test here fail.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};
use wmvl::backend::Backend;
use wmvl::conv::{conv2d, Geometry};
use wmvl::cpu::{Cpu, Mat};
use wmvl::gpu::Gpu;
use wmvl::ops::{Axis, BinOp, Fun, MAX_ORDER};
use wmvl::tape::{Tape, Var};
use wmvl::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------------

/// One GPU for the whole test binary (opening a device on lavapipe costs ~0.1 s).
static GPU: OnceLock<Gpu> = OnceLock::new();

fn gpu() -> &'static Gpu {
    GPU.get_or_init(|| {
        Gpu::new()
            .unwrap_or_else(|e| panic!("these tests need a GPU adapter (lavapipe is fine): {e}"))
    })
}

/// Moving numbers between the host and a device, for both devices.
trait Dev: Backend {
    fn put(&self, m: &Mat) -> Result<Self::Tensor>;
    fn get(&self, t: &Self::Tensor) -> Result<Vec<f64>>;
    /// Row indices, each < `bound` (the rows of what they index).
    fn put_index(&self, idx: &[u32], bound: usize) -> Result<Self::Index>;
}

impl Dev for Cpu {
    fn put(&self, m: &Mat) -> Result<Mat> {
        Ok(m.clone())
    }
    fn get(&self, t: &Mat) -> Result<Vec<f64>> {
        Ok(t.data.clone())
    }
    fn put_index(&self, idx: &[u32], _bound: usize) -> Result<Vec<u32>> {
        Ok(idx.to_vec())
    }
}

impl Dev for &Gpu {
    fn put(&self, m: &Mat) -> Result<wmvl::gpu::Tensor> {
        self.upload(m.rows, m.cols, &m.to_f32())
    }
    fn get(&self, t: &wmvl::gpu::Tensor) -> Result<Vec<f64>> {
        Ok(self.read(t)?.into_iter().map(f64::from).collect())
    }
    fn put_index(&self, idx: &[u32], bound: usize) -> Result<wmvl::gpu::Index> {
        self.upload_index(idx, bound as u32)
    }
}

fn leaves_on<'t, B: Dev>(tape: &'t Tape<B>, ms: &[Mat]) -> Result<Vec<Var<'t, B>>> {
    ms.iter()
        .map(|m| Ok(tape.leaf(tape.backend().put(m)?)))
        .collect()
}

fn read_on<B: Dev>(tape: &Tape<B>, v: Var<'_, B>) -> Result<Vec<f64>> {
    tape.backend().get(&v.value())
}

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

/// splitmix64: a tiny deterministic generator for test inputs.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform on [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform on 0..n.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform on lo..=hi.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
    /// ±U(lo, hi), rounded to f32: nonzero, and identical on both devices.
    fn signed(&mut self, lo: f64, hi: f64) -> f64 {
        let m = lo + (hi - lo) * self.unit();
        let v = if self.coin() { m } else { -m };
        v as f32 as f64
    }
    /// A (rows, cols) matrix of ±U(lo, hi) entries, scaled by `scale`, f32-representable.
    fn mat(&mut self, rows: usize, cols: usize, scale: f64) -> Mat {
        Mat {
            rows,
            cols,
            data: (0..rows * cols)
                .map(|_| (self.signed(0.25, 1.25) * scale) as f32 as f64)
                .collect(),
        }
    }
    /// Entries U(lo, hi) (positive), f32-representable.
    fn positive(&mut self, rows: usize, cols: usize, lo: f64, hi: f64) -> Mat {
        Mat {
            rows,
            cols,
            data: (0..rows * cols)
                .map(|_| (lo + (hi - lo) * self.unit()) as f32 as f64)
                .collect(),
        }
    }
}

/// Largest entrywise error `|got − want| / max(|want|, den_floor)` (see the module docs).
fn max_err(got: &[f64], want: &[f64], den_floor: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "compared vectors differ in length");
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            let d = (g - w).abs();
            if !d.is_finite() {
                return f64::INFINITY;
            }
            let den = w.abs().max(den_floor);
            if den > 0.0 {
                d / den
            } else {
                d
            }
        })
        .fold(0.0, f64::max)
}

fn inf_norm(groups: &[Vec<f64>]) -> f64 {
    groups.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Compare tensor groups entrywise; `Err` names the worst tensor and entry.
fn check_groups(
    what: &str,
    got: &[Vec<f64>],
    want: &[Vec<f64>],
    rtol: f64,
    floor: f64,
) -> std::result::Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} tensors vs {}", got.len(), want.len()));
    }
    let mut worst = 0.0f64;
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        if g.len() != w.len() {
            return Err(format!(
                "{what}: tensor {t} has {} entries vs {}",
                g.len(),
                w.len()
            ));
        }
        let e = max_err(g, w, floor);
        if e.is_nan() || e > rtol {
            let (i, _) = g
                .iter()
                .zip(w)
                .enumerate()
                .map(|(i, (a, b))| (i, (a - b).abs() / b.abs().max(floor).max(f64::MIN_POSITIVE)))
                .fold((0, -1.0), |acc, x| if x.1 > acc.1 { x } else { acc });
            return Err(format!(
                "{what}: tensor {t} entry {i}: got {} want {} (error {e:.3e} > {rtol:.1e}, floor {floor:.3e})\n got  {g:?}\n want {w:?}",
                g[i], w[i]
            ));
        }
        worst = worst.max(e);
    }
    Ok(worst)
}

/// Normwise comparison, tensor by tensor: `‖got − want‖₂ / max(‖want‖₂, floor)` ≤ `rtol`.
fn check_norms(
    what: &str,
    got: &[Vec<f64>],
    want: &[Vec<f64>],
    rtol: f64,
    floor: f64,
) -> std::result::Result<f64, String> {
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let mut worst = 0.0f64;
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        let d = norm(&mut g.iter().zip(w).map(|(a, b)| a - b));
        let n = norm(&mut w.iter().copied());
        let e = if d.is_finite() {
            d / n.max(floor).max(f64::MIN_POSITIVE)
        } else {
            f64::INFINITY
        };
        if e.is_nan() || e > rtol {
            return Err(format!(
                "{what}: tensor {t}: normwise error {e:.3e} > {rtol:.1e} (floor {floor:.3e})\n got  {g:?}\n want {w:?}"
            ));
        }
        worst = worst.max(e);
    }
    Ok(worst)
}

/// Central difference of `f` at `m[i]` in f64, step h = 1e-5·max(|m[i]|, 1). The step
/// actually taken is `(x+h) − (x−h)` as represented, so no representation error enters.
/// Truncation error ~ h^2 |f'''| / 6 ~ 2e-11 |f'''|; rounding error ~ u S / h ~ 1e-11 S, S the
/// size of the intermediates of f. Each test sets its floor from these.
fn central_diff(
    inputs: &mut [Mat],
    which: usize,
    i: usize,
    f: &mut dyn FnMut(&[Mat]) -> Result<f64>,
) -> Result<f64> {
    let x = inputs[which].data[i];
    let h = 1e-5 * x.abs().max(1.0);
    let (xp, xm) = (x + h, x - h);
    inputs[which].data[i] = xp;
    let fp = f(inputs)?;
    inputs[which].data[i] = xm;
    let fm = f(inputs)?;
    inputs[which].data[i] = x;
    Ok((fp - fm) / (xp - xm))
}

/// Finite-difference gradient of `f` with respect to every entry of `inputs[w]` for w in `wrt`.
fn fd_grads(
    inputs: &[Mat],
    wrt: &[usize],
    f: &mut dyn FnMut(&[Mat]) -> Result<f64>,
) -> Result<Vec<Vec<f64>>> {
    let mut work = inputs.to_vec();
    wrt.iter()
        .map(|&w| {
            (0..work[w].data.len())
                .map(|i| central_diff(&mut work, w, i, f))
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Random programs, first order
// ---------------------------------------------------------------------------------------------

/// The second operand of a binary op: a leaf or an earlier value of the program.
#[derive(Clone, Copy, Debug)]
enum Operand {
    Leaf(usize),
    /// Index into the program's values (0 = the first leaf, then one per step).
    Val(usize),
}

#[derive(Clone, Copy, Debug)]
enum Step {
    /// `op(cur)·op(leaf)`, or `op(leaf)·op(cur)` when `leaf_left` (`ta` then flags the leaf).
    MatMul {
        leaf: usize,
        ta: bool,
        tb: bool,
        leaf_left: bool,
    },
    /// `cur·curᵀ` (or `curᵀ·cur` with `ta`): one value used as both operands.
    MatMulSelf {
        ta: bool,
    },
    /// `cur ∘ other` (or `other ∘ cur`); for Div the denominator d becomes d² + 1.
    Bin {
        op: BinOp,
        other: Operand,
        cur_left: bool,
    },
    /// `f(cur)`; for Log/Sqrt/Recip, `f(cur² + 1)`.
    Map(Fun),
    Affine {
        a: f32,
        b: f32,
    },
    Sum(Axis),
    Mean(Axis),
    Expand {
        rows: usize,
        cols: usize,
    },
    RowDot(Operand),
    Concat {
        other: Operand,
        cur_left: bool,
    },
    Slice {
        start: usize,
        end: usize,
    },
    Pad {
        start: usize,
        total: usize,
    },
    Gather(usize),
    Scatter {
        index: usize,
        n: usize,
    },
}

#[derive(Clone, Copy, Debug)]
enum Finish {
    SumAll,
    MeanAll,
    /// Σ cur ⊙ W with W a random leaf.
    Weighted(usize),
}

/// A straight-line program over leaves: what the proptest generates (through [`plan`]).
#[derive(Clone, Debug)]
struct Prog {
    leaves: Vec<Mat>,
    /// Row-index vectors and the bound each was uploaded with.
    indices: Vec<(Vec<u32>, usize)>,
    steps: Vec<Step>,
    finish: Finish,
}

/// Largest column count a program may build (concat/pad grow columns).
const MAX_COLS: usize = 12;
/// Number of step kinds [`choose`] understands.
const KINDS: u8 = 15;

fn apply<'t, B: Backend>(
    step: Step,
    cur: Var<'t, B>,
    vals: &[Var<'t, B>],
    leaves: &[Var<'t, B>],
    idx: &[usize],
) -> Result<Var<'t, B>> {
    let pick = |o: Operand| match o {
        Operand::Leaf(i) => leaves[i],
        Operand::Val(i) => vals[i],
    };
    Ok(match step {
        Step::MatMul {
            leaf,
            ta,
            tb,
            leaf_left,
        } => {
            if leaf_left {
                leaves[leaf].matmul_t(cur, ta, tb)?
            } else {
                cur.matmul_t(leaves[leaf], ta, tb)?
            }
        }
        Step::MatMulSelf { ta } => cur.matmul_t(cur, ta, !ta)?,
        Step::Bin {
            op,
            other,
            cur_left,
        } => {
            let o = pick(other);
            let (a, b) = if cur_left { (cur, o) } else { (o, cur) };
            match op {
                BinOp::Add => a.add(b)?,
                BinOp::Sub => a.sub(b)?,
                BinOp::Mul => a.mul(b)?,
                BinOp::Div => a.div(b.square()?.affine(1.0, 1.0)?)?,
            }
        }
        Step::Map(f) => {
            if f.needs_positive() {
                cur.square()?.affine(1.0, 1.0)?.map(f, 0)?
            } else {
                cur.map(f, 0)?
            }
        }
        Step::Affine { a, b } => cur.affine(a, b)?,
        Step::Sum(axis) => cur.sum(axis)?,
        Step::Mean(axis) => cur.mean(axis)?,
        Step::Expand { rows, cols } => cur.expand(rows, cols)?,
        Step::RowDot(o) => cur.rowdot(pick(o))?,
        Step::Concat { other, cur_left } => {
            let o = pick(other);
            if cur_left {
                cur.concat_cols(o)?
            } else {
                o.concat_cols(cur)?
            }
        }
        Step::Slice { start, end } => cur.slice_cols(start, end)?,
        Step::Pad { start, total } => cur.pad_cols(start, total)?,
        Step::Gather(i) => cur.gather_rows(idx[i])?,
        Step::Scatter { index, n } => cur.scatter_add_rows(idx[index], n)?,
    })
}

fn finish<'t, B: Backend>(f: Finish, cur: Var<'t, B>, leaves: &[Var<'t, B>]) -> Result<Var<'t, B>> {
    match f {
        Finish::SumAll => cur.sum_all(),
        Finish::MeanAll => cur.mean_all(),
        Finish::Weighted(w) => cur.mul(leaves[w])?.sum_all(),
    }
}

impl Prog {
    fn new_leaf(&mut self, rng: &mut Rng, rows: usize, cols: usize) -> usize {
        self.leaves.push(rng.mat(rows, cols, 1.0));
        self.leaves.len() - 1
    }

    /// Build the program on `tape` from the given leaves; returns the scalar output.
    fn eval<'t, B: Dev>(&self, tape: &'t Tape<B>, leaves: &[Var<'t, B>]) -> Result<Var<'t, B>> {
        finish(self.finish, self.body(tape, leaves)?, leaves)
    }

    /// The largest Σ|entries| over the program's values and the final reduction's terms, on
    /// the CPU: the scale of the output's absolute rounding error (values stay O(1), see
    /// [`plan`], so sensitivities to intermediates are O(1) too).
    fn output_scale(&self) -> Result<f64> {
        let tape = Tape::new(Cpu);
        let ls = leaves_on(&tape, &self.leaves)?;
        let vals = self.values(&tape, &ls)?;
        let cur = vals.last().expect("at least the first leaf").value();
        let terms: f64 = match self.finish {
            Finish::SumAll | Finish::MeanAll => cur.data.iter().map(|v| v.abs()).sum(),
            Finish::Weighted(w) => cur
                .data
                .iter()
                .zip(&self.leaves[w].data)
                .map(|(a, b)| (a * b).abs())
                .sum(),
        };
        Ok(vals
            .iter()
            .map(|v| v.value().data.iter().map(|x| x.abs()).sum::<f64>())
            .fold(terms, f64::max))
    }

    /// The program up to (not including) the final reduction.
    fn body<'t, B: Dev>(&self, tape: &'t Tape<B>, leaves: &[Var<'t, B>]) -> Result<Var<'t, B>> {
        Ok(*self
            .values(tape, leaves)?
            .last()
            .expect("at least the first leaf"))
    }

    /// Every value of the program: the first leaf, then one per step.
    fn values<'t, B: Dev>(
        &self,
        tape: &'t Tape<B>,
        leaves: &[Var<'t, B>],
    ) -> Result<Vec<Var<'t, B>>> {
        let idx: Vec<usize> = self
            .indices
            .iter()
            .map(|(v, bound)| Ok(tape.index(tape.backend().put_index(v, *bound)?)))
            .collect::<Result<_>>()?;
        let mut cur = leaves[0];
        let mut vals = vec![cur];
        for &s in &self.steps {
            cur = apply(s, cur, &vals, leaves, &idx)?;
            vals.push(cur);
        }
        Ok(vals)
    }

    /// The program's output in f64 on the CPU, for the given leaf values.
    fn value_cpu(&self, leaves: &[Mat]) -> Result<f64> {
        let tape = Tape::new(Cpu);
        let ls = leaves_on(&tape, leaves)?;
        let y = self.eval(&tape, &ls)?;
        Ok(read_on(&tape, y)?[0])
    }

    /// Output and gradients with respect to every leaf, on `backend`.
    fn grads<B: Dev>(&self, backend: B) -> Result<(f64, Vec<Vec<f64>>)> {
        let tape = Tape::new(backend);
        let ls = leaves_on(&tape, &self.leaves)?;
        let y = self.eval(&tape, &ls)?;
        let gs = tape.grad(y, &ls, false)?;
        let yv = read_on(&tape, y)?[0];
        let gv = gs
            .iter()
            .map(|&g| read_on(&tape, g))
            .collect::<Result<_>>()?;
        Ok((yv, gv))
    }
}

/// Shapes of values of the program with this many rows.
fn same_shape_vals(shapes: &[(usize, usize)], want: (usize, usize)) -> Vec<usize> {
    (0..shapes.len()).filter(|&i| shapes[i] == want).collect()
}

/// The steps for one generated choice `kind`, given the current shape and the shapes of the
/// values so far. New leaves and indices go into `prog`.
fn choose(prog: &mut Prog, kind: u8, rng: &mut Rng, shapes: &[(usize, usize)]) -> Vec<Step> {
    let (r, c) = *shapes.last().expect("at least the first leaf");
    match kind % KINDS {
        0 => {
            let (ta, tb, leaf_left) = (rng.coin(), rng.coin(), rng.coin());
            let n = rng.range(1, 7);
            let leaf = if leaf_left {
                // op(leaf) (n × m) · op(cur) (m × k)
                let m = if tb { c } else { r };
                if ta {
                    prog.new_leaf(rng, m, n)
                } else {
                    prog.new_leaf(rng, n, m)
                }
            } else {
                // op(cur) (m × k) · op(leaf) (k × n)
                let k = if ta { r } else { c };
                if tb {
                    prog.new_leaf(rng, n, k)
                } else {
                    prog.new_leaf(rng, k, n)
                }
            };
            vec![Step::MatMul {
                leaf,
                ta,
                tb,
                leaf_left,
            }]
        }
        1 => vec![Step::MatMulSelf { ta: rng.coin() }],
        2..=5 => {
            let op = [BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Div][(kind % KINDS - 2) as usize];
            let other = match rng.below(6) {
                0 => Operand::Leaf(prog.new_leaf(rng, r, c)),
                1 => Operand::Leaf(prog.new_leaf(rng, 1, c)),
                2 => Operand::Leaf(prog.new_leaf(rng, r, 1)),
                3 => Operand::Leaf(prog.new_leaf(rng, 1, 1)),
                4 => {
                    // An earlier value of the same shape (possibly cur itself): fan-out.
                    let same = same_shape_vals(shapes, (r, c));
                    Operand::Val(same[rng.below(same.len())])
                }
                _ => {
                    // A leaf that broadcasts cur: cur's size-1 dimensions grow.
                    let rr = if r == 1 { rng.range(1, 7) } else { r };
                    let cc = if c == 1 { rng.range(1, 7) } else { c };
                    Operand::Leaf(prog.new_leaf(rng, rr, cc))
                }
            };
            vec![Step::Bin {
                op,
                other,
                cur_left: rng.coin(),
            }]
        }
        6 => vec![Step::Map(Fun::ALL[rng.below(Fun::ALL.len())])],
        7 => {
            let a = [0.5f32, -1.5, 2.0, -0.75, 1.25][rng.below(5)];
            let b = [0.0f32, 0.5, -1.0, 0.25][rng.below(4)];
            vec![Step::Affine { a, b }]
        }
        8 => vec![Step::Sum([Axis::Rows, Axis::Cols, Axis::All][rng.below(3)])],
        9 => vec![Step::Mean(
            [Axis::Rows, Axis::Cols, Axis::All][rng.below(3)],
        )],
        10 => {
            let mut out = vec![];
            let (mut rr, mut cc) = (r, c);
            if r > 1 && c > 1 {
                let axis = if rng.coin() { Axis::Rows } else { Axis::Cols };
                out.push(Step::Sum(axis));
                if axis == Axis::Rows {
                    rr = 1;
                } else {
                    cc = 1;
                }
            }
            let rows = if rr == 1 { rng.range(1, 7) } else { rr };
            let cols = if cc == 1 { rng.range(1, 7) } else { cc };
            out.push(Step::Expand { rows, cols });
            out
        }
        11 => {
            let other = match rng.below(2) {
                0 => Operand::Leaf(prog.new_leaf(rng, r, c)),
                _ => {
                    let same = same_shape_vals(shapes, (r, c));
                    Operand::Val(same[rng.below(same.len())])
                }
            };
            vec![Step::RowDot(other)]
        }
        12 => {
            let same_rows: Vec<usize> = (0..shapes.len())
                .filter(|&i| shapes[i].0 == r && shapes[i].1 + c <= MAX_COLS)
                .collect();
            let other = if !same_rows.is_empty() && rng.coin() {
                Operand::Val(same_rows[rng.below(same_rows.len())])
            } else if c < MAX_COLS {
                let c2 = rng.range(1, (MAX_COLS - c).min(4));
                Operand::Leaf(prog.new_leaf(rng, r, c2))
            } else {
                let start = rng.below(c);
                return vec![Step::Slice {
                    start,
                    end: rng.range(start + 1, c),
                }];
            };
            vec![Step::Concat {
                other,
                cur_left: rng.coin(),
            }]
        }
        13 => {
            if rng.coin() || c >= MAX_COLS {
                let start = rng.below(c);
                vec![Step::Slice {
                    start,
                    end: rng.range(start + 1, c),
                }]
            } else {
                let extra = rng.range(1, (MAX_COLS - c).min(3));
                vec![Step::Pad {
                    start: rng.range(0, extra),
                    total: c + extra,
                }]
            }
        }
        _ => {
            if rng.coin() {
                // Gather m rows (repeats allowed, some rows possibly never picked).
                let m = rng.range(1, 7);
                let v: Vec<u32> = (0..m).map(|_| rng.below(r) as u32).collect();
                prog.indices.push((v, r));
                vec![Step::Gather(prog.indices.len() - 1)]
            } else {
                // Scatter-add r rows into n (collisions when n < r, empty rows when n > r).
                let n = rng.range(1, 7);
                let v: Vec<u32> = (0..r).map(|_| rng.below(n) as u32).collect();
                prog.indices.push((v, n));
                vec![Step::Scatter {
                    index: prog.indices.len() - 1,
                    n,
                }]
            }
        }
    }
}

/// Turn generated choices into a program. Runs it on the CPU as it goes, to keep magnitudes
/// O(1): before a step, a value larger than 2 in magnitude is first scaled by a power of two
/// into (1/2, 1] (an `Affine` step, itself under test) so that f32 neither overflows (exp)
/// nor loses everything to cancellation or saturation (1 - tanh^2).
fn plan(start: (usize, usize), choices: &[(u8, u64)], fin: u8, seed: u64) -> Result<Prog> {
    let mut rng = Rng(seed);
    let mut prog = Prog {
        leaves: vec![rng.mat(start.0, start.1, 1.0)],
        indices: vec![],
        steps: vec![],
        finish: Finish::SumAll,
    };
    let tape = Tape::new(Cpu);
    let mut leaves = vec![tape.leaf(prog.leaves[0].clone())];
    let mut idx: Vec<usize> = vec![];
    let mut cur = leaves[0];
    let mut vals = vec![cur];
    for &(kind, s) in choices {
        let mut steps = vec![];
        let m = cur.value().data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if m > 2.0 {
            steps.push(Step::Affine {
                a: 2f32.powi(-(m.log2().ceil() as i32)),
                b: 0.0,
            });
        }
        let mut step_rng = Rng(s);
        let shapes: Vec<(usize, usize)> = vals.iter().map(|v| v.shape()).collect();
        let mut shapes_now = shapes.clone();
        if !steps.is_empty() {
            // The rescaled value is a new value of the same shape.
            shapes_now.push(cur.shape());
        }
        steps.extend(choose(&mut prog, kind, &mut step_rng, &shapes_now));
        while leaves.len() < prog.leaves.len() {
            leaves.push(tape.leaf(prog.leaves[leaves.len()].clone()));
        }
        while idx.len() < prog.indices.len() {
            idx.push(tape.index(prog.indices[idx.len()].0.clone()));
        }
        for step in steps {
            cur = apply(step, cur, &vals, &leaves, &idx)?;
            vals.push(cur);
            prog.steps.push(step);
        }
    }
    prog.finish = match fin % 3 {
        0 => Finish::SumAll,
        1 => Finish::MeanAll,
        _ => {
            let (r, c) = cur.shape();
            Finish::Weighted(prog.new_leaf(&mut rng, r, c))
        }
    };
    Ok(prog)
}

/// (a) CPU tape vs f64 central differences, then (b) GPU tape vs CPU tape.
fn check_program(prog: &Prog) -> std::result::Result<(), String> {
    let e = |e: Error| format!("{e}");
    let (y_cpu, g_cpu) = prog.grads(Cpu).map_err(e)?;
    let all: Vec<usize> = (0..prog.leaves.len()).collect();
    let fd = fd_grads(&prog.leaves, &all, &mut |ls| prog.value_cpu(ls)).map_err(e)?;
    // (a) f64 tape vs f64 central differences. Truncation error is ~1e-10 relative; the
    // rounding error of a difference is ~u·S/h ≈ 1e-11·S, S the size of the intermediates
    // (over 3000 random programs it stayed below 1e-9·max(‖∇‖∞, |y|)); so: relative 1e-5 per
    // entry, where entries below 1e-4·max(‖∇‖∞, |y|, 0.1) are held to that absolute floor
    // times 1e-5 (the 0.1 covers programs that are identically zero, e.g. x − x).
    let scale = inf_norm(&fd).max(y_cpu.abs()).max(0.1);
    check_groups(
        "CPU tape vs finite differences",
        &g_cpu,
        &fd,
        1e-5,
        1e-4 * scale,
    )?;

    // (b) f32 GPU vs f64 CPU on identical inputs. Intermediates are O(1) (see `plan`), so
    // each op rounds at ~1e-7 absolute; over ~10 ops and sums of ~10 terms a gradient entry
    // can be off by ~1e-6 absolute even when it is small (by cancellation, or exactly zero in
    // exact arithmetic but not in f64 with f32 constants such as 1/6), and the kernels' f32
    // formulas have ill-conditioned corners (1 − tanh² near saturation, log near 1). So:
    // relative error < 1e-4 normwise per leaf (‖Δ‖₂/‖∇‖₂) and < 5e-4 per entry, with leaf
    // norms below 1e-2·max(largest leaf norm, 1) and entries below 1e-2·max(largest entry,
    // 0.1) held to those floors. Over 12000 random programs (3 seeds × 4000) the worst were
    // 1.7e-5 normwise and 5e-5 per entry (and 7e-7 for (a), 1.5e-5 for the output below).
    let (y_gpu, g_gpu) = prog.grads(gpu()).map_err(e)?;
    let norms: Vec<f64> = g_cpu
        .iter()
        .map(|g| g.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    let max_norm = norms.iter().fold(0.0f64, |m, &v| m.max(v));
    check_norms(
        "GPU tape vs CPU tape",
        &g_gpu,
        &g_cpu,
        1e-4,
        1e-2 * max_norm.max(1.0),
    )?;
    check_groups(
        "GPU tape vs CPU tape",
        &g_gpu,
        &g_cpu,
        5e-4,
        1e-2 * inf_norm(&g_cpu).max(0.1),
    )?;
    // The scalar output itself: relative 1e-4, or absolute 1e-6 of the largest Σ|entries| of
    // any intermediate when the output is small by cancellation.
    let terms = prog.output_scale().map_err(e)?;
    check_groups(
        "GPU output vs CPU output",
        &[vec![y_gpu]],
        &[vec![y_cpu]],
        1e-4,
        1e-2 * terms,
    )?;
    Ok(())
}

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        rng_seed: RngSeed::Fixed(0x005E_ED0F_6AD5),
        // The seed is fixed: a failure is reproduced by rerunning, no regression file needed.
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    /// Random compositions of every op, first-order gradients with respect to every leaf.
    #[test]
    fn random_programs_first_order(
        start in (1usize..=7, 1usize..=7),
        choices in prop::collection::vec((0u8..KINDS, any::<u64>()), 3..=8),
        fin in 0u8..3,
        seed in any::<u64>(),
    ) {
        let prog = plan(start, &choices, fin, seed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_program(&prog).map_err(|m| TestCaseError::fail(format!("{m}\nprogram: {prog:?}")))?;
    }
}

/// A seed whose first `below(n)` draw is `i` (to force a choice inside [`choose`]).
fn seed_choosing(i: usize, n: usize) -> u64 {
    (0u64..)
        .find(|&s| Rng(s).below(n) == i)
        .expect("some seed picks i")
}

/// Deterministic complement to the proptest: for every `Fun`, one program that uses every
/// step kind once, in order, with the map step forced to that function.
#[test]
fn every_op_and_function_in_one_program() {
    for (i, f) in Fun::ALL.iter().enumerate() {
        let choices: Vec<(u8, u64)> = (0..KINDS)
            .map(|k| {
                let s = if k == 6 {
                    seed_choosing(i, Fun::ALL.len())
                } else {
                    1000 * i as u64 + k as u64
                };
                (k, s)
            })
            .collect();
        let prog = plan((4, 3), &choices, 2, 77 + i as u64).expect("plan");
        assert!(
            prog.steps
                .iter()
                .any(|s| matches!(s, Step::Map(g) if g == f)),
            "{f:?} not mapped"
        );
        if let Err(m) = check_program(&prog) {
            panic!("{f:?}: {m}\nprogram: {prog:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Second order: the MVL losses of a 2-hidden-layer score-net energy
// ---------------------------------------------------------------------------------------------

/// E(x) = Σ_rows ⟨x, ψ(x)⟩, ψ(x) = W₃ f(W₂ f(W₁x + b₁) + b₂) + b₃ (SPEC §7), θ = th[0..6].
fn mlp_energy<'t, B: Backend>(x: Var<'t, B>, th: &[Var<'t, B>], f: Fun) -> Result<Var<'t, B>> {
    let h1 = x.matmul(th[0])?.add(th[1])?.map(f, 0)?;
    let h2 = h1.matmul(th[2])?.add(th[3])?.map(f, 0)?;
    let psi = h2.matmul(th[4])?.add(th[5])?;
    x.rowdot(psi)
}

#[derive(Clone, Copy, Debug)]
enum MvlLoss {
    /// mean over rows of ‖∇ₓE‖².
    GradSq,
    /// mean over rows of E(x − ε∇ₓE + n), ε = 0.1.
    Langevin,
}

const EPS: f32 = 0.1;

/// The loss as a tape value; ∇ₓE is taken with `create_graph` so that ∂θ reaches through it.
fn mvl_loss<'t, B: Backend>(
    tape: &'t Tape<B>,
    x: Var<'t, B>,
    noise: Var<'t, B>,
    th: &[Var<'t, B>],
    f: Fun,
    which: MvlLoss,
) -> Result<Var<'t, B>> {
    let e = mlp_energy(x, th, f)?;
    let g = tape.grad(e.sum_all()?, &[x], true)?[0];
    match which {
        MvlLoss::GradSq => g.square()?.sum(Axis::Cols)?.mean_all(),
        MvlLoss::Langevin => {
            let x1 = x.sub(g.scale(EPS)?)?.add(noise)?;
            mlp_energy(x1, th, f)?.mean_all()
        }
    }
}

/// Inputs (x, n, W₁, b₁, W₂, b₂, W₃, b₃) for `rows` points in d = 3, 8 hidden units.
fn mlp_inputs(rows: usize, seed: u64) -> Vec<Mat> {
    let (d, h) = (3, 8);
    let mut rng = Rng(seed);
    vec![
        rng.mat(rows, d, 1.0),
        rng.mat(rows, d, 0.1),
        rng.mat(d, h, 1.0 / (d as f64).sqrt()),
        rng.mat(1, h, 0.3),
        rng.mat(h, h, 1.0 / (h as f64).sqrt()),
        rng.mat(1, h, 0.3),
        rng.mat(h, d, 1.0 / (h as f64).sqrt()),
        rng.mat(1, d, 0.3),
    ]
}

/// Loss and ∂loss/∂θ (double backward) on `backend`.
fn mvl_grads<B: Dev>(
    backend: B,
    inputs: &[Mat],
    f: Fun,
    which: MvlLoss,
) -> Result<(f64, Vec<Vec<f64>>)> {
    let tape = Tape::new(backend);
    let ls = leaves_on(&tape, inputs)?;
    let loss = mvl_loss(&tape, ls[0], ls[1], &ls[2..], f, which)?;
    let gs = tape.grad(loss, &ls[2..], false)?;
    let l = read_on(&tape, loss)?[0];
    Ok((
        l,
        gs.iter()
            .map(|&g| read_on(&tape, g))
            .collect::<Result<_>>()?,
    ))
}

fn mvl_value_cpu(inputs: &[Mat], f: Fun, which: MvlLoss) -> Result<f64> {
    let tape = Tape::new(Cpu);
    let ls = leaves_on(&tape, inputs)?;
    let loss = mvl_loss(&tape, ls[0], ls[1], &ls[2..], f, which)?;
    Ok(read_on(&tape, loss)?[0])
}

/// d/dθ of both MVL losses, Swish and Tanh: CPU tape and GPU tape vs f64 finite differences
/// of the loss computed by the CPU tape (whose inner ∇ₓE is recomputed at every perturbed θ).
#[test]
fn mvl_losses_double_backward_vs_finite_differences() {
    for f in [Fun::Swish, Fun::Tanh] {
        for which in [MvlLoss::GradSq, MvlLoss::Langevin] {
            let inputs = mlp_inputs(6, 0xD0B1E + f as u64);
            let theta: Vec<usize> = (2..inputs.len()).collect();
            let fd = fd_grads(&inputs, &theta, &mut |m| mvl_value_cpu(m, f, which)).expect("fd");
            let (l_cpu, g_cpu) = mvl_grads(Cpu, &inputs, f, which).expect("cpu");
            let (l_gpu, g_gpu) = mvl_grads(gpu(), &inputs, f, which).expect("gpu");
            let what = format!("{f:?} {which:?}");
            assert!(
                inf_norm(&fd) > 1e-3,
                "{what}: gradient too small to test anything"
            );
            // f64 vs f64: central differences are good to ~1e-10 here (see `central_diff`);
            // entries below 1e-3 of the largest gradient are held to that floor.
            let e_cpu = check_groups(
                &format!("{what}: CPU tape vs FD"),
                &g_cpu,
                &fd,
                1e-6,
                1e-3 * inf_norm(&fd),
            )
            .unwrap_or_else(|m| panic!("{m}"));
            // f32 vs f64: relative 1e-3 per entry, same floor.
            let e_gpu = check_groups(
                &format!("{what}: GPU tape vs FD"),
                &g_gpu,
                &fd,
                1e-3,
                1e-3 * inf_norm(&fd),
            )
            .unwrap_or_else(|m| panic!("{m}"));
            check_groups(
                &format!("{what}: GPU loss vs CPU loss"),
                &[vec![l_gpu]],
                &[vec![l_cpu]],
                1e-5,
                0.0,
            )
            .unwrap_or_else(|m| panic!("{m}"));
            eprintln!("{what}: CPU vs FD {e_cpu:.2e}, GPU vs FD {e_gpu:.2e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quadratic energy: closed forms for the Hessian-vector product and for d/dA ‖∇ₓE‖²
// ---------------------------------------------------------------------------------------------

/// E(x) = ½ Σ_rows xᵀ A x (rows of x are the points).
fn quad_energy<'t, B: Backend>(x: Var<'t, B>, a: Var<'t, B>) -> Result<Var<'t, B>> {
    x.matmul(a)?.rowdot(x)?.scale(0.5)
}

/// (∇ₓE, ∇ₓ⟨∇ₓE, v⟩, ∂A mean‖∇ₓE‖²) computed by the tape on `backend`.
fn quad_derivatives<B: Dev>(backend: B, x: &Mat, a: &Mat, v: &Mat) -> Result<[Vec<f64>; 3]> {
    let tape = Tape::new(backend);
    let ls = leaves_on(&tape, &[x.clone(), a.clone(), v.clone()])?;
    let (x, a, v) = (ls[0], ls[1], ls[2]);
    let g = tape.grad(quad_energy(x, a)?.sum_all()?, &[x], true)?[0];
    let hv = tape.grad(g.mul(v)?.sum_all()?, &[x], false)?[0];
    let l = g.square()?.sum(Axis::Cols)?.mean_all()?;
    let da = tape.grad(l, &[a], false)?[0];
    Ok([read_on(&tape, g)?, read_on(&tape, hv)?, read_on(&tape, da)?])
}

fn matmul_f64(a: &Mat, b: &Mat, ta: bool, tb: bool) -> Mat {
    Cpu.matmul(a, b, ta, tb).expect("shapes fit")
}

#[test]
fn quadratic_energy_hessian_vector_product_and_parameter_gradient() {
    // n = 4 rows so that the mean's 1/n is exact in f32; d = 5.
    let (n, d) = (4, 5);
    let mut rng = Rng(0x0A0A);
    let m = rng.mat(d, d, 1.0);
    // A = MᵀM + I, symmetric positive definite, rounded to f32 (symmetry survives rounding:
    // (MᵀM)ᵢⱼ and (MᵀM)ⱼᵢ sum the same products in the same order).
    let mut a = matmul_f64(&m, &m, true, false);
    for i in 0..d {
        a.data[i * d + i] += 1.0;
    }
    a.data.iter_mut().for_each(|v| *v = *v as f32 as f64);
    for i in 0..d {
        for j in 0..d {
            assert_eq!(a.at(i, j), a.at(j, i));
        }
    }
    let x = rng.mat(n, d, 1.0);
    let v = rng.mat(n, d, 1.0);
    // Closed forms (A symmetric): ∇ₓE = XA, ∇ₓ⟨∇ₓE, V⟩ = VA (the Hessian A applied to each
    // row of V), and with G = XA, L = (1/n)‖½X(A + Aᵀ)‖²:  ∂L/∂A = (XᵀG + GᵀX)/n.
    let g = matmul_f64(&x, &a, false, false);
    let hv = matmul_f64(&v, &a, false, false);
    let xtg = matmul_f64(&x, &g, true, false);
    let da: Vec<f64> = (0..d * d)
        .map(|k| (xtg.data[k] + xtg.at(k % d, k / d)) / n as f64)
        .collect();
    let want = [g.data.clone(), hv.data.clone(), da];
    let names = ["∇ₓE", "Hessian-vector product", "∂A mean‖∇ₓE‖²"];

    let cpu_got = quad_derivatives(Cpu, &x, &a, &v).expect("cpu");
    let gpu_got = quad_derivatives(gpu(), &x, &a, &v).expect("gpu");
    for k in 0..3 {
        // f64: the tape and the closed form differ only by rounding (sums of ≤ 2d terms).
        check_groups(
            &format!("CPU {}", names[k]),
            &[cpu_got[k].clone()],
            &[want[k].clone()],
            1e-12,
            1e-3 * inf_norm(&[want[k].clone()]),
        )
        .unwrap_or_else(|m| panic!("{m}"));
        // f32: sums of ≤ 2d = 10 products of O(1)–O(10) numbers, error ≲ 1e-6 of the largest
        // entry; relative 1e-5 per entry, entries below 1e-2 of the largest held to that floor
        // (with these inputs every entry also passes with no floor at all).
        check_groups(
            &format!("GPU {}", names[k]),
            &[gpu_got[k].clone()],
            &[want[k].clone()],
            1e-5,
            1e-2 * inf_norm(&[want[k].clone()]),
        )
        .unwrap_or_else(|m| panic!("{m}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Third order, and the order limit
// ---------------------------------------------------------------------------------------------

/// S = ⟨∇ₓ‖∇ₓE‖², v⟩ for the Swish MLP energy: a second derivative of E, contracted.
fn third_order_scalar<'t, B: Backend>(
    tape: &'t Tape<B>,
    x: Var<'t, B>,
    v: Var<'t, B>,
    th: &[Var<'t, B>],
) -> Result<Var<'t, B>> {
    let e = mlp_energy(x, th, Fun::Swish)?;
    let g = tape.grad(e.sum_all()?, &[x], true)?[0];
    let h = tape.grad(g.square()?.sum_all()?, &[x], true)?[0];
    h.mul(v)?.sum_all()
}

/// ∂S/∂x and ∂S/∂θ: third derivatives of E (Swish''' in the kernels).
fn third_order_grads<B: Dev>(backend: B, inputs: &[Mat]) -> Result<Vec<Vec<f64>>> {
    let tape = Tape::new(backend);
    let ls = leaves_on(&tape, inputs)?;
    let s = third_order_scalar(&tape, ls[0], ls[1], &ls[2..])?;
    let mut wrt = vec![ls[0]];
    wrt.extend_from_slice(&ls[2..]);
    let gs = tape.grad(s, &wrt, false)?;
    gs.iter().map(|&g| read_on(&tape, g)).collect()
}

#[test]
fn third_order_gradient_of_gradient_of_gradient() {
    // inputs: x, v (in the noise slot), θ.
    let mut inputs = mlp_inputs(4, 0x3D);
    inputs[1] = Rng(0x3E).mat(4, 3, 1.0);
    let wrt: Vec<usize> = std::iter::once(0).chain(2..inputs.len()).collect();
    let fd = fd_grads(&inputs, &wrt, &mut |m| {
        let tape = Tape::new(Cpu);
        let ls = leaves_on(&tape, m)?;
        let s = third_order_scalar(&tape, ls[0], ls[1], &ls[2..])?;
        Ok(read_on(&tape, s)?[0])
    })
    .expect("fd");
    assert!(
        inf_norm(&fd) > 1e-3,
        "third derivatives too small to test anything"
    );
    let cpu_got = third_order_grads(Cpu, &inputs).expect("cpu");
    let gpu_got = third_order_grads(gpu(), &inputs).expect("gpu");
    // Same tolerances and floors as the second-order test.
    let e_cpu = check_groups(
        "third order: CPU tape vs FD",
        &cpu_got,
        &fd,
        1e-6,
        1e-3 * inf_norm(&fd),
    )
    .unwrap_or_else(|m| panic!("{m}"));
    let e_gpu = check_groups(
        "third order: GPU tape vs FD",
        &gpu_got,
        &fd,
        1e-3,
        1e-3 * inf_norm(&fd),
    )
    .unwrap_or_else(|m| panic!("{m}"));
    eprintln!("third order: CPU vs FD {e_cpu:.2e}, GPU vs FD {e_gpu:.2e}");

    // One order more needs Swish⁽⁴⁾, beyond MAX_ORDER: an error, not a panic.
    for dev in 0..2 {
        let r = if dev == 0 {
            fourth_order_attempt(Cpu, &inputs)
        } else {
            fourth_order_attempt(gpu(), &inputs)
        };
        assert!(
            matches!(r, Err(Error::Invalid(_))),
            "device {dev}: fourth order gave {r:?}"
        );
    }
}

fn fourth_order_attempt<B: Dev>(backend: B, inputs: &[Mat]) -> Result<()> {
    let tape = Tape::new(backend);
    let ls = leaves_on(&tape, inputs)?;
    let s = third_order_scalar(&tape, ls[0], ls[1], &ls[2..])?;
    let k = tape.grad(s, &[ls[0]], true)?[0];
    tape.grad(k.sum_all()?, &[ls[0]], false)?;
    Ok(())
}

/// Derivatives of orders 1..=MAX_ORDER, then the fourth-order and `map` order-4 outcomes.
type Nested = (Vec<Vec<f64>>, Result<()>, Result<()>);

/// dᵏ/dxᵏ Σ f(x) through k nested `grad` calls equals f⁽ᵏ⁾ for k = 1..=3 and every function;
/// the fourth is an `Err`, as is `map(f, MAX_ORDER + 1)`.
fn nested_derivatives<B: Dev>(backend: B, f: Fun, x: &Mat) -> Result<Nested> {
    let tape = Tape::new(backend);
    let x = tape.leaf(tape.backend().put(x)?);
    let mut d = x.map(f, 0)?;
    let mut orders = vec![];
    for _ in 0..MAX_ORDER {
        d = tape.grad(d.sum_all()?, &[x], true)?[0];
        orders.push(read_on(&tape, d)?);
    }
    let fourth = tape.grad(d.sum_all()?, &[x], false).map(|_| ());
    let direct = x.map(f, MAX_ORDER + 1).map(|_| ());
    Ok((orders, fourth, direct))
}

#[test]
fn nested_derivatives_of_every_function_and_the_order_limit() {
    let mut rng = Rng(0xF00);
    for f in Fun::ALL {
        let x = if f.needs_positive() {
            rng.positive(3, 4, 0.5, 2.0)
        } else {
            rng.mat(3, 4, 1.5)
        };
        for dev in 0..2 {
            let (orders, fourth, direct) = if dev == 0 {
                nested_derivatives(Cpu, f, &x)
            } else {
                nested_derivatives(gpu(), f, &x)
            }
            .unwrap_or_else(|e| panic!("{f:?} device {dev}: {e}"));
            for (k, got) in orders.into_iter().enumerate() {
                let order = k as u8 + 1;
                let want: Vec<f64> = x.data.iter().map(|&v| f.eval(order, v)).collect();
                // CPU: the same f64 formula times exact ones. GPU: the f32 kernel formula,
                // whose cancellation (e.g. Swish''' = 3σ'(1 − 2σ) + xσ'(1 − 6σ + 6σ²)) costs
                // up to ~1e-5 near its zeros: relative 1e-4, floor 1e-2 of the largest entry.
                let (rtol, floor) = if dev == 0 { (1e-14, 0.0) } else { (1e-4, 1e-2) };
                let scale = inf_norm(std::slice::from_ref(&want));
                let what = format!("{f:?} device {dev}: derivative {order}");
                check_groups(&what, &[got], &[want], rtol, floor * scale)
                    .unwrap_or_else(|m| panic!("{m}"));
            }
            assert!(
                matches!(fourth, Err(Error::Invalid(_))),
                "{f:?} device {dev}: fourth derivative gave {fourth:?}"
            );
            assert!(
                matches!(direct, Err(Error::Invalid(_))),
                "{f:?} device {dev}: map order 4 gave {direct:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Convolutions: conv2d (unfold · W + b, reshape) and fold, first and second order
// ---------------------------------------------------------------------------------------------

/// Inputs of [`conv_loss`]: x (B, H·W·C), W (k·k·C, F), b (1, F), R (B, Ho·Wo·F),
/// P (B·Ho·Wo, k·k·C), Q (B, H·W·C).
fn conv_inputs(batch: usize, g: &Geometry, f: usize, seed: u64) -> Vec<Mat> {
    let mut rng = Rng(seed);
    let rows = batch * g.positions();
    vec![
        rng.mat(batch, g.pixels(), 1.0),
        rng.mat(g.patch(), f, 1.0 / (g.patch() as f64).sqrt()),
        rng.mat(1, f, 0.3),
        rng.mat(batch, g.positions() * f, 1.0),
        rng.mat(rows, g.patch(), 1.0),
        rng.mat(batch, g.pixels(), 1.0),
    ]
}

/// Σ R ⊙ tanh(conv2d(x, W, b)) + Σ Q ⊙ tanh(fold(P)): every new op forward, and in its
/// backward rule its adjoint (unfold → fold, fold → unfold, reshape → reshape back).
fn conv_loss<'t, B: Backend>(v: &[Var<'t, B>], g: &Geometry) -> Result<Var<'t, B>> {
    let y = conv2d(v[0], v[1], v[2], g)?.tanh()?.mul(v[3])?.sum_all()?;
    y.add(v[4].fold(g)?.tanh()?.mul(v[5])?.sum_all()?)
}

/// The loss and its gradient with respect to x, W, b and P on `backend`.
fn conv_grads<B: Dev>(backend: B, inputs: &[Mat], g: &Geometry) -> Result<(f64, Vec<Vec<f64>>)> {
    let tape = Tape::new(backend);
    let ls = leaves_on(&tape, inputs)?;
    let y = conv_loss(&ls, g)?;
    let gs = tape.grad(y, &[ls[0], ls[1], ls[2], ls[4]], false)?;
    let yv = read_on(&tape, y)?[0];
    Ok((
        yv,
        gs.iter()
            .map(|&v| read_on(&tape, v))
            .collect::<Result<_>>()?,
    ))
}

/// CPU tape vs f64 central differences, and GPU tape vs the same, for one geometry.
fn check_conv_first_order(
    batch: usize,
    g: &Geometry,
    f: usize,
    seed: u64,
) -> std::result::Result<(), String> {
    let e = |e: Error| format!("{g:?}: {e}");
    let inputs = conv_inputs(batch, g, f, seed);
    let fd = fd_grads(&inputs, &[0, 1, 2, 4], &mut |m| {
        let tape = Tape::new(Cpu);
        let ls = leaves_on(&tape, m)?;
        Ok(read_on(&tape, conv_loss(&ls, g)?)?[0])
    })
    .map_err(e)?;
    if inf_norm(&fd) < 1e-2 {
        return Err(format!("{g:?}: gradients too small to test anything"));
    }
    let (y_cpu, g_cpu) = conv_grads(Cpu, &inputs, g).map_err(e)?;
    let (y_gpu, g_gpu) = conv_grads(gpu(), &inputs, g).map_err(e)?;
    // As the other first-order checks: f64 tape vs central differences to 1e-6 per entry,
    // the f32 GPU tape to 1e-3; entries below 1e-3 of the largest held to that floor.
    let floor = 1e-3 * inf_norm(&fd);
    check_groups(&format!("{g:?}: CPU tape vs FD"), &g_cpu, &fd, 1e-6, floor)?;
    check_groups(&format!("{g:?}: GPU tape vs FD"), &g_gpu, &fd, 1e-3, floor)?;
    check_groups(
        &format!("{g:?}: GPU loss vs CPU loss"),
        &[vec![y_gpu]],
        &[vec![y_cpu]],
        1e-5,
        1e-2,
    )?;
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(48))]

    /// Gradients of conv2d with respect to input, weights and bias (and of fold with respect
    /// to its patches) on random geometries: strides 1–3, every padding below the kernel
    /// size, 1–3 channels in and out, non-square images.
    #[test]
    fn conv2d_first_order_random_geometries(
        batch in 1usize..=2,
        k in 1usize..=3,
        stride in 1usize..=3,
        pad_frac in 0.0f64..1.0,
        c in 1usize..=3,
        f in 1usize..=3,
        dh in 0usize..=3,
        dw in 0usize..=3,
        seed in any::<u64>(),
    ) {
        let pad = ((k as f64 * pad_frac) as usize).min(k - 1);
        let min = k.saturating_sub(2 * pad).max(1);
        let g = Geometry::new(min + dh, min + dw, c, k, stride, pad)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_conv_first_order(batch, &g, f, seed).map_err(TestCaseError::fail)?;
    }
}

/// The geometries of the LeNet layers, shrunk: 5×5 kernels, stride 2, padding 2.
#[test]
fn conv2d_first_order_lenet_like_geometries() {
    let g1 = Geometry::new(7, 6, 1, 5, 2, 2).unwrap();
    check_conv_first_order(2, &g1, 3, 0xC01).unwrap_or_else(|m| panic!("{m}"));
    let g2 = g1.next(3, 5, 2, 2).unwrap();
    assert_eq!((g2.h, g2.w), (4, 3));
    check_conv_first_order(2, &g2, 2, 0xC02).unwrap_or_else(|m| panic!("{m}"));
}

/// Two convolutions: E = Σ R ⊙ tanh(conv₂(tanh(conv₁(x)))), and the scalar
/// S = ‖∇ₓE‖² + ⟨∇_{W₁}E, V⟩, a second derivative taken through the backward rules of
/// unfold (fold), fold (unfold) and reshape.
fn conv_second_order_scalar<'t, B: Backend>(
    tape: &'t Tape<B>,
    v: &[Var<'t, B>],
    g1: &Geometry,
    g2: &Geometry,
) -> Result<Var<'t, B>> {
    let (x, w1, b1, w2, b2, r, vv) = (v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
    let h = conv2d(x, w1, b1, g1)?.tanh()?;
    let e = conv2d(h, w2, b2, g2)?.tanh()?.mul(r)?.sum_all()?;
    let gs = tape.grad(e, &[x, w1], true)?;
    gs[0].square()?.sum_all()?.add(gs[1].mul(vv)?.sum_all()?)
}

fn conv_second_order_grads<B: Dev>(
    backend: B,
    inputs: &[Mat],
    g1: &Geometry,
    g2: &Geometry,
) -> Result<Vec<Vec<f64>>> {
    let tape = Tape::new(backend);
    let ls = leaves_on(&tape, inputs)?;
    let s = conv_second_order_scalar(&tape, &ls, g1, g2)?;
    let gs = tape.grad(s, &ls[..5], false)?;
    gs.iter().map(|&v| read_on(&tape, v)).collect()
}

#[test]
fn conv2d_second_order_vs_finite_differences() {
    // 5×4×2 images → 3×3 kernel, stride 1, pad 1 → 5×4×3 → 3×3 kernel, stride 2, pad 1 → 3×2×2.
    let g1 = Geometry::new(5, 4, 2, 3, 1, 1).unwrap();
    let g2 = g1.next(3, 3, 2, 1).unwrap();
    let (batch, f2) = (2, 2);
    let mut rng = Rng(0x2C0);
    let inputs = vec![
        rng.mat(batch, g1.pixels(), 1.0),
        rng.mat(g1.patch(), 3, 1.0 / (g1.patch() as f64).sqrt()),
        rng.mat(1, 3, 0.3),
        rng.mat(g2.patch(), f2, 1.0 / (g2.patch() as f64).sqrt()),
        rng.mat(1, f2, 0.3),
        rng.mat(batch, g2.positions() * f2, 1.0),
        rng.mat(g1.patch(), 3, 1.0),
    ];
    let fd = fd_grads(&inputs, &[0, 1, 2, 3, 4], &mut |m| {
        let tape = Tape::new(Cpu);
        let ls = leaves_on(&tape, m)?;
        Ok(read_on(&tape, conv_second_order_scalar(&tape, &ls, &g1, &g2)?)?[0])
    })
    .expect("fd");
    assert!(
        inf_norm(&fd) > 1e-2,
        "second derivatives too small to test anything"
    );
    let cpu_got = conv_second_order_grads(Cpu, &inputs, &g1, &g2).expect("cpu");
    let gpu_got = conv_second_order_grads(gpu(), &inputs, &g1, &g2).expect("gpu");
    // The tolerances and floors of the other second-order tests.
    let floor = 1e-3 * inf_norm(&fd);
    let e_cpu = check_groups(
        "conv second order: CPU tape vs FD",
        &cpu_got,
        &fd,
        1e-6,
        floor,
    )
    .unwrap_or_else(|m| panic!("{m}"));
    let e_gpu = check_groups(
        "conv second order: GPU tape vs FD",
        &gpu_got,
        &fd,
        1e-3,
        floor,
    )
    .unwrap_or_else(|m| panic!("{m}"));
    eprintln!("conv second order: CPU vs FD {e_cpu:.2e}, GPU vs FD {e_gpu:.2e}");
}

// ---------------------------------------------------------------------------------------------
// 3. Tape semantics
// ---------------------------------------------------------------------------------------------

fn x_values() -> Mat {
    Rng(0x5E).mat(3, 2, 1.0)
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    // Small closed forms (≤ 4 terms of O(1) numbers) in f32 vs f64: relative 1e-6 per entry;
    // an entry below 1e-2 (small by cancellation) is held to 1e-8 absolute.
    check_groups(what, &[got.to_vec()], &[want.to_vec()], 1e-6, 1e-2)
        .unwrap_or_else(|m| panic!("{m}"));
}

fn semantics<B: Dev>(backend: B, dev: &str) -> Result<()> {
    let tape = Tape::new(backend);
    let xm = x_values();
    let x = tape.leaf(tape.backend().put(&xm)?);
    let xs = &xm.data;

    // detach stops gradients: d/dx Σ detach(x)·x = x, where Σ x·x gives 2x.
    let y = x.detach().mul(x)?.sum_all()?;
    let g = tape.grad(y, &[x], false)?[0];
    assert_close(&format!("{dev}: detach"), &read_on(&tape, g)?, xs);
    let g = tape.grad(x.mul(x)?.sum_all()?, &[x], false)?[0];
    assert_close(
        &format!("{dev}: no detach"),
        &read_on(&tape, g)?,
        &xs.iter().map(|v| 2.0 * v).collect::<Vec<_>>(),
    );

    // grad of a non-scalar, and a cotangent of the wrong shape: errors.
    let r = tape.grad(x.mul(x)?, &[x], false);
    assert!(
        matches!(r, Err(Error::Shape(_))),
        "{dev}: grad of a 3x2 value gave {r:?}"
    );
    let ones = tape.full(2, 3, 1.0)?;
    let r = tape.vjp(x.mul(x)?, ones, &[x], false);
    assert!(
        matches!(r, Err(Error::Shape(_))),
        "{dev}: vjp with a 2x3 cotangent for 3x2 gave {r:?}"
    );

    // A wrt that y does not depend on (an unused leaf, a value on a side branch, a leaf made
    // after y) gets zeros of its own shape.
    let unused = tape.leaf(tape.backend().put(&Rng(1).mat(2, 5, 1.0))?);
    let side = x.exp()?;
    let y = x.square()?.sum_all()?;
    let later = tape.leaf(tape.backend().put(&Rng(2).mat(4, 1, 1.0))?);
    let gs = tape.grad(y, &[unused, side, later, x], false)?;
    for (k, (g, shape)) in gs.iter().zip([(2, 5), (3, 2), (4, 1), (3, 2)]).enumerate() {
        assert_eq!(g.shape(), shape, "{dev}: gradient {k} shape");
        if k < 3 {
            assert!(
                read_on(&tape, *g)?.iter().all(|&v| v == 0.0),
                "{dev}: gradient {k} not zero"
            );
        }
    }

    // create_graph = false: the gradient's value is right but it is a leaf, so differentiating
    // it again w.r.t. x gives zeros; with create_graph = true the second derivative appears.
    // Also accumulation: x used three times in x·x·x.
    let cube = x.mul(x)?.mul(x)?.sum_all()?;
    let g_leaf = tape.grad(cube, &[x], false)?[0];
    let g_live = tape.grad(cube, &[x], true)?[0];
    let three_x2: Vec<f64> = xs.iter().map(|v| 3.0 * v * v).collect();
    assert_close(
        &format!("{dev}: d/dx Σx³ (detached)"),
        &read_on(&tape, g_leaf)?,
        &three_x2,
    );
    assert_close(
        &format!("{dev}: d/dx Σx³ (graph)"),
        &read_on(&tape, g_live)?,
        &three_x2,
    );
    let again = tape.grad(g_leaf.sum_all()?, &[x], false)?[0];
    assert!(
        read_on(&tape, again)?.iter().all(|&v| v == 0.0),
        "{dev}: a detached gradient still depends on x"
    );
    let second = tape.grad(g_live.sum_all()?, &[x], false)?[0];
    assert_close(
        &format!("{dev}: d²/dx² Σx³"),
        &read_on(&tape, second)?,
        &xs.iter().map(|v| 6.0 * v).collect::<Vec<_>>(),
    );
    // The detached gradient is a leaf one can differentiate with respect to itself.
    let own = tape.grad(g_leaf.mul(g_leaf)?.sum_all()?, &[g_leaf], false)?[0];
    assert_close(
        &format!("{dev}: d/dg Σg²"),
        &read_on(&tape, own)?,
        &three_x2.iter().map(|v| 2.0 * v).collect::<Vec<_>>(),
    );

    // Accumulation across different ops: Σx² + Σx + Σ_rows ⟨x, x⟩ + Σ(x xᵀ) has gradient
    // 2x + 1 + 2x + 2·(column sums of x, on every row).
    let y = x
        .square()?
        .sum_all()?
        .add(x.sum_all()?)?
        .add(x.rowdot(x)?.sum_all()?)?
        .add(x.matmul_t(x, false, true)?.sum_all()?)?;
    let g = tape.grad(y, &[x], false)?[0];
    let (r, c) = (xm.rows, xm.cols);
    let colsum: Vec<f64> = (0..c).map(|j| (0..r).map(|i| xm.at(i, j)).sum()).collect();
    let want: Vec<f64> = (0..r * c)
        .map(|k| 4.0 * xs[k] + 1.0 + 2.0 * colsum[k % c])
        .collect();
    assert_close(
        &format!("{dev}: accumulation over several ops"),
        &read_on(&tape, g)?,
        &want,
    );
    Ok(())
}

#[test]
fn tape_semantics() {
    semantics(Cpu, "CPU").expect("cpu");
    semantics(gpu(), "GPU").expect("gpu");
}
