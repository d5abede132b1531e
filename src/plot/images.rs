//! Grids of grey-level images (digit samples and reconstructions), one tile per image.

use std::path::Path;

use super::canvas::Canvas;
use super::{Figure, Rect, LINE_H, PAD, TEXT_H};
use crate::error::{Error, Result};

/// Pixels per image pixel, and the gap between tiles.
const ZOOM: u32 = 2;
const GAP: u32 = 2;

/// Renders `count` images of `h × w` grey levels in [0, 1] (0 white, 1 black: ink on paper),
/// `cols` per row, under `title`. `plots[i]` of the figure is tile i.
pub fn render_image_grid(
    images: &[f32],
    count: usize,
    (h, w): (usize, usize),
    cols: usize,
    title: &str,
) -> Result<Figure> {
    if count == 0 || h == 0 || w == 0 || cols == 0 {
        return Err(Error::Invalid(format!(
            "image grid: need images, sizes and columns (got {count} images of {h}×{w}, {cols} columns)"
        )));
    }
    if images.len() != count * h * w {
        return Err(Error::Shape(format!(
            "image grid: {} values for {count} images of {h}×{w}",
            images.len()
        )));
    }
    if let Some(i) = images.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "image grid: value {i} is {}",
            images[i]
        )));
    }
    let rows = count.div_ceil(cols);
    let (tw, th) = (w as u32 * ZOOM, h as u32 * ZOOM);
    let top = PAD + LINE_H;
    let width = (2 * PAD + cols as u32 * (tw + GAP)).max(2 * PAD + title.len() as u32 * 12);
    let height = top + rows as u32 * (th + GAP) + PAD;
    if width > super::MAX_IMAGE_SIDE || height > super::MAX_IMAGE_SIDE {
        return Err(Error::Invalid(format!(
            "image grid of {width}×{height} pixels is too large"
        )));
    }
    let mut cv = Canvas::new(width, height);
    cv.text(PAD as i64, PAD as i64, title.as_bytes(), super::INK);
    let mut plots = Vec::with_capacity(count);
    for k in 0..count {
        let x0 = PAD + (k % cols) as u32 * (tw + GAP);
        let y0 = top + (k / cols) as u32 * (th + GAP);
        for r in 0..h {
            for c in 0..w {
                let v = images[k * h * w + r * w + c].clamp(0.0, 1.0);
                let g = (255.0 * (1.0 - v)).round() as u8;
                cv.fill(
                    (x0 + c as u32 * ZOOM) as i64,
                    (y0 + r as u32 * ZOOM) as i64,
                    ZOOM,
                    ZOOM,
                    [g, g, g],
                );
            }
        }
        plots.push(Rect {
            x: x0,
            y: y0,
            w: tw,
            h: th,
        });
    }
    Ok(Figure {
        width,
        height,
        rgb: cv.rgb,
        plots,
        cell_px: ZOOM,
        titles: vec![Rect {
            x: PAD,
            y: PAD,
            w: title.len() as u32 * 12,
            h: TEXT_H,
        }],
        caption: Rect::EMPTY,
        axis_names: vec![],
        colorbar: Rect::EMPTY,
        colorbar_labels: [Rect::EMPTY, Rect::EMPTY],
    })
}

/// [`render_image_grid`] written atomically as a PNG at `path`.
pub fn image_grid(
    path: impl AsRef<Path>,
    images: &[f32],
    count: usize,
    size: (usize, usize),
    cols: usize,
    title: &str,
) -> Result<()> {
    let png = render_image_grid(images, count, size, cols, title)?.to_png()?;
    crate::fsutil::write_atomic(path.as_ref(), &png)
}
