//! Density figures as PNG files, with no plotting library: heatmap panels side by side
//! ("true density" next to "learned density"), each with a frame, tick marks with their values,
//! the axis names x₁ (below) and x₂ (left), a title, then one colour bar (right) and one
//! caption for the whole figure.
//!
//! Everything here is our own small code — the rasteriser, the viridis colour map (linear
//! interpolation between ten control points) and a 5×7 pixel bitmap font for ASCII 32..=126,
//! drawn at 2× — except PNG encoding, which the `png` crate does.
//!
//! ```no_run
//! use wmvl::plot::{density_panels, log_density_to_density, Grid, Heatmap};
//! # fn main() -> wmvl::Result<()> {
//! let grid = Grid::new(-4.0, 4.0, -4.0, 4.0, 128, 128)?;
//! let pts = grid.points(); // cell centres, row-major, top row (highest y) first
//! let logp: Vec<f64> = pts.iter().map(|[x, y]| -(x * x + y * y) / 2.0).collect();
//! let panel = Heatmap::on_grid("true density", &grid, log_density_to_density(&logp));
//! density_panels("/tmp/density.png", &grid, &[panel], "standard normal")?;
//! # Ok(()) }
//! ```
//!
//! **Colour scale.** Each panel is normalised to its *own* `[min, max]`: its smallest value is
//! drawn in the darkest colour of the map (viridis purple, [`viridis`]`(0.0)`), its largest in
//! the brightest (viridis yellow, [`viridis`]`(1.0)`), linearly in between. Two panels' colours
//! therefore compare *shapes*, not absolute heights — which is what is wanted when the learned
//! density is only known up to its normalising constant. A constant panel is drawn in the
//! middle colour, [`viridis`]`(0.5)`. The colour bar right of the panels shows the map from
//! `min` (bottom) to `max` (top), which holds for every panel.
//!
//! **Ticks.** Steps of 1, 2 or 5 × 10^k: integers for ranges of 5 units or more, fractions
//! (about five ticks) for narrower ones; labels are thinned so they never overlap.
//!
//! **Pixels.** Each grid cell becomes a square block of `c × c` pixels, with `c` the integer
//! that brings the longer side of the grid closest to 320 pixels (at least 1), so no cell is
//! ever dropped or blended. Choose `nx : ny` in proportion to the data ranges for a true aspect.

use std::path::Path;

use crate::error::{Error, Result};

/// Most cells along one side of a [`Grid`].
pub const MAX_SIDE: usize = 4096;

/// Most pixels along either side of a figure.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// A regular grid of cells over `[xmin, xmax] × [ymin, ymax]`: `nx` columns, `ny` rows.
///
/// Row 0 is the **top** row (highest y), as in an image; values laid out row-major over it.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub xmin: f64,
    pub xmax: f64,
    pub ymin: f64,
    pub ymax: f64,
    pub nx: usize,
    pub ny: usize,
}

impl Grid {
    /// A grid, checked with [`Grid::validate`].
    pub fn new(xmin: f64, xmax: f64, ymin: f64, ymax: f64, nx: usize, ny: usize) -> Result<Grid> {
        let g = Grid {
            xmin,
            xmax,
            ymin,
            ymax,
            nx,
            ny,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks that the bounds are finite with `min < max` and that `1 ≤ nx, ny ≤ MAX_SIDE`.
    pub fn validate(&self) -> Result<()> {
        if self.nx == 0 || self.ny == 0 {
            return Err(Error::Invalid(format!(
                "empty plot grid ({}×{} cells); use at least 1×1",
                self.nx, self.ny
            )));
        }
        if self.nx > MAX_SIDE || self.ny > MAX_SIDE {
            return Err(Error::Invalid(format!(
                "plot grid of {}×{} cells is too large; use at most {MAX_SIDE} cells a side",
                self.nx, self.ny
            )));
        }
        for (axis, lo, hi) in [("x", self.xmin, self.xmax), ("y", self.ymin, self.ymax)] {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(Error::Invalid(format!(
                    "plot grid {axis} range [{lo}, {hi}] must be finite with {axis}min < {axis}max"
                )));
            }
        }
        Ok(())
    }

    /// Number of cells, `nx · ny`.
    pub fn cells(&self) -> usize {
        self.nx.saturating_mul(self.ny)
    }

    /// The cell centres, row-major, top row (highest y) first: entry `r · nx + c` is
    /// `[xmin + (c + ½)·dx, ymax − (r + ½)·dy]`. Evaluate a density there to fill a
    /// [`Heatmap`]. An invalid grid (see [`Grid::validate`]) gives an empty vector.
    pub fn points(&self) -> Vec<[f64; 2]> {
        if self.validate().is_err() {
            return Vec::new();
        }
        let dx = (self.xmax - self.xmin) / self.nx as f64;
        let dy = (self.ymax - self.ymin) / self.ny as f64;
        let mut pts = Vec::with_capacity(self.cells());
        for r in 0..self.ny {
            let y = self.ymax - (r as f64 + 0.5) * dy;
            for c in 0..self.nx {
                pts.push([self.xmin + (c as f64 + 0.5) * dx, y]);
            }
        }
        pts
    }
}

/// One panel: `values` row-major over an `nx × ny` grid, row 0 at the top (highest y), as
/// [`Grid::points`] lays them out.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub values: Vec<f64>,
    pub nx: usize,
    pub ny: usize,
}

impl Heatmap {
    /// A panel over `grid` (takes its `nx`, `ny`).
    pub fn on_grid(title: impl Into<String>, grid: &Grid, values: Vec<f64>) -> Heatmap {
        Heatmap {
            title: title.into(),
            values,
            nx: grid.nx,
            ny: grid.ny,
        }
    }
}

/// `exp(logp − max logp)`: a density up to a constant, from log-densities (or negated
/// energies) of any size without overflow. The largest entry becomes 1. `−∞` gives 0 (and an
/// all-`−∞` input all zeros); NaN or `+∞` anywhere gives NaN there, which the plotting functions
/// reject with a message, as they are not densities.
pub fn log_density_to_density(logp: &[f64]) -> Vec<f64> {
    let max = logp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return logp
            .iter()
            .map(|&l| if l.is_nan() { f64::NAN } else { 0.0 })
            .collect();
    }
    logp.iter()
        .map(|&l| {
            if l.is_nan() || l == f64::INFINITY {
                f64::NAN
            } else {
                (l - max).exp()
            }
        })
        .collect()
}

/// Viridis control points (matplotlib's map sampled at `k / 9`, `k = 0..=9`).
const VIRIDIS: [[u8; 3]; 10] = [
    [0x44, 0x01, 0x54],
    [0x48, 0x28, 0x78],
    [0x3e, 0x49, 0x89],
    [0x31, 0x68, 0x8e],
    [0x26, 0x82, 0x8e],
    [0x1f, 0x9e, 0x89],
    [0x35, 0xb7, 0x79],
    [0x6e, 0xce, 0x58],
    [0xb5, 0xde, 0x2b],
    [0xfd, 0xe7, 0x25],
];

/// The viridis colour at `t ∈ [0, 1]` (clamped; NaN counts as 0): dark purple `[68, 1, 84]` at
/// 0, yellow `[253, 231, 37]` at 1, linearly interpolated between ten control points.
pub fn viridis(t: f64) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let s = t * (VIRIDIS.len() - 1) as f64;
    let i = (s.floor() as usize).min(VIRIDIS.len() - 2);
    let f = s - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mut out = [0u8; 3];
    for k in 0..3 {
        let v = a[k] as f64 + (b[k] as f64 - a[k] as f64) * f;
        out[k] = v.round().clamp(0.0, 255.0) as u8;
    }
    out
}

/// A rectangle of pixels; `(x, y)` is its top-left corner, y grows downwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    /// Nothing drawn.
    pub const EMPTY: Rect = Rect {
        x: 0,
        y: 0,
        w: 0,
        h: 0,
    };

    /// Whether pixel `(x, y)` lies inside.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && y >= self.y && x - self.x < self.w && y - self.y < self.h
    }
}

/// A rendered figure: 8-bit RGB pixels, row-major from the top, and where things were drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub width: u32,
    pub height: u32,
    /// `width · height · 3` bytes.
    pub rgb: Vec<u8>,
    /// Heatmap area of each panel (inside the frame): cell `(r, c)` of panel `i` fills the
    /// `cell_px × cell_px` block at `(plots[i].x + c·cell_px, plots[i].y + r·cell_px)`.
    pub plots: Vec<Rect>,
    /// Side of one grid cell in pixels.
    pub cell_px: u32,
    /// The text of each panel's title (empty width for an empty title).
    pub titles: Vec<Rect>,
    /// The caption's lines (zero height for an empty caption).
    pub caption: Rect,
    /// Each panel's axis names: `[x₁ below the heatmap, x₂ left of it]`.
    pub axis_names: Vec<[Rect; 2]>,
    /// The colour bar's gradient (inside its frame), right of the last panel: row `k` from the
    /// bottom has colour [`viridis`]`(k / (h − 1))`, each panel's minimum at the bottom and
    /// maximum at the top.
    pub colorbar: Rect,
    /// The colour bar's labels: `max` at its top, `min` at its bottom.
    pub colorbar_labels: [Rect; 2],
}

impl Figure {
    /// The colour of pixel `(x, y)`, or `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]])
    }

    /// The figure as a PNG file's bytes (8-bit RGB).
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let enc_err = |e: png::EncodingError| Error::Io(format!("encoding PNG: {e}"));
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.add_text_chunk("Software".into(), "wmvl".into())
            .map_err(enc_err)?;
        let mut w = enc.write_header().map_err(enc_err)?;
        w.write_image_data(&self.rgb).map_err(enc_err)?;
        w.finish().map_err(enc_err)?;
        Ok(out)
    }
}

/// Renders `panels` side by side over `grid` and writes them as one PNG at `path`, with each
/// panel's title above it and `caption` (wrapped, at most four lines; `\n` breaks a line) at
/// the bottom. See the [module docs](self) for the colour scale.
///
/// The file is written atomically: the PNG goes to a temporary file in the same directory,
/// which is then renamed over `path`, so a failure never leaves a half-written or destroyed
/// figure. Errors: [`Error::Invalid`] for an invalid grid, no panels, or a NaN/infinite value
/// (naming the panel and cell); [`Error::Shape`] for a panel whose size is not the grid's;
/// [`Error::Io`] when the file cannot be written.
pub fn density_panels(
    path: impl AsRef<Path>,
    grid: &Grid,
    panels: &[Heatmap],
    caption: &str,
) -> Result<()> {
    let png = render_density_panels(grid, panels, caption)?.to_png()?;
    crate::fsutil::write_atomic(path.as_ref(), &png)
}

// ---------------------------------------------------------------------------------------------
// Layout

const SCALE: u32 = 2;
const GLYPH_W: u32 = 5;
const GLYPH_H: u32 = 7;
/// Font rows below the baseline, used by the descending letters `g p q y`.
const DESCENT: u32 = 2;
/// Horizontal distance between the starts of two characters.
const ADVANCE: u32 = (GLYPH_W + 1) * SCALE;
/// Height of capitals and digits, in pixels.
const CAP_H: u32 = GLYPH_H * SCALE;
/// Height of a line of text including descenders, in pixels.
const TEXT_H: u32 = (GLYPH_H + DESCENT) * SCALE;
const LINE_H: u32 = TEXT_H + 4;
const PAD: u32 = 12;
const TICK: u32 = 5;
/// Gap between a tick and its label.
const LABEL_GAP: u32 = 3;
/// Gap between a title and the frame.
const TITLE_GAP: u32 = 8;
/// Target pixels along the longer side of a heatmap.
const TARGET_PLOT: usize = 320;
/// Narrowest column for one panel's heatmap, so that titles have room.
const MIN_PLOT_COL: u32 = 200;
/// Ticks closer than this are thinned to multiples of 2, 5, 10, … units.
const MIN_TICK_SPACING: f64 = 6.0;
const MAX_CAPTION_LINES: usize = 4;
/// An axis name: `x` at [`SCALE`]× and a subscript digit at 1×, hanging 3 pixels below.
const NAME_W: u32 = ADVANCE + GLYPH_W;
const NAME_H: u32 = CAP_H + 3;
/// Gap between tick labels and an axis name.
const NAME_GAP: u32 = 8;
/// Colour bar: gap after the last panel's column, width, and its end labels.
const BAR_GAP: u32 = 4;
const BAR_W: u32 = 14;
const BAR_TOP: &str = "max";
const BAR_BOTTOM: &str = "min";
/// Width added to the figure for the colour bar and its labels.
const BAR_AREA: u32 = BAR_GAP + BAR_W + 1 + LABEL_GAP + 2 + 3 * ADVANCE - SCALE + PAD;

const BACKGROUND: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [20, 20, 20];
const FRAME: [u8; 3] = [60, 60, 60];

fn text_width(chars: usize) -> u32 {
    if chars == 0 {
        0
    } else {
        chars as u32 * ADVANCE - SCALE
    }
}

/// Tick marks along one axis: pixel offset from the start (0..len) and optional label.
///
/// Steps are 1, 2 or 5 × 10^k. Ranges of 5 units or more get integer ticks only (a unit
/// grid, thinned when crowded); narrower ranges get fractional steps, about five ticks.
fn ticks(
    lo: f64,
    hi: f64,
    len: u32,
    from_top: bool,
    horizontal: bool,
) -> Vec<(u32, Option<String>)> {
    // Far outside i64-friendly ranges, ticks mean nothing: draw none.
    if lo.abs() > 1e15 || hi.abs() > 1e15 {
        return Vec::new();
    }
    let px_per_unit = len as f64 / (hi - lo);
    // (mantissa, exponent) of step m·10^e, ascending.
    let steps = || (-12..16i32).flat_map(|e| [(1i64, e), (2, e), (5, e)]);
    let value = |(m, e): (i64, i32)| m as f64 * 10f64.powi(e);
    let finest = ((hi - lo) / 5.0).min(1.0);
    // The largest step not above `finest` (1 for ranges of 5 or more) is the finest allowed.
    let floor = steps().rfind(|&s| value(s) <= finest * (1.0 + 1e-9));
    let Some(step) = steps()
        .skip_while(|&s| Some(s) != floor)
        .find(|&s| value(s) * px_per_unit >= MIN_TICK_SPACING)
    else {
        return Vec::new();
    };
    let sv = value(step);
    let first = (lo / sv - 1e-9).ceil() as i64;
    let last = (hi / sv + 1e-9).floor() as i64;
    if last < first || last - first > 10_000 {
        return Vec::new();
    }
    let decimals = (-step.1).max(0) as usize;
    let label_of = |k: i64| {
        if step.1 >= 0 {
            (k * step.0 * 10i64.pow(step.1 as u32)).to_string()
        } else {
            // Labels fall on coarser multiples than the ticks: drop the zeros that leaves.
            let t = format!("{:.*}", decimals, k as f64 * sv);
            let t = t.trim_end_matches('0').trim_end_matches('.');
            if t.trim_start_matches('-').is_empty() || t == "-0" {
                "0".to_string()
            } else {
                t.to_string()
            }
        }
    };
    let ks: Vec<i64> = (first..=last).collect();
    let need = if horizontal {
        let widest = ks.iter().map(|&k| label_of(k).len()).max().unwrap_or(0);
        text_width(widest) as f64 + 10.0
    } else {
        CAP_H as f64 + 6.0
    };
    // Labels on every `every`-th tick (k a multiple of it), `every` in 1, 2, 5, 10, …
    let every = steps()
        .filter(|&(_, e)| e >= 0)
        .map(value)
        .find(|&m| m * sv * px_per_unit >= need)
        .map(|m| m as i64);
    ks.into_iter()
        .map(|k| {
            let v = k as f64 * sv;
            let frac = if from_top {
                (hi - v) / (hi - lo)
            } else {
                (v - lo) / (hi - lo)
            };
            let pix = ((frac * len as f64).floor().max(0.0) as u32).min(len - 1);
            let label = every.filter(|&m| k % m == 0).map(|_| label_of(k));
            (pix, label)
        })
        .collect()
}

/// Printable ASCII only: tabs become spaces, anything else `?`.
fn sanitize(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            ' '..='~' => c as u8,
            '\t' => b' ',
            _ => b'?',
        })
        .collect()
}

/// Cuts `text` to `max` characters, ending in `...` when cut.
fn ellipsize(mut text: Vec<u8>, max: usize) -> Vec<u8> {
    if text.len() > max {
        if max >= 3 {
            text.truncate(max - 3);
            text.extend_from_slice(b"...");
        } else {
            text.truncate(max);
        }
    }
    text
}

/// Word-wraps `caption` to lines of at most `max` characters, at most [`MAX_CAPTION_LINES`].
fn wrap_caption(caption: &str, max: usize) -> Vec<Vec<u8>> {
    let max = max.max(1);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for para in caption.split('\n') {
        let mut line: Vec<u8> = Vec::new();
        for word in sanitize(para)
            .split(|&b| b == b' ')
            .filter(|w| !w.is_empty())
        {
            let mut word = word;
            loop {
                let sep = usize::from(!line.is_empty());
                if line.len() + sep + word.len() <= max {
                    if sep == 1 {
                        line.push(b' ');
                    }
                    line.extend_from_slice(word);
                    break;
                }
                if !line.is_empty() {
                    lines.push(std::mem::take(&mut line));
                    continue;
                }
                // A word longer than a line: hard-split it.
                line.extend_from_slice(&word[..max]);
                lines.push(std::mem::take(&mut line));
                word = &word[max..];
            }
        }
        lines.push(line);
    }
    // Drop trailing empty lines (a caption ending in '\n', or an empty caption).
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.len() > MAX_CAPTION_LINES {
        lines.truncate(MAX_CAPTION_LINES);
        let last = lines.pop().unwrap_or_default();
        let mut last = ellipsize(last, max.saturating_sub(3));
        last.extend_from_slice(b"...");
        lines.push(ellipsize(last, max));
    }
    lines
}

fn check_panels(grid: &Grid, panels: &[Heatmap]) -> Result<()> {
    grid.validate()?;
    if panels.is_empty() {
        return Err(Error::Invalid(
            "no panels to plot; pass at least one Heatmap".into(),
        ));
    }
    for (i, p) in panels.iter().enumerate() {
        if p.nx != grid.nx || p.ny != grid.ny || p.values.len() != grid.cells() {
            return Err(Error::Shape(format!(
                "plot panel {i} ({:?}) is {}×{} with {} values, but the grid is {}×{} = {} cells",
                p.title,
                p.nx,
                p.ny,
                p.values.len(),
                grid.nx,
                grid.ny,
                grid.cells()
            )));
        }
        if let Some(k) = p.values.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "plot panel {i} ({:?}) has value {} at row {}, column {} (cell centre {:?}); \
                 densities must be finite",
                p.title,
                p.values[k],
                k / grid.nx,
                k % grid.nx,
                grid_point(grid, k),
            )));
        }
    }
    Ok(())
}

fn grid_point(grid: &Grid, k: usize) -> [f64; 2] {
    let (r, c) = (k / grid.nx, k % grid.nx);
    let dx = (grid.xmax - grid.xmin) / grid.nx as f64;
    let dy = (grid.ymax - grid.ymin) / grid.ny as f64;
    [
        grid.xmin + (c as f64 + 0.5) * dx,
        grid.ymax - (r as f64 + 0.5) * dy,
    ]
}

/// Renders the figure that [`density_panels`] writes, without writing it. Same checks and
/// errors (except [`Error::Io`]).
pub fn render_density_panels(grid: &Grid, panels: &[Heatmap], caption: &str) -> Result<Figure> {
    check_panels(grid, panels)?;

    // Heatmap size: square cells of `cell` pixels.
    let longest = grid.nx.max(grid.ny);
    let cell = ((TARGET_PLOT + longest / 2) / longest).max(1) as u32;
    let (pw, ph) = (grid.nx as u32 * cell, grid.ny as u32 * cell);

    let xticks = ticks(grid.xmin, grid.xmax, pw, false, true);
    let yticks = ticks(grid.ymin, grid.ymax, ph, true, false);
    let label_w = |ticks: &[(u32, Option<String>)]| {
        ticks
            .iter()
            .filter_map(|(_, l)| l.as_ref().map(|l| text_width(l.len())))
            .max()
            .unwrap_or(0)
    };
    let ylabel_w = label_w(&yticks);
    let xlabel_half = label_w(&xticks).div_ceil(2);
    let has_xlabels = xticks.iter().any(|(_, l)| l.is_some());
    // From the frame's left edge to the left edge of the tick labels.
    let ylabels_reach = 1
        + TICK
        + if ylabel_w > 0 {
            LABEL_GAP + ylabel_w
        } else {
            0
        };

    let left = PAD + NAME_W + NAME_GAP + ylabels_reach;
    let inner = pw.max(MIN_PLOT_COL);
    let right = 1 + PAD.max(xlabel_half + 4);
    let col_w = left + inner + right;

    let plot_y = PAD + TEXT_H + TITLE_GAP + 1;
    let xlabel_y = plot_y + ph + 1 + TICK + LABEL_GAP;
    let xname_y = NAME_GAP
        + if has_xlabels {
            xlabel_y + CAP_H
        } else {
            plot_y + ph + 1 + TICK
        };
    let panels_bottom = xname_y + NAME_H;

    let n = panels.len() as u64;
    let width64 = n * col_w as u64 + BAR_AREA as u64;
    if width64 > MAX_IMAGE_SIDE as u64 {
        return Err(Error::Invalid(format!(
            "figure of {} panels would be {width64} pixels wide (max {MAX_IMAGE_SIDE}); \
             plot fewer panels or a coarser grid",
            panels.len()
        )));
    }
    let width = width64 as u32;
    let cap_chars = ((width - 2 * PAD + SCALE) / ADVANCE) as usize;
    let cap_lines = wrap_caption(caption, cap_chars);
    let caption_y = panels_bottom + PAD;
    let height = if cap_lines.is_empty() {
        panels_bottom + PAD
    } else {
        caption_y + cap_lines.len() as u32 * LINE_H - (LINE_H - TEXT_H) + PAD
    };
    if height > MAX_IMAGE_SIDE {
        return Err(Error::Invalid(format!(
            "figure would be {height} pixels high (max {MAX_IMAGE_SIDE}); use a coarser grid"
        )));
    }

    let mut cv = Canvas::new(width, height);
    let mut plots = Vec::with_capacity(panels.len());
    let mut titles = Vec::with_capacity(panels.len());
    let mut axis_names = Vec::with_capacity(panels.len());
    for (i, panel) in panels.iter().enumerate() {
        let col_x = i as u32 * col_w;
        let px = col_x + left + (inner - pw) / 2;
        let plot = Rect {
            x: px,
            y: plot_y,
            w: pw,
            h: ph,
        };

        // Heatmap, normalised to the panel's own [min, max]. Halving first keeps
        // `max − min` finite for any finite values, and max maps to exactly 1.
        let (lo, hi) = panel
            .values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = hi * 0.5 - lo * 0.5;
        for r in 0..grid.ny {
            for c in 0..grid.nx {
                let v = panel.values[r * grid.nx + c];
                let t = if span > 0.0 {
                    (v * 0.5 - lo * 0.5) / span
                } else {
                    0.5
                };
                let colour = viridis(t);
                cv.fill(
                    (px + c as u32 * cell) as i64,
                    (plot_y + r as u32 * cell) as i64,
                    cell,
                    cell,
                    colour,
                );
            }
        }
        cv.frame(plot);

        // Ticks (outwards, below and left of the frame) and their labels.
        for (off, label) in &xticks {
            let x = (px + off) as i64;
            cv.fill(x, (plot_y + ph + 1) as i64, 1, TICK, FRAME);
            if let Some(l) = label {
                let w = text_width(l.len()) as i64;
                cv.text(x - w / 2, xlabel_y as i64, l.as_bytes(), INK);
            }
        }
        for (off, label) in &yticks {
            let y = (plot_y + off) as i64;
            cv.fill(px as i64 - 1 - TICK as i64, y, TICK, 1, FRAME);
            if let Some(l) = label {
                let w = text_width(l.len()) as i64;
                let x = px as i64 - 1 - TICK as i64 - LABEL_GAP as i64 - w;
                cv.text(x, y - (CAP_H / 2) as i64, l.as_bytes(), INK);
            }
        }

        // Axis names: x₁ centred below the tick labels, x₂ left of them, mid-height.
        let x1 = Rect {
            x: px + pw / 2 - NAME_W / 2,
            y: xname_y,
            w: NAME_W,
            h: NAME_H,
        };
        let x2 = Rect {
            x: px - ylabels_reach - NAME_GAP - NAME_W,
            y: (plot_y + ph / 2).saturating_sub(NAME_H / 2),
            w: NAME_W,
            h: NAME_H,
        };
        cv.axis_name(x1, b'1');
        cv.axis_name(x2, b'2');
        axis_names.push([x1, x2]);

        // Title, centred over the heatmap, kept inside the panel's column.
        let max_chars = ((col_w - PAD + SCALE) / ADVANCE) as usize;
        let title = ellipsize(sanitize(&panel.title), max_chars);
        let tw = text_width(title.len());
        let centre = px + pw / 2;
        let tx = centre
            .saturating_sub(tw / 2)
            .max(col_x + PAD / 2)
            .min((col_x + col_w - PAD / 2).saturating_sub(tw));
        cv.text(tx as i64, PAD as i64, &title, INK);
        titles.push(Rect {
            x: tx,
            y: PAD,
            w: tw,
            h: TEXT_H,
        });
        plots.push(plot);
    }

    // Colour bar, as tall as the heatmaps: each panel's min at the bottom, max at the top.
    let colorbar = Rect {
        x: n as u32 * col_w + BAR_GAP,
        y: plot_y,
        w: BAR_W,
        h: ph,
    };
    for row in 0..ph {
        let t = if ph > 1 {
            (ph - 1 - row) as f64 / (ph - 1) as f64
        } else {
            1.0
        };
        cv.fill(
            colorbar.x as i64,
            (plot_y + row) as i64,
            BAR_W,
            1,
            viridis(t),
        );
    }
    cv.frame(colorbar);
    // Labels level with the bar's ends, or beyond them when the bar is too short for both.
    let label_x = colorbar.x + BAR_W + 1 + LABEL_GAP + 2;
    let (top_y, bottom_y) = if ph >= 2 * CAP_H + 4 {
        (plot_y, plot_y + ph - CAP_H)
    } else {
        (plot_y - 1 - 2 - CAP_H, plot_y + ph + 1 + 2)
    };
    let mut colorbar_labels = [colorbar; 2];
    for (k, (text, y)) in [(BAR_TOP, top_y), (BAR_BOTTOM, bottom_y)]
        .into_iter()
        .enumerate()
    {
        cv.text(label_x as i64, y as i64, text.as_bytes(), INK);
        colorbar_labels[k] = Rect {
            x: label_x,
            y,
            w: text_width(text.len()),
            h: CAP_H,
        };
    }

    // Caption lines, centred.
    let mut cap_rect = Rect {
        x: width / 2,
        y: caption_y,
        w: 0,
        h: 0,
    };
    for (k, line) in cap_lines.iter().enumerate() {
        let w = text_width(line.len());
        let x = (width - w) / 2;
        let y = caption_y + k as u32 * LINE_H;
        cv.text(x as i64, y as i64, line, INK);
        if w > cap_rect.w {
            cap_rect.x = x;
            cap_rect.w = w;
        }
        cap_rect.h = y + TEXT_H - caption_y;
    }

    Ok(Figure {
        width,
        height,
        rgb: cv.rgb,
        plots,
        cell_px: cell,
        titles,
        caption: cap_rect,
        axis_names,
        colorbar,
        colorbar_labels,
    })
}

// ---------------------------------------------------------------------------------------------
// Rasterising

mod canvas;
use canvas::Canvas;
pub mod images;
pub mod lines;
