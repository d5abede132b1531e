//! Tests of `wmvl::mnist`: IDX round trips (raw and gzip), the shipped 10 000-digit subset,
//! clean errors on bad files, and dynamic binarisation.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::TempDir;
use flate2::write::GzEncoder;
use flate2::Compression;
use wmvl::mnist::{binarize, load_dir, load_mnist, read_idx, DeviceImages, Idx, Images};
use wmvl::rng::HostRng;
use wmvl::Error;

/// An IDX file's bytes: magic, big-endian dims, then `payload` (already big-endian).
fn idx_bytes(dtype: u8, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, dtype, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes `bytes` to `dir/name` and returns the path.
fn put(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// Asserts `r` is an error whose message mentions every one of `needles`.
fn assert_err<T: std::fmt::Debug>(r: wmvl::Result<T>, needles: &[&str]) -> Error {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    println!("{msg}");
    for n in needles {
        assert!(msg.contains(n), "the error does not mention {n:?}: {msg}");
    }
    e
}

/// The subset the repository ships (`data/mnist10k`, 1.6 MB).
fn mnist10k_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist10k")
}

// ---------------------------------------------------------------------------------
// round trips
// ---------------------------------------------------------------------------------

#[test]
fn idx_round_trip_raw_and_gzip() {
    let dir = TempDir::new("mnist-roundtrip");
    let u8_3d: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 11) as u8).collect();
    let u8_1d: Vec<u8> = vec![3, 1, 4, 1, 5];
    let f32_2d: Vec<f32> = vec![-1.5, 0.0, 2.25, 1e-3, -7.0e5, 3.5];
    let f32_payload: Vec<u8> = f32_2d.iter().flat_map(|v| v.to_be_bytes()).collect();
    let i16_1d: Vec<i16> = vec![-32768, -1, 0, 300, 32767];
    let i16_payload: Vec<u8> = i16_1d.iter().flat_map(|v| v.to_be_bytes()).collect();

    let cases: Vec<(&str, Vec<u8>, Idx)> = vec![
        (
            "u8_3d",
            idx_bytes(0x08, &[2, 3, 4], &u8_3d),
            Idx {
                dims: vec![2, 3, 4],
                data: u8_3d.iter().map(|&v| v as f32).collect(),
            },
        ),
        (
            "u8_1d",
            idx_bytes(0x08, &[5], &u8_1d),
            Idx {
                dims: vec![5],
                data: u8_1d.iter().map(|&v| v as f32).collect(),
            },
        ),
        (
            "f32_2d",
            idx_bytes(0x0D, &[2, 3], &f32_payload),
            Idx {
                dims: vec![2, 3],
                data: f32_2d.clone(),
            },
        ),
        (
            "i16_1d",
            idx_bytes(0x0B, &[5], &i16_payload),
            Idx {
                dims: vec![5],
                data: i16_1d.iter().map(|&v| v as f32).collect(),
            },
        ),
    ];
    for (name, bytes, want) in &cases {
        // The gzip copy gets no .gz suffix and the raw one a misleading one: detection is
        // by content.
        let raw = put(&dir, &format!("{name}.gz"), bytes);
        let gz = put(&dir, &format!("{name}-compressed"), &gzip(bytes));
        assert_eq!(&read_idx(&raw).unwrap(), want, "{name} raw");
        assert_eq!(&read_idx(&gz).unwrap(), want, "{name} gzip");
    }

    // Concatenated gzip members are one stream.
    let bytes = &cases[0].1;
    let mut two = gzip(&bytes[..10]);
    two.extend(gzip(&bytes[10..]));
    let p = put(&dir, "two-members", &two);
    assert_eq!(read_idx(&p).unwrap(), cases[0].2);
}

#[test]
fn load_mnist_splits_off_the_last_images() {
    let dir = TempDir::new("mnist-split");
    let pixels: Vec<u8> = (0..5 * 2 * 3).map(|i| (i * 8) as u8).collect();
    let labels = [0u8, 1, 2, 3, 9];
    let img = put(&dir, "img", &gzip(&idx_bytes(0x08, &[5, 2, 3], &pixels)));
    let lab = put(&dir, "lab", &idx_bytes(0x08, &[5], &labels));
    let m = load_mnist(&img, &lab, 2).unwrap();
    let grey: Vec<f32> = pixels.iter().map(|&v| v as f32 / 255.0).collect();
    assert_eq!((m.train.rows, m.train.pixels), (3, 6));
    assert_eq!((m.test.rows, m.test.pixels), (2, 6));
    assert_eq!(m.train.data, grey[..18]);
    assert_eq!(m.test.data, grey[18..]);
    assert_eq!(m.train.labels, [0, 1, 2]);
    assert_eq!(m.test.labels, [3, 9]);
    let m0 = load_mnist(&img, &lab, 0).unwrap();
    assert_eq!((m0.train.rows, m0.test.rows), (5, 0));
    assert_err(load_mnist(&img, &lab, 5), &["img", "5"]);
}

#[test]
fn load_dir_finds_the_full_mnist_names() {
    let dir = TempDir::new("mnist-full");
    let (px, py) = ([7u8; 3 * 4], [1u8, 2, 3]);
    let (qx, qy) = ([255u8; 2 * 4], [4u8, 5]);
    // Raw and compressed names mixed, as people unpack some and not others.
    put(
        &dir,
        "train-images-idx3-ubyte",
        &idx_bytes(8, &[3, 2, 2], &px),
    );
    put(
        &dir,
        "train-labels-idx1-ubyte.gz",
        &gzip(&idx_bytes(8, &[3], &py)),
    );
    put(
        &dir,
        "t10k-images-idx3-ubyte.gz",
        &gzip(&idx_bytes(8, &[2, 2, 2], &qx)),
    );
    put(&dir, "t10k-labels-idx1-ubyte", &idx_bytes(8, &[2], &qy));
    let m = load_dir(&dir.0).unwrap();
    assert_eq!((m.train.rows, m.train.pixels, m.test.rows), (3, 4, 2));
    assert_eq!(m.train.labels, py);
    assert_eq!(m.test.labels, qy);
    assert!(m.test.data.iter().all(|&v| v == 1.0));

    // Three of four: the error names the one missing.
    fs::remove_file(dir.path("t10k-labels-idx1-ubyte")).unwrap();
    assert_err(
        load_dir(&dir.0),
        &["t10k-labels-idx1-ubyte", "mnist10k-images-idx3-ubyte.gz"],
    );
}

// ---------------------------------------------------------------------------------
// the real data
// ---------------------------------------------------------------------------------

#[test]
fn mnist10k_subset() {
    let dir = mnist10k_dir();
    let m = load_dir(&dir).unwrap();
    assert_eq!((m.train.rows, m.test.rows), (9000, 1000));
    assert_eq!((m.train.pixels, m.test.pixels), (784, 784));
    assert_eq!(m.train.data.len(), 9000 * 784);
    assert_eq!(m.test.data.len(), 1000 * 784);
    assert_eq!((m.train.labels.len(), m.test.labels.len()), (9000, 1000));

    let mut counts = [0usize; 10];
    for &l in m.train.labels.iter().chain(&m.test.labels) {
        counts[l as usize] += 1;
    }
    assert_eq!(
        counts,
        [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    );
    // The shuffle puts every class into the test set.
    for d in 0..10u8 {
        assert!(m.test.labels.contains(&d), "no {d} in the test set");
    }

    let all = || m.train.data.iter().chain(&m.test.data);
    assert!(all().all(|v| (0.0..=1.0).contains(v)));
    let mean = all().map(|&v| v as f64).sum::<f64>() / (10_000.0 * 784.0);
    println!("mnist10k pixel mean {mean:.5}");
    assert!((0.10..0.15).contains(&mean), "pixel mean {mean}");
}

// ---------------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------------

#[test]
fn bad_files_give_errors_that_name_them() {
    let dir = TempDir::new("mnist-errors");
    let good = idx_bytes(8, &[2, 2, 2], &[1; 8]);

    let p = put(&dir, "magic.idx", b"PK\x03\x04 a zip, not IDX");
    assert_err(read_idx(&p), &["magic.idx", "magic"]);
    let p = put(&dir, "magic-gz", &gzip(b"\x01\x02\x08\x01"));
    assert_err(read_idx(&p), &["magic-gz", "magic"]);

    let p = put(&dir, "dtype.idx", &idx_bytes(0x0A, &[1], &[0]));
    assert_err(read_idx(&p), &["dtype.idx", "0x0a"]);

    let p = put(&dir, "empty.idx", b"");
    assert_err(read_idx(&p), &["empty.idx", "empty"]);

    // Truncated data: the message gives expected and found byte counts.
    let p = put(&dir, "cut.idx", &good[..good.len() - 3]);
    assert_err(read_idx(&p), &["cut.idx", "truncated", "8", "found 5"]);
    let p = put(&dir, "cut-header.idx", &good[..10]);
    assert_err(read_idx(&p), &["cut-header.idx", "truncated"]);
    // A gzip stream cut short is damaged data, not a short IDX file.
    let z = gzip(&good);
    let p = put(&dir, "cut-gz", &z[..z.len() - 6]);
    assert_err(read_idx(&p), &["cut-gz"]);
    // Gzip of a short IDX file: complete stream, truncated contents.
    let p = put(&dir, "short-gz", &gzip(&good[..good.len() - 1]));
    assert_err(read_idx(&p), &["short-gz", "truncated", "found 7"]);
    // A flipped byte in the compressed stream (CRC or inflate failure).
    let mut bad = z.clone();
    let n = bad.len();
    bad[n - 8] ^= 0xff;
    let p = put(&dir, "crc-gz", &bad);
    assert_err(read_idx(&p), &["crc-gz", "gzip"]);

    let mut long = good.clone();
    long.extend_from_slice(&[0, 0]);
    let p = put(&dir, "long.idx", &long);
    assert_err(read_idx(&p), &["long.idx", "2 trailing"]);

    let p = put(&dir, "huge.idx", &idx_bytes(0x0E, &[u32::MAX; 4], &[]));
    let e = assert_err(read_idx(&p), &["huge.idx"]);
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");

    let e = assert_err(read_idx(&dir.path("absent.idx")), &["absent.idx"]);
    assert!(matches!(e, Error::Io(_)), "{e:?}");

    // Counts that disagree, labels and pixels out of range, files swapped.
    let img = put(&dir, "img", &good);
    let lab3 = put(&dir, "lab3", &idx_bytes(8, &[3], &[1, 2, 3]));
    let e = assert_err(
        load_mnist(&img, &lab3, 1),
        &["img", "lab3", "2 images", "3 labels"],
    );
    assert!(matches!(e, Error::Shape(_)), "{e:?}");
    let lab10 = put(&dir, "lab10", &idx_bytes(8, &[2], &[1, 10]));
    assert_err(load_mnist(&img, &lab10, 1), &["lab10", "10"]);
    let neg = put(&dir, "neg", &idx_bytes(0x09, &[1, 1, 2], &[5, 0xff]));
    let lab1 = put(&dir, "lab1", &idx_bytes(8, &[1], &[0]));
    assert_err(load_mnist(&neg, &lab1, 0), &["neg", "-1", "0..=255"]);
    assert_err(load_mnist(&lab3, &img, 1), &["lab3", "idx3"]);

    // Folders: missing, and present without MNIST files (the error lists the names).
    assert_err(load_dir(&dir.path("no-such-dir")), &["no-such-dir"]);
    let empty = TempDir::new("mnist-empty");
    assert_err(
        load_dir(&empty.0),
        &[
            "mnist10k-images-idx3-ubyte.gz",
            "mnist10k-labels-idx1-ubyte.gz",
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ],
    );
}

// ---------------------------------------------------------------------------------
// binarisation
// ---------------------------------------------------------------------------------

#[test]
fn binarize_matches_the_grey_values_on_average() {
    let mut src = HostRng::new(7);
    let grey: Vec<f32> = (0..5000).map(|_| src.uniform() as f32).collect();
    let mut rng = HostRng::new(42);
    let bin = binarize(&grey, &mut rng);
    assert_eq!(bin.len(), grey.len());
    assert!(bin.iter().all(|&v| v == 0.0 || v == 1.0));
    let n = grey.len() as f64;
    let mean_grey = grey.iter().map(|&p| p as f64).sum::<f64>() / n;
    let mean_bin = bin.iter().map(|&b| b as f64).sum::<f64>() / n;
    // Each pixel is Bernoulli(p): the variance of the mean is Σ p(1 − p) / n².
    let se = grey
        .iter()
        .map(|&p| p as f64 * (1.0 - p as f64))
        .sum::<f64>()
        .sqrt()
        / n;
    let z = (mean_bin - mean_grey) / se;
    println!("binarised mean {mean_bin:.4}, grey mean {mean_grey:.4}, z {z:+.2}");
    assert!(z.abs() < 4.0, "z = {z}");

    // 0 and 1 are certain; the same seed gives the same draw.
    assert_eq!(
        binarize(&[0.0, 1.0, 0.0, 1.0], &mut rng),
        [0.0, 1.0, 0.0, 1.0]
    );
    assert_eq!(binarize(&grey, &mut HostRng::new(42)), bin);
}

/// Minibatches drawn on the device (`DeviceImages::batch`): every row is one of the images
/// (pixels of grey level 0 or 1 binarise to themselves, so each row names its image), the
/// same (seed, step) gives the same batch, the next step another, and binarisation draws
/// each pixel with its grey level as probability (mean within 4 standard errors).
#[test]
fn device_batches_are_data_rows_reproducible_by_step() {
    let gpu = wmvl::gpu::Gpu::new().unwrap();
    // Image i has pixel j = bit j of i + 1: distinct, none all zero.
    let (rows, pixels) = (6, 8);
    let data: Vec<f32> = (0..rows * pixels)
        .map(|e| (((e / pixels + 1) >> (e % pixels)) & 1) as f32)
        .collect();
    let images = Images {
        rows,
        pixels,
        data: data.clone(),
        labels: vec![0; rows],
    };
    let dev = DeviceImages::upload(&gpu, &images).unwrap();
    let draw = |step: u64, binarise: bool| {
        gpu.read(&dev.batch(&gpu, 32, 7, step, binarise).unwrap())
            .unwrap()
    };
    let a = draw(3, true);
    let mut seen = vec![0usize; rows];
    for r in a.chunks(pixels) {
        let i = data
            .chunks(pixels)
            .position(|d| d == r)
            .unwrap_or_else(|| panic!("batch row {r:?} is no image"));
        seen[i] += 1;
    }
    assert!(
        seen.iter().all(|&c| c > 0),
        "32 draws from 6 images missed one: {seen:?}"
    );
    assert_eq!(a, draw(3, true));
    assert_eq!(a, draw(3, false), "binary images binarise to themselves");
    assert_ne!(a, draw(4, true));

    // Grey levels 0.2 and 0.7 in alternate pixels, 20 000 draws of each.
    let grey: Vec<f32> = (0..2 * 64)
        .map(|e| if e % 2 == 0 { 0.2 } else { 0.7 })
        .collect();
    let dev = DeviceImages::upload(
        &gpu,
        &Images {
            rows: 2,
            pixels: 64,
            data: grey,
            labels: vec![0; 2],
        },
    )
    .unwrap();
    let x = gpu
        .read(&dev.batch(&gpu, 625, 11, 0, true).unwrap())
        .unwrap();
    for (parity, p) in [(0, 0.2f64), (1, 0.7)] {
        let v: Vec<f64> = x
            .iter()
            .skip(parity)
            .step_by(2)
            .map(|&v| v as f64)
            .collect();
        assert!(v.iter().all(|&b| b == 0.0 || b == 1.0));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let se = (p * (1.0 - p) / v.len() as f64).sqrt();
        assert!(
            (mean - p).abs() < 4.0 * se,
            "grey {p}: mean {mean} (SE {se:.4})"
        );
    }
}
