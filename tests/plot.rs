//! PNG density figures: written, decoded back with the `png` crate and checked pixel by pixel;
//! bad input is refused with an error and never damages an existing figure.
//!
//! Set `WMVL_PLOT_DEMO=/some/path.png` to also write a two-panel demo figure there.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use std::sync::OnceLock;

use wmvl::app::{data_figure, data_grid, data_panels};
use wmvl::data::Matrix;
use wmvl::gpu::Gpu;
use wmvl::plot::{
    density_panels, log_density_to_density, render_density_panels, viridis, Figure, Grid, Heatmap,
    Rect,
};
use wmvl::rng::HostRng;
use wmvl::Error;

const YELLOW: [u8; 3] = [253, 231, 37];
const PURPLE: [u8; 3] = [68, 1, 84];

/// A fresh, empty directory for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("wmvl-plot-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Odd cell counts, so the bump's centre (0, 0) is a cell centre, and the grid is symmetric,
/// so all four corners hold exactly the smallest value.
fn bump_grid() -> Grid {
    Grid::new(-3.0, 3.0, -3.0, 3.0, 41, 41).unwrap()
}

fn bump(grid: &Grid, title: &str) -> Heatmap {
    let v = grid
        .points()
        .iter()
        .map(|[x, y]| (-(x * x + y * y) / (2.0 * 0.6 * 0.6)).exp())
        .collect();
    Heatmap::on_grid(title, grid, v)
}

/// Decodes a PNG file into (width, height, RGB bytes).
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn px(rgb: &[u8], width: u32, x: u32, y: u32) -> [u8; 3] {
    let i = (y as usize * width as usize + x as usize) * 3;
    [rgb[i], rgb[i + 1], rgb[i + 2]]
}

fn is_dark(p: [u8; 3]) -> bool {
    p.iter().all(|&c| c < 100)
}

/// Dark pixels inside `r`.
fn dark_pixels(rgb: &[u8], width: u32, r: Rect) -> usize {
    let mut n = 0;
    for y in r.y..r.y + r.h {
        for x in r.x..r.x + r.w {
            n += usize::from(is_dark(px(rgb, width, x, y)));
        }
    }
    n
}

#[test]
fn gaussian_bump_figure_decodes_with_expected_pixels() {
    let dir = TempDir::new("bump");
    let grid = bump_grid();
    let panels = [bump(&grid, "true density"), bump(&grid, "learned density")];
    let caption = "gaussian bump, sigma 0.6";
    let path = dir.path("bump.png");
    density_panels(&path, &grid, &panels, caption).unwrap();
    // Rendering is deterministic: the in-memory figure tells where things are.
    let fig: Figure = render_density_panels(&grid, &panels, caption).unwrap();

    let (w, h, rgb) = decode(&path);
    assert_eq!((w, h), (fig.width, fig.height));
    assert_eq!(rgb, fig.rgb, "decoded pixels differ from the rendered ones");
    assert_eq!(fig.plots.len(), 2);
    assert!(w > 2 * 300 && h > 300, "figure unexpectedly small: {w}×{h}");

    let cell = fig.cell_px;
    for plot in &fig.plots {
        assert_eq!((plot.w, plot.h), (41 * cell, 41 * cell));
        // Centre pixel is in the centre cell (row 20, column 20): the maximum → yellow.
        let (cx, cy) = (plot.x + plot.w / 2, plot.y + plot.h / 2);
        assert_eq!(px(&rgb, w, cx, cy), YELLOW);
        assert_eq!(px(&rgb, w, cx, cy), viridis(1.0));
        // Yellow appears only in the centre cell's block.
        for y in plot.y..plot.y + plot.h {
            for x in plot.x..plot.x + plot.w {
                if px(&rgb, w, x, y) == YELLOW {
                    assert_eq!(((x - plot.x) / cell, (y - plot.y) / cell), (20, 20));
                }
            }
        }
        // All four corners hold the minimum → darkest purple.
        for (x, y) in [
            (plot.x, plot.y),
            (plot.x + plot.w - 1, plot.y),
            (plot.x, plot.y + plot.h - 1),
            (plot.x + plot.w - 1, plot.y + plot.h - 1),
        ] {
            assert_eq!(px(&rgb, w, x, y), PURPLE, "corner ({x}, {y})");
        }
        assert_eq!(PURPLE, viridis(0.0));
        // A frame surrounds the heatmap.
        assert!(is_dark(px(&rgb, w, plot.x - 1, cy)));
        assert!(is_dark(px(&rgb, w, plot.x + plot.w, cy)));
        assert!(is_dark(px(&rgb, w, cx, plot.y - 1)));
        assert!(is_dark(px(&rgb, w, cx, plot.y + plot.h)));
        // A tick mark at x = 0 below the frame, at y = 0 left of it, and none between
        // integers (x = 0.5 lies midway between the ticks at 0 and 1).
        assert!(is_dark(px(&rgb, w, cx, plot.y + plot.h + 3)));
        assert!(is_dark(px(&rgb, w, plot.x - 3, cy)));
        let half = plot.x + (plot.w as f64 * 3.5 / 6.0) as u32;
        assert!(!is_dark(px(&rgb, w, half, plot.y + plot.h + 3)));
    }

    // Titles and caption are drawn: dark pixels in their bands, none in the white margin
    // between the title band and the frame.
    for t in &fig.titles {
        assert!(t.w > 0 && t.y + t.h < fig.plots[0].y);
        assert!(dark_pixels(&rgb, w, *t) > 50, "no title text in {t:?}");
    }
    let title_band = Rect {
        x: 0,
        y: 0,
        w,
        h: fig.titles[0].y + fig.titles[0].h,
    };
    assert!(dark_pixels(&rgb, w, title_band) > 100);
    for plot in &fig.plots {
        let top = fig.titles[0].y + fig.titles[0].h;
        let gap = Rect {
            x: plot.x,
            y: top,
            w: plot.w,
            h: plot.y - 1 - top,
        };
        assert!(gap.h > 0);
        assert_eq!(
            dark_pixels(&rgb, w, gap),
            0,
            "stray ink between title and frame"
        );
    }
    assert!(fig.caption.h > 0 && fig.caption.y > fig.plots[0].y + fig.plots[0].h);
    assert!(dark_pixels(&rgb, w, fig.caption) > 50, "no caption text");
}

#[test]
fn nan_is_rejected_naming_the_panel() {
    let grid = bump_grid();
    let mut learned = bump(&grid, "learned density");
    learned.values[7] = f64::NAN;
    let err =
        render_density_panels(&grid, &[bump(&grid, "true density"), learned], "").unwrap_err();
    let Error::Invalid(msg) = &err else {
        panic!("expected Error::Invalid, got {err:?}")
    };
    assert!(msg.contains("panel 1"), "{msg}");
    assert!(msg.contains("learned density"), "{msg}");
    assert!(msg.contains("NaN"), "{msg}");

    let mut inf = bump(&grid, "inf");
    inf.values[0] = f64::INFINITY;
    assert!(matches!(
        render_density_panels(&grid, &[inf], ""),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn mismatched_sizes_are_rejected() {
    let grid = bump_grid();
    let mut short = bump(&grid, "short");
    short.values.pop();
    let err = render_density_panels(&grid, &[short], "").unwrap_err();
    assert!(
        matches!(&err, Error::Shape(m) if m.contains("short")),
        "{err:?}"
    );

    let other = Grid::new(-3.0, 3.0, -3.0, 3.0, 41, 40).unwrap();
    let wrong = bump(&other, "wrong grid");
    assert!(matches!(
        render_density_panels(&grid, &[bump(&grid, "ok"), wrong], ""),
        Err(Error::Shape(_))
    ));

    // Same number of values, transposed shape.
    let g2 = Grid::new(0.0, 1.0, 0.0, 1.0, 4, 6).unwrap();
    let p = Heatmap {
        title: "transposed".into(),
        values: vec![1.0; 24],
        nx: 6,
        ny: 4,
    };
    assert!(matches!(
        render_density_panels(&g2, &[p], ""),
        Err(Error::Shape(_))
    ));
}

#[test]
fn empty_and_invalid_grids_are_rejected() {
    for (g, what) in [
        ((-1.0, 1.0, -1.0, 1.0, 0, 5), "nx = 0"),
        ((-1.0, 1.0, -1.0, 1.0, 5, 0), "ny = 0"),
        ((1.0, 1.0, -1.0, 1.0, 5, 5), "xmin = xmax"),
        ((-1.0, 1.0, 2.0, 1.0, 5, 5), "ymin > ymax"),
        ((f64::NAN, 1.0, -1.0, 1.0, 5, 5), "NaN bound"),
        ((-1.0, f64::INFINITY, -1.0, 1.0, 5, 5), "infinite bound"),
        ((-1.0, 1.0, -1.0, 1.0, 100_000, 1), "too many cells"),
    ] {
        assert!(Grid::new(g.0, g.1, g.2, g.3, g.4, g.5).is_err(), "{what}");
        let grid = Grid {
            xmin: g.0,
            xmax: g.1,
            ymin: g.2,
            ymax: g.3,
            nx: g.4,
            ny: g.5,
        };
        assert!(grid.points().is_empty(), "{what}");
        let panel = Heatmap {
            title: "p".into(),
            values: vec![0.0; grid.cells().min(1 << 20)],
            nx: grid.nx,
            ny: grid.ny,
        };
        assert!(
            matches!(
                render_density_panels(&grid, &[panel], ""),
                Err(Error::Invalid(_))
            ),
            "{what}"
        );
    }
    // No panels at all.
    assert!(matches!(
        render_density_panels(&bump_grid(), &[], "caption"),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn failed_plot_leaves_existing_file_unchanged() {
    let dir = TempDir::new("keep");
    let path = dir.path("figure.png");
    let old = b"an earlier figure".to_vec();
    fs::write(&path, &old).unwrap();
    let grid = bump_grid();

    let mut bad = bump(&grid, "bad");
    bad.values[3] = f64::NAN;
    assert!(density_panels(&path, &grid, &[bad], "x").is_err());
    let mut short = bump(&grid, "short");
    short.values.truncate(10);
    assert!(density_panels(&path, &grid, &[short], "x").is_err());
    assert_eq!(fs::read(&path).unwrap(), old);
    assert_eq!(
        dir.entries(),
        vec!["figure.png"],
        "temporary files left behind"
    );

    // A successful plot replaces it with a PNG.
    density_panels(&path, &grid, &[bump(&grid, "ok")], "x").unwrap();
    assert!(fs::read(&path).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(dir.entries(), vec!["figure.png"]);
}

#[test]
fn write_failure_after_rendering_is_an_io_error_and_cleans_up() {
    let dir = TempDir::new("iofail");
    let grid = bump_grid();
    let panel = [bump(&grid, "p")];

    // The target is a non-empty directory: the temp file is written, the rename fails.
    let target = dir.path("taken");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("inside"), b"keep me").unwrap();
    let err = density_panels(&target, &grid, &panel, "").unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    assert_eq!(dir.entries(), vec!["taken"], "temporary file left behind");
    assert_eq!(fs::read(target.join("inside")).unwrap(), b"keep me");

    // The parent directory does not exist.
    let err = density_panels(dir.path("no/such/dir/f.png"), &grid, &panel, "").unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
}

#[test]
fn log_density_to_density_does_not_overflow() {
    let d = log_density_to_density(&[1000.0, 999.0, f64::NEG_INFINITY, 1000.0 - 800.0]);
    assert_eq!(d[0], 1.0);
    assert!((d[1] - (-1.0f64).exp()).abs() < 1e-15);
    assert_eq!(d[2], 0.0);
    assert!(d[3] >= 0.0 && d[3] < 1e-300);
    assert!(d.iter().all(|v| v.is_finite()));

    // Energies of any size: e^{-E} with E = 1e6 would underflow to 0 without the shift.
    let d = log_density_to_density(&[-1e6, -1e6 - 2.0]);
    assert_eq!(d[0], 1.0);
    assert!((d[1] - (-2.0f64).exp()).abs() < 1e-15);

    assert!(log_density_to_density(&[]).is_empty());
    assert_eq!(
        log_density_to_density(&[f64::NEG_INFINITY; 3]),
        vec![0.0; 3]
    );
    let d = log_density_to_density(&[0.0, f64::NAN]);
    assert!(d[1].is_nan());
    let d = log_density_to_density(&[0.0, f64::INFINITY]);
    assert!(d.iter().any(|v| v.is_nan()), "+inf is not a density");
}

#[test]
fn grid_points_are_cell_centres_top_row_first() {
    let g = Grid::new(0.0, 4.0, -1.0, 1.0, 4, 2).unwrap();
    let p = g.points();
    assert_eq!(p.len(), 8);
    assert_eq!(p[0], [0.5, 0.5]);
    assert_eq!(p[3], [3.5, 0.5]);
    assert_eq!(p[4], [0.5, -0.5]);
    assert_eq!(p[7], [3.5, -0.5]);
}

#[test]
fn viridis_endpoints_and_clamping() {
    assert_eq!(viridis(0.0), PURPLE);
    assert_eq!(viridis(1.0), YELLOW);
    assert_eq!(viridis(-3.0), PURPLE);
    assert_eq!(viridis(7.0), YELLOW);
    assert_eq!(viridis(f64::NAN), PURPLE);
    // Perceptual map: luminance rises monotonically.
    let lum = |c: [u8; 3]| 0.2126 * c[0] as f64 + 0.7152 * c[1] as f64 + 0.0722 * c[2] as f64;
    let mut last = -1.0;
    for k in 0..=100 {
        let l = lum(viridis(k as f64 / 100.0));
        assert!(l >= last, "luminance drops at t = {}", k as f64 / 100.0);
        last = l;
    }
}

#[test]
fn odd_text_layouts_and_grids_do_not_panic() {
    let long = "a very long title that cannot possibly fit above a single panel of this figure";
    let caption = "a caption with unicode: μ σ² → ∞, a newline\nand a very long tail ".repeat(20);
    for (nx, ny) in [(1, 1), (3, 200), (200, 3), (640, 640)] {
        let g = Grid::new(-0.3, 0.2, -1e9, 1e9, nx, ny).unwrap();
        let v: Vec<f64> = (0..nx * ny).map(|i| i as f64).collect();
        let fig =
            render_density_panels(&g, &[Heatmap::on_grid(long, &g, v.clone())], &caption).unwrap();
        assert_eq!(fig.rgb.len(), (fig.width * fig.height * 3) as usize);
        assert!(fig.titles[0].x + fig.titles[0].w <= fig.width);
        // Constant panel: middle colour.
        let c = render_density_panels(&g, &[Heatmap::on_grid("c", &g, vec![2.0; nx * ny])], "")
            .unwrap();
        assert_eq!(c.pixel(c.plots[0].x, c.plots[0].y), Some(viridis(0.5)));
    }
    // Extreme but finite values normalise without overflow.
    let g = Grid::new(0.0, 1.0, 0.0, 1.0, 2, 1).unwrap();
    let fig = render_density_panels(
        &g,
        &[Heatmap::on_grid("", &g, vec![-f64::MAX, f64::MAX])],
        "",
    )
    .unwrap();
    let p = fig.plots[0];
    assert_eq!(fig.pixel(p.x, p.y), Some(PURPLE));
    assert_eq!(fig.pixel(p.x + p.w - 1, p.y), Some(YELLOW));
}

/// A two-panel figure a person can look at: an 8-Gaussian ring and a blurrier "learned" one.
#[test]
fn demo_figure() {
    let grid = Grid::new(-4.0, 4.0, -4.0, 4.0, 160, 160).unwrap();
    let ring = |s: f64| {
        let pts = grid.points();
        let logp: Vec<f64> = pts
            .iter()
            .map(|[x, y]| {
                let terms: Vec<f64> = (0..8)
                    .map(|k| {
                        let a = k as f64 * std::f64::consts::TAU / 8.0;
                        let (mx, my) = (2.8 * a.cos(), 2.8 * a.sin());
                        -((x - mx).powi(2) + (y - my).powi(2)) / (2.0 * s * s)
                    })
                    .collect();
                let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln()
            })
            .collect();
        log_density_to_density(&logp)
    };
    let panels = [
        Heatmap::on_grid("true density", &grid, ring(0.3)),
        Heatmap::on_grid("learned density", &grid, ring(0.45)),
    ];
    let caption = "8 gaussians, WMVL after 5000 steps (demo figure)";
    let dir = TempDir::new("demo");
    let path = std::env::var_os("WMVL_PLOT_DEMO")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path("demo.png"));
    density_panels(&path, &grid, &panels, caption).unwrap();
    let (w, h, _) = decode(&path);
    assert!(w > 0 && h > 0);
}

/// Luminance, to say which of two colours is brighter.
fn lum(c: [u8; 3]) -> f64 {
    0.2126 * c[0] as f64 + 0.7152 * c[1] as f64 + 0.0722 * c[2] as f64
}

#[test]
fn colour_bar_runs_through_viridis_from_bottom_to_top() {
    let grid = bump_grid();
    let fig = render_density_panels(&grid, &[bump(&grid, "a"), bump(&grid, "b")], "").unwrap();
    let bar = fig.colorbar;
    let plot = fig.plots[1];
    // As tall as the heatmaps, right of the last one, inside the image.
    assert_eq!((bar.y, bar.h), (plot.y, plot.h));
    assert!(bar.x > plot.x + plot.w && bar.x + bar.w < fig.width);
    assert!(bar.w >= 8, "bar too thin: {bar:?}");
    for row in 0..bar.h {
        let t = (bar.h - 1 - row) as f64 / (bar.h - 1) as f64;
        for x in [bar.x, bar.x + bar.w / 2, bar.x + bar.w - 1] {
            assert_eq!(fig.pixel(x, bar.y + row), Some(viridis(t)), "row {row}");
        }
    }
    assert_eq!(fig.pixel(bar.x, bar.y), Some(YELLOW));
    assert_eq!(fig.pixel(bar.x, bar.y + bar.h - 1), Some(PURPLE));
    // Framed, and labelled at both ends: "max" level with the top, "min" with the bottom.
    assert!(is_dark(fig.pixel(bar.x - 1, bar.y + 5).unwrap()));
    assert!(is_dark(fig.pixel(bar.x + bar.w, bar.y + 5).unwrap()));
    let [top, bottom] = fig.colorbar_labels;
    assert!(top.x > bar.x + bar.w && top.x + top.w <= fig.width);
    assert!(top.y + top.h <= bar.y + bar.h / 2 && bottom.y >= bar.y + bar.h / 2);
    for r in [top, bottom] {
        assert!(
            dark_pixels(&fig.rgb, fig.width, r) > 20,
            "no label in {r:?}"
        );
    }
    // The two labels differ ("max" and "min").
    let ink = |r: Rect| -> Vec<bool> {
        (0..r.h)
            .flat_map(|y| (0..r.w).map(move |x| (x, y)))
            .map(|(x, y)| is_dark(fig.pixel(r.x + x, r.y + y).unwrap()))
            .collect()
    };
    assert_ne!(ink(top), ink(bottom));
}

#[test]
fn axis_names_are_drawn_below_and_left_of_each_panel() {
    let grid = bump_grid();
    let fig = render_density_panels(&grid, &[bump(&grid, "a"), bump(&grid, "b")], "c").unwrap();
    assert_eq!(fig.axis_names.len(), 2);
    for (plot, [x1, x2]) in fig.plots.iter().zip(&fig.axis_names) {
        // x₁ centred under the heatmap, below its tick labels, above the caption.
        assert!(x1.y > plot.y + plot.h + 20, "{x1:?}");
        assert!(x1.y + x1.h < fig.caption.y);
        let centre = (x1.x + x1.w / 2) as i64;
        assert!((centre - (plot.x + plot.w / 2) as i64).abs() <= 2);
        // x₂ left of the heatmap and of its tick labels, at mid-height.
        assert!(x2.x + x2.w + 20 < plot.x, "{x2:?}");
        assert!(x2.y < plot.y + plot.h / 2 && x2.y + x2.h > plot.y + plot.h / 2);
        for r in [x1, x2] {
            assert!(
                dark_pixels(&fig.rgb, fig.width, *r) > 20,
                "no axis name in {r:?}"
            );
        }
    }
    // The names are the same drawing ("x" and a subscript) apart from the digit.
    let [x1, x2] = fig.axis_names[0];
    let ink =
        |r: Rect, cols: u32| -> usize { dark_pixels(&fig.rgb, fig.width, Rect { w: cols, ..r }) };
    assert_eq!(ink(x1, 10), ink(x2, 10), "the 'x' differs");
}

#[test]
fn narrow_ranges_get_fractional_tick_labels() {
    // A window 0.003 wide: integer ticks would leave the axes bare.
    let grid = Grid::new(0.001, 0.004, -0.02, 0.01, 30, 30).unwrap();
    let v: Vec<f64> = (0..900).map(|i| i as f64).collect();
    let fig = render_density_panels(&grid, &[Heatmap::on_grid("narrow", &grid, v)], "").unwrap();
    let p = fig.plots[0];
    let below = Rect {
        x: p.x.saturating_sub(20),
        y: p.y + p.h + 6,
        w: p.w + 40,
        h: 20,
    };
    let left = Rect {
        x: p.x - 60,
        y: p.y,
        w: 54,
        h: p.h,
    };
    assert!(
        dark_pixels(&fig.rgb, fig.width, below) > 100,
        "no x tick labels"
    );
    assert!(
        dark_pixels(&fig.rgb, fig.width, left) > 100,
        "no y tick labels"
    );
    // Several tick marks just below the frame.
    let marks = (p.x..p.x + p.w)
        .filter(|&x| is_dark(fig.pixel(x, p.y + p.h + 3).unwrap()))
        .count();
    assert!((3..=20).contains(&marks), "{marks} tick marks");
}

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("cannot open a GPU adapter: {e}")))
}

#[test]
fn data_figure_shows_a_histogram_of_the_data_next_to_the_model() {
    // 400 points in a tight blob at (10, 20), and 40 spread over a wider square.
    let mut rng = HostRng::new(4);
    let mut pts = Vec::new();
    for _ in 0..400 {
        pts.push(10.0 + 0.3 * rng.normal() as f32);
        pts.push(20.0 + 0.3 * rng.normal() as f32);
    }
    for _ in 0..40 {
        pts.push(10.0 + 4.0 * (rng.uniform() as f32 - 0.5));
        pts.push(20.0 + 4.0 * (rng.uniform() as f32 - 0.5));
    }
    let data = Matrix::new(440, 2, pts).unwrap();
    let grid = data_grid(&data).unwrap();
    assert!(grid.xmin < 8.5 && grid.xmax > 11.5 && grid.ymin < 18.5 && grid.ymax > 21.5);
    assert!(grid.xmax - grid.xmin < 8.0, "window too wide: {grid:?}");

    let mut model = common::quadratic_model(gpu(), 0.5, [-10.0, -20.0]);
    let (g2, panels) = data_panels(gpu(), &mut model, &data).unwrap();
    assert_eq!(g2, grid);
    assert_eq!(panels.len(), 2);
    // The histogram counts the points inside the window; its peak is at the blob.
    let hist = &panels[0].values;
    let inside = hist.iter().sum::<f64>();
    assert!((430.0..=440.0).contains(&inside), "{inside} points counted");
    let pts = grid.points();
    let peak = (0..hist.len())
        .max_by(|&a, &b| hist[a].total_cmp(&hist[b]))
        .unwrap();
    let [peak_x, peak_y] = pts[peak];
    assert!(
        (peak_x - 10.0).abs() < 0.5 && (peak_y - 20.0).abs() < 0.5,
        "peak at {:?}",
        pts[peak]
    );
    // The model's panel peaks at its mode too.
    let q = &panels[1].values;
    let qpeak = (0..q.len()).max_by(|&a, &b| q[a].total_cmp(&q[b])).unwrap();
    assert!((pts[qpeak][0] - 10.0).abs() < 0.2 && (pts[qpeak][1] - 20.0).abs() < 0.2);

    // The figure file: the data panel is brighter at the blob than in a corner.
    let dir = TempDir::new("data");
    let path = dir.path("data.png");
    data_figure(gpu(), &mut model, &data, "blob", &path).unwrap();
    let fig = render_density_panels(&grid, &panels, "blob").unwrap();
    let (w, h, rgb) = decode(&path);
    assert_eq!((w, h), (fig.width, fig.height));
    assert_eq!(rgb, fig.rgb);
    let p = fig.plots[0];
    let cell = fig.cell_px;
    let (r, c) = ((peak / grid.nx) as u32, (peak % grid.nx) as u32);
    let at_blob = px(&rgb, w, p.x + c * cell, p.y + r * cell);
    let corner = px(&rgb, w, p.x, p.y);
    assert!(
        lum(at_blob) > lum(corner) + 100.0,
        "{at_blob:?} vs {corner:?}"
    );

    // Not 2-D: refused with a message, nothing written.
    let three = Matrix::new(2, 3, vec![0.0; 6]).unwrap();
    let other = dir.path("three.png");
    let err = data_figure(gpu(), &mut model, &three, "", &other).unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("3 columns")),
        "{err:?}"
    );
    assert!(!other.exists());
    // One repeated point still gets a window.
    let one = Matrix::new(3, 2, vec![5.0, -1.0, 5.0, -1.0, 5.0, -1.0]).unwrap();
    let g = data_grid(&one).unwrap();
    assert!(g.xmin < 5.0 && g.xmax > 5.0 && g.ymin < -1.0 && g.ymax > -1.0);
}

#[test]
fn line_panels_draw_curves_bands_and_log_axes() {
    use wmvl::plot::lines::{render_line_panels, LinePanel, Scale, Series, PALETTE};
    let x: Vec<f64> = (0..20)
        .map(|i| 10f64.powf(-5.0 + 4.0 * i as f64 / 19.0))
        .collect();
    let y: Vec<f64> = x.iter().map(|v| 1.0 / v).collect();
    let band = (
        y.iter().map(|v| v * 0.5).collect(),
        y.iter().map(|v| v * 2.0).collect(),
    );
    let panel = LinePanel {
        title: "variance".into(),
        x_label: "eps".into(),
        y_label: "var".into(),
        x_scale: Scale::Log,
        y_scale: Scale::Log,
        equal_aspect: false,
        series: vec![
            Series {
                label: "1/eps".into(),
                x: x.clone(),
                y: y.clone(),
                band: Some(band),
            },
            Series {
                label: "flat".into(),
                x: x.clone(),
                y: vec![1.0; 20],
                band: None,
            },
        ],
    };
    let fig = render_line_panels(std::slice::from_ref(&panel), "caption").unwrap();
    let p = fig.plots[0];
    let count = |c: [u8; 3]| {
        let mut k = 0;
        for yy in p.y..p.y + p.h {
            for xx in p.x..p.x + p.w {
                if fig.pixel(xx, yy) == Some(c) {
                    k += 1;
                }
            }
        }
        k
    };
    // Both curves are drawn in their colours, and the band's tint is there too.
    assert!(count(PALETTE[0]) > 100, "first series drawn");
    assert!(count(PALETTE[1]) > 100, "second series drawn");
    let tint = PALETTE[0].map(|v| (255 - (255 - v as u32) * 30 / 100) as u8);
    assert!(count(tint) > 1000, "band drawn");
    // On log–log axes 1/ε is a straight line falling from the top left: its colour is found
    // near the top of the left edge and the bottom of the right edge.
    let col_has = |xx: u32, rows: std::ops::Range<u32>| {
        rows.into_iter()
            .any(|yy| fig.pixel(xx, yy) == Some(PALETTE[0]))
    };
    assert!(col_has(p.x + 20, p.y..p.y + p.h / 3));
    assert!(col_has(p.x + p.w - 20, p.y + 2 * p.h / 3..p.y + p.h));
    // A log axis refuses values ≤ 0, naming the series.
    let mut bad = panel;
    bad.series[1].y[3] = 0.0;
    let e = render_line_panels(&[bad], "").unwrap_err();
    assert!(
        e.to_string().contains("flat") && e.to_string().contains("log axis"),
        "{e}"
    );
}

#[test]
fn image_grid_puts_each_image_in_its_tile_as_ink_on_paper() {
    use wmvl::plot::images::{image_grid, render_image_grid};
    // Three 2×3 images: all ink, all paper, and a gradient along the row.
    let (h, w) = (2, 3);
    let mut px = vec![1.0f32; h * w];
    px.extend(vec![0.0f32; h * w]);
    px.extend((0..h * w).map(|i| (i % w) as f32 / (w - 1) as f32));
    let fig = render_image_grid(&px, 3, (h, w), 2, "samples").unwrap();
    assert_eq!(fig.plots.len(), 3);
    assert_eq!(fig.plots[1].y, fig.plots[0].y, "two per row");
    assert!(fig.plots[2].y > fig.plots[0].y, "the third on the next row");
    let centre = |r: wmvl::plot::Rect, c: usize| (r.x + (c as u32 * 2) + 1, r.y + 1);
    let at = |r, c| fig.pixel(centre(r, c).0, centre(r, c).1).unwrap();
    assert_eq!(at(fig.plots[0], 0), [0, 0, 0]);
    assert_eq!(at(fig.plots[1], 0), [255, 255, 255]);
    assert_eq!(at(fig.plots[2], 1), [128, 128, 128]);
    let dir = std::env::temp_dir().join(format!("wmvl-grid-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("grid.png");
    image_grid(&path, &px, 3, (h, w), 2, "samples").unwrap();
    let (pw, ph, _) = decode(&path);
    assert_eq!((pw, ph), (fig.width, fig.height));
    assert!(render_image_grid(&px[1..], 3, (h, w), 2, "x").is_err());
    let mut bad = px.clone();
    bad[4] = f32::NAN;
    assert!(render_image_grid(&bad, 3, (h, w), 2, "x").is_err());
    fs::remove_dir_all(&dir).ok();
}
