//! Chains of elementwise dispatches fused into one generated kernel, at flush time.
//!
//! The tape records every op at once, so a formula such as tanh(x·W + b) or g ⊙ f′(z) is a
//! run of dispatches over the same elements, each reading what the previous one wrote. On
//! lavapipe each dispatch costs ~20–45 µs and each element access a loop over the SIMD
//! lanes; on a GPU each is a launch and a round trip through memory. So, as tinygrad's
//! scheduler does, the queue fuses them — lazily, when the pending list is submitted, below
//! the tape: its rules (and their second and third orders) are unchanged.
//!
//! A chain is a run of elementwise dispatches (same elements, same vec4 form) in which each
//! one reads the output of an earlier one elementwise; it may reach past up to `LOOKAHEAD`
//! other dispatches for its next member, which then runs before them where that changes no
//! value (`independent`). The fused kernel takes the first member's place. It loads
//! each outside input once, keeps the intermediate values in registers, and stores every
//! output that anything may still read: the last one, and any other whose buffer is held
//! outside the pending list (a tensor the caller keeps) or read by a pending dispatch
//! outside the chain. An output that only the chain reads is never written. The ops are the
//! same f32 operations in the same order (a driver may contract a product and a sum into an
//! FMA once they are in one kernel, so the last bit can differ from the unfused run; the
//! fused run is as reproducible as any other).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use crate::error::Result;

use super::launch::{Bind, Binding, Dispatch, Kernel, ParamBlock, Params, Pipe, PARAM_BYTES};
use super::Gpu;

/// How a binary op's right operand is indexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pattern {
    Same,
    Row,
    Col,
    Scalar,
}

/// An elementwise dispatch, symbolically.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum EwOp {
    /// a ∘ b, code as `ops::BinOp`.
    Binary { code: u32, b: Pattern },
    /// f⁽ᵒʳᵈᵉʳ⁾(a), code as `ops::Fun`.
    Map { code: u32, order: u32 },
    /// s·a + t.
    Affine { s: f32, t: f32 },
    /// The constant t (no input).
    Fill { t: f32 },
}

/// What the fuser knows of a recorded elementwise dispatch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Ew {
    pub op: EwOp,
    /// Elements and output columns.
    pub n: u32,
    pub cols: u32,
    pub vec4: bool,
}

impl Ew {
    /// The description of a built-in dispatch, where it is a fusable elementwise one.
    pub(crate) fn of(kernel: Kernel, p: &Params) -> Option<Ew> {
        use Kernel::*;
        let vec4 = matches!(
            kernel,
            BinarySame4 | BinaryRow4 | BinaryCol4 | Affine4 | Map4
        );
        let binary = |b| EwOp::Binary { code: p.code, b };
        let op = match kernel {
            BinarySame | BinarySame4 => binary(Pattern::Same),
            BinaryRow | BinaryRow4 => binary(Pattern::Row),
            BinaryCol | BinaryCol4 => binary(Pattern::Col),
            BinaryScalar => binary(Pattern::Scalar),
            Map | Map4 => EwOp::Map {
                code: p.code,
                order: p.u[0],
            },
            Affine | Affine4 if p.code == 1 => EwOp::Fill { t: p.f[1] },
            Affine | Affine4 => EwOp::Affine {
                s: p.f[0],
                t: p.f[1],
            },
            _ => return None,
        };
        Some(Ew {
            op,
            n: p.n,
            cols: p.cols,
            vec4,
        })
    }

    /// Constants it takes from the parameter block.
    fn constants(&self) -> usize {
        match self.op {
            EwOp::Affine { .. } => 2,
            EwOp::Fill { .. } => 1,
            _ => 0,
        }
    }

    /// Inputs read: a (binding 0) and, for binary ops, b (binding 1).
    fn arity(&self) -> usize {
        match self.op {
            EwOp::Binary { .. } => 2,
            EwOp::Map { .. } | EwOp::Affine { .. } => 1,
            EwOp::Fill { .. } => 0,
        }
    }
}

/// Constants a fused kernel takes from its parameter block (after n and cols): affine
/// factors and fill values travel there rather than in the source, so a chain whose
/// constants change every step (an annealed temperature, a step size) compiles once.
const MAX_CONSTANTS: usize = 28;

/// Same buffer, offset and size.
fn same(a: &Binding, b: &Binding) -> bool {
    a.0.id == b.0.id && a.1 == b.1 && a.2 == b.2
}

fn buffers(d: &Dispatch) -> &[Binding] {
    match &d.bind {
        Bind::Buffers { buffers, .. } | Bind::Custom { buffers, .. } => buffers,
        Bind::Prebuilt(_) => &[],
    }
}

/// Dispatches a chain may reach past to find its next member (which then runs before
/// them, where that changes no value: see `independent`).
const LOOKAHEAD: usize = 3;

/// Dispatches being grown into a chain.
struct Chain {
    /// The members' indices in the list, in order (the fused kernel takes the first's place).
    members: Vec<usize>,
    /// Inputs from outside the chain (distinct bindings), as (dispatch, binding slot) of
    /// their first use: the chain holds no buffer itself, so that reference counts say who
    /// else does.
    outside: Vec<(usize, usize)>,
}

type Key = (u64, u64, u64);

fn key(b: &Binding) -> Key {
    (b.0.id, b.1, b.2)
}

/// Replace every chain of two or more fusable dispatches in `list` by one fused dispatch.
pub(crate) fn fuse(gpu: &Gpu, list: Vec<Dispatch>) -> Result<Vec<Dispatch>> {
    if !gpu.fuses() || list.len() < 2 {
        return Ok(list);
    }
    // Each buffer's bindings in the list: a buffer with no holder besides these is dead
    // after its last use in the list.
    let mut uses: HashMap<u64, usize> = HashMap::new();
    for d in &list {
        for b in buffers(d) {
            *uses.entry(b.0.id).or_default() += 1;
        }
    }
    let max_bindings = (gpu.report().limits.max_storage_buffers_per_shader_stage as usize).min(8);
    // Fused dispatches by their chain's first member; which dispatches a chain took.
    let mut fused: HashMap<usize, Dispatch> = HashMap::new();
    let mut taken = vec![false; list.len()];
    for i in 0..list.len() {
        if taken[i] {
            continue;
        }
        let chain = grow(&list, i, &taken, max_bindings, &uses);
        if chain.members.len() < 2 {
            continue;
        }
        fused.insert(i, build(gpu, &list, &chain, &uses)?);
        for &j in &chain.members {
            taken[j] = true;
        }
    }
    if fused.is_empty() {
        return Ok(list);
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, d) in list.into_iter().enumerate() {
        match fused.remove(&i) {
            Some(f) => out.push(f),
            None if taken[i] => {}
            None => out.push(d),
        }
    }
    Ok(out)
}

/// Buffers a dispatch writes and reads (by id); None where it cannot be told (bindings
/// made elsewhere, e.g. the fused MVL step's).
fn access(d: &Dispatch) -> Option<(Vec<u64>, Vec<u64>)> {
    match &d.bind {
        Bind::Buffers { layout, buffers } => {
            // Layout 0: inputs, then the output; layout 1 (the optimiser): the gradient, then
            // three read-write buffers.
            let first_written = if *layout == 0 { buffers.len() - 1 } else { 1 };
            let ids = |r: &[Binding]| r.iter().map(|b| b.0.id).collect::<Vec<_>>();
            Some((
                ids(&buffers[first_written..]),
                ids(&buffers[..first_written]),
            ))
        }
        _ => None,
    }
}

/// Whether `m` can run before `skipped` (which came before it) with the same results: none
/// of them writes what `m` reads or writes, and none reads what `m` writes.
fn independent(list: &[Dispatch], m: usize, skipped: &[usize]) -> bool {
    let Some((mw, mr)) = access(&list[m]) else {
        return false;
    };
    skipped.iter().all(|&s| match access(&list[s]) {
        Some((sw, sr)) => {
            !sw.iter().any(|b| mr.contains(b) || mw.contains(b))
                && !sr.iter().any(|b| mw.contains(b))
        }
        None => false,
    })
}

/// The longest fusable chain starting at `start`.
fn grow(
    list: &[Dispatch],
    start: usize,
    taken: &[bool],
    max_bindings: usize,
    uses: &HashMap<u64, usize>,
) -> Chain {
    let mut chain = Chain {
        members: Vec::new(),
        outside: Vec::new(),
    };
    let Some(first) = list[start].ew else {
        return chain;
    };
    // The members' outputs (dispatch index, key), the outside inputs' keys.
    let mut outputs: Vec<(usize, Key)> = Vec::new();
    let mut outside: Vec<Key> = Vec::new();
    let mut constants = 0;
    // Bindings of each buffer among the chain's members so far.
    let mut inside: HashMap<u64, usize> = HashMap::new();
    // Dispatches passed over (they run after the fused kernel).
    let mut skipped: Vec<usize> = Vec::new();
    for (j, d) in list.iter().enumerate().skip(start) {
        if taken[j] {
            continue; // moved into an earlier chain, which runs before this one
        }
        // A dispatch that cannot join is passed over (up to LOOKAHEAD of them) or ends
        // the chain.
        let pass = |skipped: &mut Vec<usize>| {
            skipped.push(j);
            skipped.len() <= LOOKAHEAD
        };
        let Some(ew) = d.ew else {
            if pass(&mut skipped) {
                continue;
            }
            break;
        };
        if ew.n != first.n || ew.cols != first.cols || ew.vec4 != first.vec4 {
            if pass(&mut skipped) {
                continue;
            }
            break;
        }
        let bufs = buffers(d);
        let inputs = &bufs[..ew.arity()];
        let out = key(&bufs[2]);
        let from_chain: Vec<bool> = inputs
            .iter()
            .map(|b| outputs.iter().any(|(_, o)| *o == key(b)))
            .collect();
        if j > start {
            // Joins only if it reads the chain, elementwise (a chain value through a
            // broadcast pattern would need other elements), and can run before what the
            // chain passed over.
            let broadcast_b = matches!(ew.op, EwOp::Binary { b, .. } if b != Pattern::Same);
            if !from_chain.iter().any(|&c| c)
                || (broadcast_b && from_chain[1])
                || !independent(list, j, &skipped)
            {
                if pass(&mut skipped) {
                    continue;
                }
                break;
            }
        }
        let new_outside: Vec<usize> = (0..inputs.len())
            .filter(|&k| !from_chain[k] && !outside.contains(&key(&inputs[k])))
            .collect();
        // Outside inputs overlapping a chain output (or an output overlapping an outside
        // input or another output) would race between invocations: stop before.
        let written: Vec<u64> = outputs.iter().map(|(_, o)| o.0).chain([out.0]).collect();
        if new_outside
            .iter()
            .any(|&k| written.contains(&inputs[k].0.id))
            || outside.iter().any(|o| o.0 == out.0)
            || outputs.iter().any(|(_, o)| o.0 == out.0)
        {
            break;
        }
        // Bindings if the chain ended with this op: its outside inputs, its last output, and
        // the earlier outputs that something besides the chain may still read.
        let mut inside_then = inside.clone();
        for b in inputs.iter().chain([&bufs[2]]) {
            *inside_then.entry(b.0.id).or_default() += 1;
        }
        let kept = outputs
            .iter()
            .filter(|(m, _)| must_store(&buffers(&list[*m])[2], uses, &inside_then))
            .count();
        if outside.len() + new_outside.len() + kept + 1 > max_bindings
            || constants + ew.constants() > MAX_CONSTANTS
        {
            break;
        }
        inside = inside_then;
        constants += ew.constants();
        for k in new_outside {
            outside.push(key(&inputs[k]));
            chain.outside.push((j, k));
        }
        outputs.push((j, out));
        chain.members.push(j);
    }
    chain
}

/// Whether a chain's output may be read after the chain: its buffer is held outside the
/// pending list (a tensor), or bound by a pending dispatch outside the chain. `inside`
/// counts the buffer's bindings within the chain, `uses` within the whole list.
fn must_store(o: &Binding, uses: &HashMap<u64, usize>, inside: &HashMap<u64, usize>) -> bool {
    let listed = uses[&o.0.id];
    Arc::strong_count(&o.0) > listed || listed > inside.get(&o.0.id).copied().unwrap_or(0)
}

/// The fused dispatch of a chain.
fn build(
    gpu: &Gpu,
    list: &[Dispatch],
    chain: &Chain,
    uses: &HashMap<u64, usize>,
) -> Result<Dispatch> {
    let members: Vec<&Dispatch> = chain.members.iter().map(|&j| &list[j]).collect();
    let first = members[0].ew.expect("a chain member is elementwise");
    // Which outputs to store: the last, and any that something besides the chain may read.
    let inside: HashMap<u64, usize> =
        members
            .iter()
            .flat_map(|d| buffers(d))
            .fold(HashMap::new(), |mut m, b| {
                *m.entry(b.0.id).or_default() += 1;
                m
            });
    let stored: Vec<bool> = members
        .iter()
        .enumerate()
        .map(|(j, d)| j + 1 == members.len() || must_store(&buffers(d)[2], uses, &inside))
        .collect();
    let outside: Vec<Binding> = chain
        .outside
        .iter()
        .map(|&(d, k)| buffers(&list[d])[k].clone())
        .collect();
    let source = source(&members, &outside, &stored, first.vec4);
    let mut read_only = vec![true; outside.len()];
    read_only.extend(stored.iter().filter(|&&s| s).map(|_| false));
    let layout = gpu.shared_layout(&read_only)?;
    let label = members
        .iter()
        .map(|d| d.label())
        .collect::<Vec<_>>()
        .join("+");
    let kernel = gpu.cached_kernel(&layout, &source, &format!("fused {label}"), "chain")?;
    let mut bindings = outside;
    bindings.extend(
        members
            .iter()
            .zip(&stored)
            .filter(|(_, &s)| s)
            .map(|(d, _)| buffers(d)[2].clone()),
    );
    Ok(Dispatch {
        pipe: Pipe::Custom(kernel),
        bind: Bind::Custom {
            layout,
            buffers: bindings,
        },
        params: block(&members, first),
        groups: members[0].groups,
        ew: None,
    })
}

/// The fused kernel's parameter block (`ChainParams`): n, cols, then the members'
/// constants in order.
fn block(members: &[&Dispatch], first: Ew) -> ParamBlock {
    let mut b = [0u32; PARAM_BYTES / 4];
    b[0] = first.n;
    b[1] = first.cols;
    let mut k = 4;
    for d in members {
        let consts: &[f32] = match d.ew.expect("a chain member is elementwise").op {
            EwOp::Affine { s, t } => &[s, t],
            EwOp::Fill { t } => &[t],
            _ => &[],
        };
        for c in consts {
            b[k] = c.to_bits();
            k += 1;
        }
    }
    b
}

/// WGSL of a chain: inputs x0.., stored outputs y0.., values v0.. in registers.
fn source(members: &[&Dispatch], outside: &[Binding], stored: &[bool], vec4: bool) -> String {
    let ty = if vec4 { "vec4<f32>" } else { "f32" };
    let mut s = String::new();
    s.push_str(
        "// A fused elementwise chain (src/gpu/fuse.rs).
struct ChainParams {
    n: u32,     // elements
    cols: u32,  // output columns
    pad0: u32,
    pad1: u32,
    c: array<vec4<f32>, 7>, // the members' constants, in order
}
@group(0) @binding(0) var<uniform> p: ChainParams;
",
    );
    s.push_str(include_str!("../../shaders/functions.wgsl"));
    for k in 0..outside.len() {
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<storage, read> x{k}: array<{ty}>;",
            k + 1
        );
    }
    let mut y = 0;
    for &st in stored {
        if st {
            let _ = writeln!(
                s,
                "@group(0) @binding({}) var<storage, read_write> y{y}: array<{ty}>;",
                outside.len() + y + 1
            );
            y += 1;
        }
    }
    let w = if vec4 { 4 } else { 1 };
    let _ = writeln!(
        s,
        "@compute @workgroup_size(256)
fn chain(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= p.n / {w}u) {{ return; }}"
    );
    // The register or load expression for input binding b of member j with pattern pat.
    let operand = |j: usize, b: &Binding, pat: Pattern| -> String {
        if let Some(src) = (0..j).rev().find(|&m| same(&buffers(members[m])[2], b)) {
            return format!("v{src}");
        }
        let k = outside
            .iter()
            .position(|o| same(o, b))
            .expect("an input is a chain value or an outside input");
        match (pat, vec4) {
            (Pattern::Same, _) => format!("x{k}[i]"),
            (Pattern::Row, true) => format!("x{k}[i % (p.cols / 4u)]"),
            (Pattern::Row, false) => format!("x{k}[i % p.cols]"),
            (Pattern::Col, true) => {
                format!("vec4<f32>(x{k}[(4u * i / p.cols) / 4u][(4u * i / p.cols) % 4u])")
            }
            (Pattern::Col, false) => format!("x{k}[i / p.cols]"),
            (Pattern::Scalar, _) => format!("{ty}(x{k}[0])"),
        }
    };
    let mut next_constant = 0;
    let mut constant = || {
        let k = next_constant;
        next_constant += 1;
        format!("p.c[{}][{}]", k / 4, k % 4)
    };
    for (j, d) in members.iter().enumerate() {
        let ew = d.ew.expect("a chain member is elementwise");
        let bufs = buffers(d);
        let expr = match ew.op {
            EwOp::Binary { code, b } => {
                let x = operand(j, &bufs[0], Pattern::Same);
                let yv = operand(j, &bufs[1], b);
                let op = ["+", "-", "*", "/"][code.min(3) as usize];
                format!("{x} {op} {yv}")
            }
            EwOp::Map { code, order } => {
                let x = operand(j, &bufs[0], Pattern::Same);
                if vec4 {
                    let _ = writeln!(s, "    let a{j} = {x};");
                    let c = |e: &str| format!("fun({code}u, {order}u, a{j}.{e})");
                    format!("vec4<f32>({}, {}, {}, {})", c("x"), c("y"), c("z"), c("w"))
                } else {
                    format!("fun({code}u, {order}u, {x})")
                }
            }
            EwOp::Affine { .. } => {
                let x = operand(j, &bufs[0], Pattern::Same);
                let (a, t) = (constant(), constant());
                format!("{a} * {x} + {t}")
            }
            EwOp::Fill { .. } => format!("{ty}({})", constant()),
        };
        let _ = writeln!(s, "    let v{j} = {expr};");
    }
    let mut y = 0;
    for (j, &st) in stored.iter().enumerate() {
        if st {
            let _ = writeln!(s, "    y{y}[i] = v{j};");
            y += 1;
        }
    }
    s.push_str("}\n");
    s
}
