//! The WGSL module of a fused step and its kernel list, generated from the plan: the seam's
//! struct declarations with this plan's values as `const`s, the library files, the matmul
//! cores its kernels call and their entry points (the tile kernel's stage list, or one
//! kernel per stage in the layers shape). Pure text — no GPU calls — so that it can be read
//! and tested on its own.

use std::fmt::Write;

use super::core::{Core, Family};
use super::plan::{
    sweep_family, KernelSpec, Phase, Plan, Shape, Specialise, Stage, TileShape, ROWS_WG,
};
use super::seam::{self, mode, GradSweep, Io, Layer, Mvl, StepParams, Sweep, Tile};

impl Plan {
    fn mvl(&self, s: &Specialise) -> Mvl {
        Mvl {
            act: self.net.act.code(),
            rescale: s.rescale as u32,
            cv: s.control_variate as u32,
            sphere: s.sphere as u32,
            ball: s.ball as u32,
            opt: s.opt_code,
            nl: self.layers() as u32,
            nsn: self.sn_slots.len() as u32,
        }
    }

    /// Invocations per workgroup of the reductions and the tile kernel.
    fn wg_size(&self) -> usize {
        match self.shape {
            Shape::Tile(t) => t.size,
            Shape::Layers(l) => l.size,
        }
    }

    /// The generated head of the step's module: the seam's struct declarations and this
    /// plan's values of them, and the sizes the library files use.
    pub fn header(&self, s: &Specialise) -> String {
        let mut h = String::new();
        let w = &mut h;
        for decl in [
            StepParams::WGSL,
            Io::WGSL,
            Layer::WGSL,
            Sweep::WGSL,
            GradSweep::WGSL,
            Mvl::WGSL,
            Tile::WGSL,
        ] {
            let _ = writeln!(w, "{decl}");
        }
        let _ = writeln!(w, "const IO = {};", self.io.wgsl_value());
        let _ = writeln!(w, "const M = {};", self.mvl(s).wgsl_value());
        let table: Vec<String> = self.layer_table().iter().map(|l| l.wgsl_value()).collect();
        let _ = writeln!(
            w,
            "const LAYERS = array<Layer, {}>(\n    {}\n);",
            table.len(),
            table.join(",\n    ")
        );
        let tile = match self.shape {
            Shape::Tile(t) => Tile {
                rows: t.rows as u32,
                groups: self.groups as u32,
                size: t.size as u32,
                subgroup: s.subgroup.unwrap_or(0) as u32,
            },
            Shape::Layers(_) => Tile::default(),
        };
        let _ = writeln!(w, "const TILE = {};", tile.wgsl_value());
        let pv = self
            .sn_slots
            .iter()
            .enumerate()
            .map(|(m, _)| self.widths[m] + self.widths[m + 1])
            .max()
            .unwrap_or(1);
        let wgw = match self.shape {
            Shape::Tile(t) if t.workgroup_weights => self.theta_len,
            _ => 1,
        };
        let (live_parts, live_scal) = (self.io.parts, self.io.scal_slots);
        let consts: [(&str, usize); 18] = [
            ("WG_SIZE", self.wg_size()),
            ("ROWS_WG", ROWS_WG),
            ("PV_LEN", pv),
            ("NSN_MAX", self.sn_slots.len().max(1)),
            ("WGW_LEN", wgw),
            ("NTILES", self.tiles),
            ("LIVE_PARTS", live_parts as usize),
            ("LIVE_SCAL", live_scal as usize),
            ("SCAL_FIXED", seam::SCAL_FIXED as usize),
            ("MODE_VALUE", mode::VALUE as usize),
            ("MODE_DIFF", mode::DIFF as usize),
            ("MODE_ADJOINT", mode::ADJOINT as usize),
            ("CTL_T_IN", seam::ctl::T_IN as usize),
            ("CTL_T_OUT", seam::ctl::T_OUT as usize),
            ("CTL_RING", seam::ctl::RING as usize),
            ("FLAG_TRAIN", seam::flags::TRAIN as usize),
            ("FLAG_GIVEN_ROWS", seam::flags::GIVEN_ROWS as usize),
            ("FLAG_GIVEN_NOISE", seam::flags::GIVEN_NOISE as usize),
        ];
        for (name, v) in consts {
            let _ = writeln!(w, "const {name}: u32 = {v}u;");
        }
        for stage in self.stages(s) {
            match stage {
                Stage::Sweep(name, sw, _) => {
                    let _ = writeln!(w, "const SW_{name} = {};", sw.wgsl_value());
                }
                Stage::Grad(l, g, _) => {
                    let _ = writeln!(w, "const GR_{l} = {};", g.wgsl_value());
                }
                _ => {}
            }
        }
        h
    }

    /// The whole WGSL module of a step: every kernel of every mode of this shape is one of
    /// its entry points.
    pub fn module(&self, s: &Specialise) -> String {
        self.module_for(s, None)
    }

    /// The module with only entry point `only` (and what it calls), or all of them.
    pub fn module_for(&self, s: &Specialise, only: Option<&str>) -> String {
        let mut out = self.header(s);
        out.push_str(concat!(
            include_str!("../../shaders/functions.wgsl"),
            include_str!("../../shaders/philox_lib.wgsl"),
            include_str!("../../shaders/optim_lib.wgsl"),
            include_str!("../../shaders/fused/prelude.wgsl"),
            include_str!("../../shaders/fused/rows.wgsl"),
            include_str!("../../shaders/fused/layers.wgsl"),
            include_str!("../../shaders/fused/params.wgsl"),
        ));
        let stages = self.stages(s);
        // The matmul cores this module's entry points call. Only those: naga writes every
        // function of a module into each pipeline's SPIR-V, and a driver compiles an unused
        // core with its epilogue inlined for every mode (lavapipe: a second each).
        let mut cores: Vec<(Family, Core)> = Vec::new();
        let tile_module = matches!(self.shape, Shape::Tile(_));
        for st in &stages {
            let (fc, entry) = match st {
                Stage::Sweep(name, sw, c) => ((sweep_family(sw), *c), format!("k_{name}")),
                Stage::Grad(l, _, c) => ((Family::Grad, *c), format!("k_grad_{l}")),
                _ => continue,
            };
            let wanted = tile_module || only.is_none_or(|o| o == entry);
            if wanted && !cores.contains(&fc) {
                cores.push(fc);
            }
        }
        let tile = matches!(self.shape, Shape::Tile(_));
        for (f, c) in &cores {
            out.push_str(&c.source(*f, tile));
            if tile {
                out.push_str(&c.tile_source(*f));
            }
        }
        match self.shape {
            Shape::Tile(t) => {
                out.push_str(include_str!("../../shaders/fused/tile.wgsl"));
                if only.is_none_or(|e| e == "tile") {
                    out.push_str(&self.tile_entry(&stages, t, s));
                }
            }
            Shape::Layers(_) => {
                out.push_str(include_str!("../../shaders/fused/layers_entries.wgsl"));
                for st in &stages {
                    let e = self.layers_entry(st);
                    if only.is_none_or(|o| e.contains(&format!("fn {o}("))) {
                        out.push_str(&e);
                    }
                }
            }
        }
        out
    }

    /// The tile kernel: every stage but the update, for each tile of the workgroup.
    fn tile_entry(&self, stages: &[Stage], t: TileShape, s: &Specialise) -> String {
        let lane = match s.subgroup {
            Some(_) => ", @builtin(subgroup_invocation_id) lane: u32",
            None => "",
        };
        let mut w = String::new();
        let _ = writeln!(
            w,
            "@compute @workgroup_size(WG_SIZE)\nfn tile(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>{lane}) {{"
        );
        if s.subgroup.is_none() {
            let _ = writeln!(w, "    let lane = 0u;");
        }
        // A training step hands the update t + 1 (see seam::ctl).
        let _ = writeln!(
            w,
            "    let w = wid.x;\n    if (w == 0u && lid == 0u) {{ ctl[CTL_T_OUT] = select(ctl[CTL_T_OUT], ctl[CTL_T_IN] + 1u, flag(FLAG_TRAIN)); }}"
        );
        for st in stages {
            match st {
                Stage::Sigma => {
                    let _ = writeln!(w, "    all_sigmas(lid, flag(FLAG_TRAIN), w == 0u);");
                }
                Stage::Input => {
                    if t.workgroup_weights {
                        let _ = writeln!(w, "    tile_load_weights(lid);");
                    }
                    let _ = writeln!(w, "    tile_sync();\n    let slab0 = w * TILE.rows;");
                    // Tiles past the launch's rows are skipped (each workgroup still takes its
                    // first, to write its slot): they would overwrite the per-sample values an
                    // evaluation of fewer rows than the batch keeps in the slabs.
                    let _ = writeln!(
                        w,
                        "    for (var tile = w; tile < NTILES && (tile == w || tile * TILE.rows < st.rows); tile += TILE.groups) {{\n    let local0 = tile * TILE.rows;\n    let first = tile == w;"
                    );
                    let _ = writeln!(w, "    tile_input(lid, slab0, local0);\n    tile_sync();");
                }
                Stage::Sweep(name, sw, core) => {
                    let _ = writeln!(
                        w,
                        "    tile_{}(SW_{name}, lid, lane, slab0, tile_scale(LAYERS[{}]));\n    tile_sync();",
                        core.fn_name(sweep_family(sw)),
                        sw.layer - 1
                    );
                }
                Stage::Step => {
                    let _ = writeln!(w, "    tile_step(lid, slab0);\n    tile_sync();");
                }
                Stage::Diff => {
                    let _ = writeln!(w, "    tile_diff(lid, slab0, local0);\n    tile_sync();");
                }
                Stage::Adj => {
                    let _ = writeln!(w, "    tile_adj(lid, slab0, local0);\n    tile_sync();");
                }
                Stage::Dots => {
                    let _ = writeln!(w, "    tile_dots(lid, slab0);\n    tile_sync();");
                }
                Stage::Sums => {
                    let _ = writeln!(w, "    tile_scalars(lid, w, slab0, first);");
                }
                Stage::Grad(l, _, core) => {
                    let _ = writeln!(
                        w,
                        "    tile_{}(GR_{l}, lid, lane, slab0, w, first);",
                        core.fn_name(Family::Grad)
                    );
                }
                Stage::Update => {
                    let _ = writeln!(w, "    tile_sync();\n    }}");
                }
            }
        }
        let _ = writeln!(w, "}}");
        w
    }

    /// The layers shape's entry point of a sweep or gradient stage (the others are in
    /// shaders/fused/layers_entries.wgsl).
    fn layers_entry(&self, st: &Stage) -> String {
        let (name, core, call, rows, cols) = match st {
            Stage::Sweep(name, sw, core) => (
                name.clone(),
                *core,
                format!(
                    "{}(SW_{name}, r0, c0, IO.rows, lane, inv_sigma(LAYERS[{}]))",
                    core.fn_name(sweep_family(sw)),
                    sw.layer - 1
                ),
                "IO.rows".to_string(),
                format!("SW_{name}.n"),
            ),
            Stage::Grad(l, _, core) => (
                format!("grad_{l}"),
                *core,
                format!(
                    "{}(GR_{l}, r0, c0, gz * {kr}u, min(IO.rows, (gz + 1u) * {kr}u), lane, gz, st.acc == 0u)",
                    core.fn_name(Family::Grad),
                    kr = self.chunk_rows
                ),
                format!("GR_{l}.m"),
                format!("GR_{l}.n"),
            ),
            _ => return String::new(),
        };
        match core {
            Core::Subgroup { s, rb, cb } => format!(
                "@compute @workgroup_size(64)
fn k_{name}(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {{
    let r0 = wid.y * {}u;
    let c0 = (wid.x * {}u + li / {s}u) * {}u;
    let gz = wid.z;
    {call};
}}
",
                s * rb,
                64 / s,
                s * cb
            ),
            Core::Direct { rb, cb } => {
                let (wx, wy) = if cb <= 8 && rb == super::core::NARROW_RB && cb < 8 {
                    (1, 64)
                } else {
                    (8, 8)
                };
                format!(
                    "@compute @workgroup_size({wx}, {wy})
fn k_{name}(@builtin(global_invocation_id) gid: vec3<u32>) {{
    let r0 = gid.y * {rb}u;
    let c0 = gid.x * {cb}u;
    let gz = gid.z;
    let lane = 0u;
    if (r0 >= {rows} || c0 >= {cols}) {{ return; }}
    {call};
}}
"
                )
            }
        }
    }

    /// The grid of a layers-shape sweep or gradient kernel with `m` output rows.
    fn layers_grid(core: Core, m: usize, n: usize, z: usize) -> [u32; 3] {
        let z = z as u32;
        match core {
            Core::Subgroup { s, rb, cb } => [
                n.div_ceil(s * cb).div_ceil(64 / s) as u32,
                m.div_ceil(s * rb) as u32,
                z,
            ],
            Core::Direct { rb, cb } if cb < 8 && rb == super::core::NARROW_RB => {
                [1, m.div_ceil(rb).div_ceil(64) as u32, z]
            }
            Core::Direct { rb, cb } => [
                n.div_ceil(cb).div_ceil(8) as u32,
                m.div_ceil(rb).div_ceil(8) as u32,
                z,
            ],
        }
    }

    /// The kernels of one step, in order (the mode is a value of the parameter block).
    pub fn kernels(&self, s: &Specialise) -> Vec<KernelSpec> {
        let update = KernelSpec {
            label: "update".into(),
            entry: "update".into(),
            phase: Phase::Tail,
            groups: {
                let groups = self.theta_len.div_ceil(256);
                let gx = groups.min(65535);
                [gx as u32, groups.div_ceil(gx) as u32, 1]
            },
        };
        if let Shape::Tile(t) = self.shape {
            let transpose = KernelSpec {
                label: "transpose".into(),
                entry: "transpose".into(),
                phase: Phase::Head,
                groups: update.groups,
            };
            let first = (t.transposed_weights && !t.workgroup_weights).then_some(transpose);
            return first
                .into_iter()
                .chain([
                    KernelSpec {
                        label: "tile".into(),
                        entry: "tile".into(),
                        phase: Phase::Body,
                        groups: [self.groups as u32, 1, 1],
                    },
                    update,
                ])
                .collect();
        }
        let rows = [self.ws_rows.div_ceil(ROWS_WG) as u32, 1, 1];
        let row = |label: &str, groups: [u32; 3], phase: Phase| KernelSpec {
            label: label.into(),
            entry: label.into(),
            phase,
            groups,
        };
        self.stages(s)
            .into_iter()
            .map(|st| match st {
                Stage::Sigma => row(
                    "power_iteration",
                    [self.sn_slots.len() as u32, 1, 1],
                    Phase::Head,
                ),
                Stage::Input => row("rows_input", rows, Phase::Body),
                Stage::Sweep(name, sw, core) => KernelSpec {
                    label: name.replace('_', " "),
                    entry: format!("k_{name}"),
                    phase: Phase::Body,
                    groups: Self::layers_grid(core, self.ws_rows, sw.n as usize, 1),
                },
                Stage::Step => row("rows_step", rows, Phase::Body),
                Stage::Diff => row("rows_diff", rows, Phase::Body),
                Stage::Adj => row("rows_adj", rows, Phase::Body),
                Stage::Dots => row("rows_dots", rows, Phase::Body),
                Stage::Sums => row("sums", [self.io.scal_len, 1, 1], Phase::Body),
                Stage::Grad(l, g, core) => KernelSpec {
                    label: format!("grad {l}"),
                    entry: format!("k_grad_{l}"),
                    phase: Phase::Body,
                    groups: Self::layers_grid(core, g.m as usize, g.n as usize, self.chunks),
                },
                Stage::Update => update.clone(),
            })
            .collect()
    }
}
