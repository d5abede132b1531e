//! Line plots: series of (x, y) points, optionally with a confidence band, on linear or log
//! axes, panels side by side with a legend under each — for figures such as bias and variance
//! against a step size, or densities around the circle (equal aspect).

use std::path::Path;

use super::canvas::Canvas;
use super::{
    sanitize, text_width, ticks, wrap_caption, Figure, Rect, ADVANCE, CAP_H, FRAME, INK, LABEL_GAP,
    LINE_H, MAX_IMAGE_SIDE, PAD, SCALE, TEXT_H, TICK, TITLE_GAP,
};
use crate::error::{Error, Result};

/// How an axis maps values to pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Base 10; every value on the axis must be positive.
    Log,
}

/// One curve: points joined in order, and an optional band (lower, upper) at the same x.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub band: Option<(Vec<f64>, Vec<f64>)>,
}

/// One panel of curves.
#[derive(Clone, Debug, PartialEq)]
pub struct LinePanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    /// The same units per pixel on both axes (a circle looks round).
    pub equal_aspect: bool,
    pub series: Vec<Series>,
}

/// Colours of the series, in order (repeating).
pub const PALETTE: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [90, 90, 90],
];

const PLOT_W: u32 = 360;
const PLOT_H: u32 = 260;
const SWATCH: u32 = 24;

fn check(panels: &[LinePanel]) -> Result<()> {
    if panels.is_empty() {
        return Err(Error::Invalid("a figure needs at least one panel".into()));
    }
    for p in panels {
        for s in &p.series {
            let bad = |what: &str| {
                Error::Invalid(format!("panel {:?}, series {:?}: {what}", p.title, s.label))
            };
            if s.x.len() != s.y.len() || s.x.is_empty() {
                return Err(bad("x and y must have the same, nonzero length"));
            }
            if let Some((lo, hi)) = &s.band {
                if lo.len() != s.x.len() || hi.len() != s.x.len() {
                    return Err(bad("the band must have one (lower, upper) pair per point"));
                }
            }
            let ys =
                s.y.iter()
                    .chain(s.band.iter().flat_map(|(l, h)| l.iter().chain(h)));
            for (v, scale, axis) in
                s.x.iter()
                    .map(|v| (v, p.x_scale, "x"))
                    .chain(ys.map(|v| (v, p.y_scale, "y")))
            {
                if !v.is_finite() {
                    return Err(bad(&format!("{axis} value {v} is not finite")));
                }
                if scale == Scale::Log && *v <= 0.0 {
                    return Err(bad(&format!(
                        "{axis} value {v} on a log axis (must be > 0)"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// An axis: value range (in log10 units on a log axis) and scale.
#[derive(Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    scale: Scale,
}

impl Axis {
    fn of(values: impl Iterator<Item = f64>, scale: Scale) -> Axis {
        let t = |v: f64| if scale == Scale::Log { v.log10() } else { v };
        let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(t(v)), b.max(t(v)))
        });
        if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
            (lo, hi) = (lo - 0.5, hi + 0.5);
        }
        let m = 0.04 * (hi - lo);
        Axis {
            lo: lo - m,
            hi: hi + m,
            scale,
        }
    }

    /// 0..1 along the axis.
    fn frac(&self, v: f64) -> f64 {
        let t = if self.scale == Scale::Log {
            v.log10()
        } else {
            v
        };
        (t - self.lo) / (self.hi - self.lo)
    }

    /// (pixel offset, label) of the ticks over `len` pixels.
    fn ticks(&self, len: u32, from_top: bool) -> Vec<(u32, Option<String>)> {
        if self.scale == Scale::Linear {
            return ticks(self.lo, self.hi, len, from_top, !from_top);
        }
        // Powers of ten: every one, or every 2nd, 3rd … when crowded.
        let (a, b) = (self.lo.ceil() as i64, self.hi.floor() as i64);
        let n = (b - a + 1).max(1);
        let every = ((n as f64 * (CAP_H as f64 + 30.0)) / len as f64)
            .ceil()
            .max(1.0) as i64;
        (a..=b)
            .map(|e| {
                let f = (e as f64 - self.lo) / (self.hi - self.lo);
                let f = if from_top { 1.0 - f } else { f };
                let pix = ((f * len as f64) as u32).min(len - 1);
                (pix, (e % every == 0).then(|| format!("1e{e}")))
            })
            .collect()
    }
}

/// Renders `panels` side by side (see the module docs); `caption` below.
pub fn render_line_panels(panels: &[LinePanel], caption: &str) -> Result<Figure> {
    check(panels)?;
    let axes: Vec<(Axis, Axis)> = panels
        .iter()
        .map(|p| {
            let xs = p.series.iter().flat_map(|s| s.x.iter().copied());
            let ys = p.series.iter().flat_map(|s| {
                s.y.iter()
                    .copied()
                    .chain(s.band.iter().flat_map(|(l, h)| l.iter().chain(h).copied()))
            });
            let (mut ax, mut ay) = (Axis::of(xs, p.x_scale), Axis::of(ys, p.y_scale));
            if p.equal_aspect {
                // Widen the narrower range so units per pixel agree.
                let (ux, uy) = (
                    (ax.hi - ax.lo) / PLOT_W as f64,
                    (ay.hi - ay.lo) / PLOT_H as f64,
                );
                if ux < uy {
                    let c = 0.5 * (ax.lo + ax.hi);
                    let half = 0.5 * uy * PLOT_W as f64;
                    (ax.lo, ax.hi) = (c - half, c + half);
                } else {
                    let c = 0.5 * (ay.lo + ay.hi);
                    let half = 0.5 * ux * PLOT_H as f64;
                    (ay.lo, ay.hi) = (c - half, c + half);
                }
            }
            (ax, ay)
        })
        .collect();
    let yticks: Vec<_> = axes.iter().map(|(_, ay)| ay.ticks(PLOT_H, true)).collect();
    let ylabel_w = yticks
        .iter()
        .flatten()
        .filter_map(|(_, l)| l.as_ref().map(|l| text_width(l.len())))
        .max()
        .unwrap_or(0);
    let left = PAD + ylabel_w + LABEL_GAP + TICK + 1;
    let col_w = left + PLOT_W + PAD + 2 * ADVANCE;
    let plot_y = PAD + TEXT_H + TITLE_GAP + TEXT_H + 4;
    let xlabel_y = plot_y + PLOT_H + 1 + TICK + LABEL_GAP;
    let xname_y = xlabel_y + CAP_H + 8;
    let legend_y = xname_y + TEXT_H + 8;
    let most = panels.iter().map(|p| p.series.len()).max().unwrap_or(0) as u32;
    let panels_bottom = legend_y + most * LINE_H;
    let width = panels.len() as u64 * col_w as u64;
    if width > MAX_IMAGE_SIDE as u64 {
        return Err(Error::Invalid(format!(
            "{} panels would make a figure {width} pixels wide (max {MAX_IMAGE_SIDE})",
            panels.len()
        )));
    }
    let width = width as u32;
    let cap_chars = ((width - 2 * PAD + SCALE) / ADVANCE) as usize;
    let cap_lines = wrap_caption(caption, cap_chars);
    let caption_y = panels_bottom + PAD;
    let height = caption_y + cap_lines.len() as u32 * LINE_H + PAD;

    let mut cv = Canvas::new(width, height);
    let (mut plots, mut titles) = (vec![], vec![]);
    for (i, (p, (ax, ay))) in panels.iter().zip(&axes).enumerate() {
        let col_x = i as u32 * col_w;
        let plot = Rect {
            x: col_x + left,
            y: plot_y,
            w: PLOT_W,
            h: PLOT_H,
        };
        let to_px = |x: f64, y: f64| {
            (
                plot.x as f64 + ax.frac(x) * (PLOT_W - 1) as f64,
                plot.y as f64 + (1.0 - ay.frac(y)) * (PLOT_H - 1) as f64,
            )
        };
        // Bands first (a light tint), then the curves over them.
        for (k, s) in p.series.iter().enumerate() {
            let Some((lo, hi)) = &s.band else { continue };
            let c = PALETTE[k % PALETTE.len()];
            let tint = c.map(|v| (255 - (255 - v as u32) * 30 / 100) as u8);
            for j in 1..s.x.len() {
                let (x0, _) = to_px(s.x[j - 1], lo[j - 1]);
                let (x1, _) = to_px(s.x[j], lo[j]);
                let (a, b) = (x0.min(x1).round() as i64, x0.max(x1).round() as i64);
                // Interpolate in pixel space (linear in log units on a log axis).
                let (ya_lo, yb_lo) = (to_px(s.x[j - 1], lo[j - 1]).1, to_px(s.x[j], lo[j]).1);
                let (ya_hi, yb_hi) = (to_px(s.x[j - 1], hi[j - 1]).1, to_px(s.x[j], hi[j]).1);
                for px in a..=b {
                    let t = if b > a {
                        (px - a) as f64 / (b - a) as f64
                    } else {
                        0.0
                    };
                    let t = if x0 <= x1 { t } else { 1.0 - t };
                    let yl = ya_lo + t * (yb_lo - ya_lo);
                    let yh = ya_hi + t * (yb_hi - ya_hi);
                    let (top, bot) = (yl.min(yh).round() as i64, yl.max(yh).round() as i64);
                    let top = top.max(plot.y as i64);
                    let bot = bot.min((plot.y + PLOT_H - 1) as i64);
                    if bot >= top && px >= plot.x as i64 && px < (plot.x + PLOT_W) as i64 {
                        cv.fill(px, top, 1, (bot - top + 1) as u32, tint);
                    }
                }
            }
        }
        for (k, s) in p.series.iter().enumerate() {
            let c = PALETTE[k % PALETTE.len()];
            let pts: Vec<(f64, f64)> = s.x.iter().zip(&s.y).map(|(&x, &y)| to_px(x, y)).collect();
            for w in pts.windows(2) {
                line(&mut cv, w[0], w[1], c, plot);
            }
            if pts.len() == 1 {
                cv.fill(pts[0].0 as i64 - 1, pts[0].1 as i64 - 1, 3, 3, c);
            }
        }
        cv.frame(plot);
        for (off, label) in ax.ticks(PLOT_W, false) {
            let x = (plot.x + off) as i64;
            cv.fill(x, (plot_y + PLOT_H + 1) as i64, 1, TICK, FRAME);
            if let Some(l) = label {
                let w = text_width(l.len()) as i64;
                cv.text(x - w / 2, xlabel_y as i64, l.as_bytes(), INK);
            }
        }
        for (off, label) in &yticks[i] {
            let y = (plot_y + off) as i64;
            cv.fill(plot.x as i64 - 1 - TICK as i64, y, TICK, 1, FRAME);
            if let Some(l) = label {
                let w = text_width(l.len()) as i64;
                let x = plot.x as i64 - 1 - TICK as i64 - LABEL_GAP as i64 - w;
                cv.text(x, y - (CAP_H / 2) as i64, l.as_bytes(), INK);
            }
        }
        // Title; the y axis's name above its top left; the x axis's name below its labels.
        let title = sanitize(&p.title);
        let tw = text_width(title.len());
        let tx = (plot.x + PLOT_W / 2)
            .saturating_sub(tw / 2)
            .max(col_x + PAD / 2);
        cv.text(tx as i64, PAD as i64, &title, INK);
        titles.push(Rect {
            x: tx,
            y: PAD,
            w: tw,
            h: TEXT_H,
        });
        cv.text(
            (col_x + PAD / 2) as i64,
            (PAD + TEXT_H + TITLE_GAP) as i64,
            &sanitize(&p.y_label),
            INK,
        );
        let xl = sanitize(&p.x_label);
        let xw = text_width(xl.len());
        cv.text(
            (plot.x + PLOT_W / 2).saturating_sub(xw / 2) as i64,
            xname_y as i64,
            &xl,
            INK,
        );
        // Legend: a swatch of each series' colour and its label.
        for (k, s) in p.series.iter().enumerate() {
            let y = legend_y + k as u32 * LINE_H;
            let c = PALETTE[k % PALETTE.len()];
            cv.fill(plot.x as i64, (y + CAP_H / 2 - 1) as i64, SWATCH, 3, c);
            cv.text(
                (plot.x + SWATCH + 8) as i64,
                y as i64,
                &sanitize(&s.label),
                INK,
            );
        }
        plots.push(plot);
    }
    for (k, l) in cap_lines.iter().enumerate() {
        cv.text(PAD as i64, (caption_y + k as u32 * LINE_H) as i64, l, INK);
    }
    let caption = Rect {
        x: PAD,
        y: caption_y,
        w: cap_lines
            .iter()
            .map(|l| text_width(l.len()))
            .max()
            .unwrap_or(0),
        h: cap_lines.len() as u32 * LINE_H,
    };
    Ok(Figure {
        width,
        height,
        rgb: cv.rgb,
        plots,
        cell_px: 0,
        titles,
        caption,
        axis_names: vec![],
        colorbar: Rect::EMPTY,
        colorbar_labels: [Rect::EMPTY, Rect::EMPTY],
    })
}

/// [`render_line_panels`] written atomically as a PNG at `path`.
pub fn line_panels(path: impl AsRef<Path>, panels: &[LinePanel], caption: &str) -> Result<()> {
    let png = render_line_panels(panels, caption)?.to_png()?;
    crate::fsutil::write_atomic(path.as_ref(), &png)
}

/// A 2-pixel line from a to b, clipped to `clip`.
fn line(cv: &mut Canvas, a: (f64, f64), b: (f64, f64), c: [u8; 3], clip: Rect) {
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
    for k in 0..=steps {
        let t = k as f64 / steps as f64;
        let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
        let (x, y) = (x.round() as i64, y.round() as i64);
        if x >= clip.x as i64
            && y >= clip.y as i64
            && x + 1 < (clip.x + clip.w) as i64
            && y + 1 < (clip.y + clip.h) as i64
        {
            cv.fill(x, y, 2, 2, c);
        }
    }
}
