//! MNIST digits: a reader for the IDX file format the MNIST distribution uses ([`read_idx`],
//! plain or gzip-compressed) and a loader that turns an image file and a label file into a
//! fixed train/test split with grey values in [0, 1] ([`load_mnist`], [`load_dir`]).
//!
//! IDX: a 4-byte magic `00 00 dtype ndim`, then `ndim` big-endian u32 dimensions, then the
//! values, big-endian, row-major. Files are streamed through the decoder and read only as
//! far as the header says, so a corrupt header or a decompression bomb cannot make us
//! allocate more than the file really holds; every check names the file.
//!
//! [`binarize`] draws the dynamically binarised digits that binary energy models train on
//! (a fresh draw each epoch rather than one fixed threshold, which overfits).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::rng::HostRng;

/// The contents of an IDX file: its dimensions and its values (row-major) converted to f32.
/// i32 and f64 values beyond f32's precision are rounded.
#[derive(Clone, Debug, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// A set of images with their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    /// Number of images.
    pub rows: usize,
    /// Pixels per image (h × w: 784 for MNIST).
    pub pixels: usize,
    /// `rows × pixels` grey values in [0, 1] (grey level / 255), row-major.
    pub data: Vec<f32>,
    /// One label 0..=9 per image.
    pub labels: Vec<u8>,
}

/// Images on the device, for minibatches drawn there: uploaded once, then each step's rows
/// are picked and binarised by Philox on the device (no host batch, no upload per step).
pub struct DeviceImages {
    /// `rows × pixels` grey values.
    pub images: Tensor,
    pub rows: usize,
    pub pixels: usize,
}

impl DeviceImages {
    pub fn upload(gpu: &Gpu, images: &Images) -> Result<DeviceImages> {
        if images.rows == 0 {
            return Err(Error::Invalid("no images to draw minibatches from".into()));
        }
        Ok(DeviceImages {
            images: gpu.upload(images.rows, images.pixels, &images.data)?,
            rows: images.rows,
            pixels: images.pixels,
        })
    }

    /// `b` images drawn uniformly with replacement by draw (seed, 2·step) and, with
    /// `binarise`, each pixel set to 1 with its grey level as probability by draw
    /// (seed, 2·step + 1) (dynamic binarisation): the same batch for the same (seed, step),
    /// so a resumed run sees the batches it would have seen.
    pub fn batch(
        &self,
        gpu: &Gpu,
        b: usize,
        seed: u64,
        step: u64,
        binarise: bool,
    ) -> Result<Tensor> {
        let idx = gpu.random_index(b, self.rows, seed, 2 * step)?;
        let x = gpu.gather_rows(&self.images, &idx)?;
        if binarise {
            gpu.bernoulli(&x, seed, 2 * step + 1)
        } else {
            Ok(x)
        }
    }
}

/// MNIST split into training and test images.
#[derive(Clone, Debug, PartialEq)]
pub struct Mnist {
    pub train: Images,
    pub test: Images,
}

/// The 10 000-digit subset shipped with the project, and its fixed split.
const MNIST10K: [&str; 2] = [
    "mnist10k-images-idx3-ubyte.gz",
    "mnist10k-labels-idx1-ubyte.gz",
];
const MNIST10K_TEST: usize = 1000;
/// The full MNIST files, as distributed (with or without `.gz`).
const FULL: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Most bytes reserved up front; beyond it the buffer grows as bytes really arrive, so a
/// header promising gigabytes costs nothing by itself.
const RESERVE_MAX: usize = 1 << 26;

/// Element size and name of each IDX dtype code.
fn dtype(code: u8) -> Option<(usize, &'static str)> {
    Some(match code {
        0x08 => (1, "u8"),
        0x09 => (1, "i8"),
        0x0B => (2, "i16"),
        0x0C => (4, "i32"),
        0x0D => (4, "f32"),
        0x0E => (8, "f64"),
        _ => return None,
    })
}

/// Reads an IDX file, gzip-compressed or not (recognised by the gzip magic bytes `1f 8b`,
/// not by the file name), converting its values to f32.
///
/// Errors ([`Error::Io`] for an unreadable file, [`Error::Invalid`] otherwise) name the
/// file and say what is wrong: bad magic, unknown dtype, truncated or corrupt data,
/// trailing bytes, dimensions whose product overflows.
pub fn read_idx(path: &Path) -> Result<Idx> {
    let shown = path.display();
    let mut file = BufReader::new(
        File::open(path).map_err(|e| Error::Io(format!("cannot read IDX file {shown}: {e}")))?,
    );
    let mut head = Vec::with_capacity(2);
    (&mut file)
        .take(2)
        .read_to_end(&mut head)
        .map_err(|e| Error::Io(format!("cannot read IDX file {shown}: {e}")))?;
    // The peeked bytes go back in front of the stream, whichever decoder reads it.
    let stream = io::Cursor::new(head.clone()).chain(file);
    if head == [0x1f, 0x8b] {
        // Multi-member: `cat a.gz b.gz` is a valid gzip file of the concatenation.
        parse(path, true, MultiGzDecoder::new(stream))
    } else {
        parse(path, false, stream)
    }
}

/// Reads up to `n` bytes into `buf`, `at` bytes into the stream (for the error message).
fn read_some<R: Read>(
    path: &Path,
    gz: bool,
    r: &mut R,
    at: usize,
    n: usize,
    buf: &mut Vec<u8>,
) -> Result<()> {
    r.take(n as u64)
        .read_to_end(buf)
        .map(|_| ())
        // On a read error the bytes read so far are still in `buf`.
        .map_err(|e| read_error(path, gz, at + buf.len(), e))
}

fn read_error(path: &Path, gz: bool, got: usize, e: io::Error) -> Error {
    if gz {
        // Decoder errors (bad CRC, cut stream) mean a damaged download, not an I/O fault.
        Error::Invalid(format!(
            "{}: corrupt or truncated gzip data after {got} decompressed bytes ({e}); \
             download the file again",
            path.display()
        ))
    } else {
        Error::Io(format!("cannot read IDX file {}: {e}", path.display()))
    }
}

fn parse<R: Read>(path: &Path, gz: bool, mut r: R) -> Result<Idx> {
    let shown = path.display();
    // Counts in messages are of the decompressed stream.
    let after = if gz { " after decompression" } else { "" };
    let fix = "download the file again";

    let mut magic = Vec::with_capacity(4);
    read_some(path, gz, &mut r, 0, 4, &mut magic)?;
    if magic.is_empty() {
        return Err(Error::Invalid(format!(
            "{shown} is empty; expected an IDX file (MNIST format): {fix}"
        )));
    }
    if magic.len() < 4 {
        return Err(Error::Invalid(format!(
            "{shown}: truncated: {} bytes{after}, less than the 4-byte IDX magic; {fix}",
            magic.len()
        )));
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(Error::Invalid(format!(
            "{shown} is not an IDX file: its magic number starts {:02x} {:02x}, not 00 00; \
             give the MNIST file itself (raw or gzip-compressed, not zip or other archives)",
            magic[0], magic[1]
        )));
    }
    let (size, name) = dtype(magic[2]).ok_or_else(|| {
        Error::Invalid(format!(
            "{shown}: unknown IDX data type 0x{:02x} in the magic number; IDX types are \
             0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32, 0x0E f64: the file is not IDX \
             or is damaged",
            magic[2]
        ))
    })?;
    let ndim = magic[3] as usize;
    if ndim == 0 {
        return Err(Error::Invalid(format!(
            "{shown}: the IDX magic number gives 0 dimensions; the file is damaged: {fix}"
        )));
    }

    let mut raw_dims = Vec::with_capacity(4 * ndim);
    read_some(path, gz, &mut r, 4, 4 * ndim, &mut raw_dims)?;
    if raw_dims.len() < 4 * ndim {
        return Err(Error::Invalid(format!(
            "{shown}: truncated header: {ndim} dimensions need {} bytes, found {}{after}; {fix}",
            4 * ndim,
            raw_dims.len()
        )));
    }
    let dims: Vec<usize> = raw_dims
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let shape = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" × ");
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(size))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{shown}: dimensions {shape} of {name} overflow the addressable size; \
                 the header is corrupt: {fix}"
            ))
        })?;

    let mut data = Vec::with_capacity(expected.min(RESERVE_MAX));
    read_some(path, gz, &mut r, 4 + 4 * ndim, expected, &mut data)?;
    if data.len() < expected {
        return Err(Error::Invalid(format!(
            "{shown}: truncated: dimensions {shape} of {name} need {expected} data bytes, \
             found {}{after}; the file is incomplete: {fix}",
            data.len()
        )));
    }
    // Reading on to the end also makes the gzip decoder check the stream's CRC and length.
    let extra = io::copy(&mut r, &mut io::sink())
        .map_err(|e| read_error(path, gz, 4 + 4 * ndim + expected, e))?;
    if extra > 0 {
        return Err(Error::Invalid(format!(
            "{shown}: {extra} trailing bytes{after} beyond the {expected} data bytes that \
             dimensions {shape} of {name} take; the header does not match the data: the file \
             is damaged or not IDX"
        )));
    }

    let data = match magic[2] {
        0x08 => data.iter().map(|&b| b as f32).collect(),
        0x09 => data.iter().map(|&b| b as i8 as f32).collect(),
        0x0B => data
            .chunks_exact(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]) as f32)
            .collect(),
        0x0C => data
            .chunks_exact(4)
            .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        0x0D => data
            .chunks_exact(4)
            .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => data
            .chunks_exact(8)
            .map(|c| f64::from_be_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
    };
    Ok(Idx { dims, data })
}

/// Reads an image file (n × h × w) and its label file (n) into [`Images`], checking that
/// they agree and hold grey levels 0..=255 and labels 0..=9.
fn read_pair(images: &Path, labels: &Path) -> Result<Images> {
    let img = read_idx(images)?;
    if img.dims.len() != 3 {
        return Err(Error::Shape(format!(
            "{}: expected images of shape n × height × width (idx3), found {} dimensions {:?}; \
             is this the label file?",
            images.display(),
            img.dims.len(),
            img.dims
        )));
    }
    let lab = read_idx(labels)?;
    if lab.dims.len() != 1 {
        return Err(Error::Shape(format!(
            "{}: expected labels of shape n (idx1), found {} dimensions {:?}; \
             is this the image file?",
            labels.display(),
            lab.dims.len(),
            lab.dims
        )));
    }
    let (rows, pixels) = (img.dims[0], img.dims[1] * img.dims[2]);
    if lab.dims[0] != rows {
        return Err(Error::Shape(format!(
            "{} holds {rows} images but {} holds {} labels; give an image file and the \
             label file of the same set",
            images.display(),
            labels.display(),
            lab.dims[0]
        )));
    }
    if let Some((i, v)) = img
        .data
        .iter()
        .enumerate()
        .find(|(_, v)| !(0.0..=255.0).contains(*v))
    {
        return Err(Error::Invalid(format!(
            "{}: pixel {} of image {} is {v}, outside the grey levels 0..=255; \
             the file is not an MNIST image file",
            images.display(),
            i % pixels.max(1),
            i / pixels.max(1)
        )));
    }
    let mut out = Vec::with_capacity(rows);
    for (i, &v) in lab.data.iter().enumerate() {
        if !(0.0..10.0).contains(&v) || v.fract() != 0.0 {
            return Err(Error::Invalid(format!(
                "{}: label {i} is {v}, not a digit 0..=9; the file is not an MNIST label file",
                labels.display()
            )));
        }
        out.push(v as u8);
    }
    Ok(Images {
        rows,
        pixels,
        data: img.data.into_iter().map(|v| v / 255.0).collect(),
        labels: out,
    })
}

/// Loads an idx3 image file (n × h × w, grey levels 0..=255) and its idx1 label file
/// (n labels 0..=9). The last `test_count` images are the test set, the rest training: a
/// fixed split, so that runs compare on the same digits.
///
/// Errors if the files disagree, hold values out of range, or `test_count ≥ n`.
pub fn load_mnist(images: &Path, labels: &Path, test_count: usize) -> Result<Mnist> {
    let all = read_pair(images, labels)?;
    if test_count >= all.rows {
        return Err(Error::Invalid(format!(
            "test set of {test_count} images out of the {} in {}: nothing would be left to \
             train on; ask for fewer test images",
            all.rows,
            images.display()
        )));
    }
    let cut = all.rows - test_count;
    let split = cut * all.pixels;
    Ok(Mnist {
        train: Images {
            rows: cut,
            pixels: all.pixels,
            data: all.data[..split].to_vec(),
            labels: all.labels[..cut].to_vec(),
        },
        test: Images {
            rows: test_count,
            pixels: all.pixels,
            data: all.data[split..].to_vec(),
            labels: all.labels[cut..].to_vec(),
        },
    })
}

/// `dir/name` if it exists, else `dir/name.gz` if that does.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// Loads MNIST from a folder holding either the project's 10 000-digit subset
/// (`mnist10k-images-idx3-ubyte.gz`, `mnist10k-labels-idx1-ubyte.gz`: 9 000 training and
/// the last 1 000 as test digits) or the full MNIST files (`train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each
/// optionally `.gz`: MNIST's own 60 000 / 10 000 split). The subset is tried first.
pub fn load_dir(dir: &Path) -> Result<Mnist> {
    let shown = dir.display();
    if !dir.is_dir() {
        return Err(Error::Io(format!(
            "MNIST folder {shown} does not exist or is not a folder; give the folder that \
             holds the MNIST IDX files"
        )));
    }
    let sub = MNIST10K.map(|n| dir.join(n));
    match (sub[0].is_file(), sub[1].is_file()) {
        (true, true) => return load_mnist(&sub[0], &sub[1], MNIST10K_TEST),
        (true, false) | (false, true) => {
            let missing = if sub[0].is_file() { &sub[1] } else { &sub[0] };
            return Err(Error::Io(format!(
                "{shown} has only half of the mnist10k pair: {} is missing",
                missing.display()
            )));
        }
        (false, false) => {}
    }
    let full = FULL.map(|n| find(dir, n));
    if let [Some(tri), Some(trl), Some(tei), Some(tel)] = &full {
        let train = read_pair(tri, trl)?;
        let test = read_pair(tei, tel)?;
        if train.pixels != test.pixels {
            return Err(Error::Shape(format!(
                "{} has {} pixels per image but {} has {}; both must come from one data set",
                tri.display(),
                train.pixels,
                tei.display(),
                test.pixels
            )));
        }
        return Ok(Mnist { train, test });
    }
    let missing: Vec<_> = FULL
        .iter()
        .zip(&full)
        .filter(|(_, f)| f.is_none())
        .map(|(n, _)| *n)
        .collect();
    Err(Error::Io(format!(
        "no MNIST files in {shown}: expected either {} and {}, or the full MNIST files {} \
         (each optionally .gz){}",
        MNIST10K[0],
        MNIST10K[1],
        FULL.join(", "),
        if missing.len() < FULL.len() {
            format!("; missing: {}", missing.join(", "))
        } else {
            String::new()
        }
    )))
}

/// Dynamic binarisation: each pixel becomes 1 with probability its grey value (in [0, 1]),
/// else 0. Drawn afresh each time, it treats grey levels as pixel probabilities instead of
/// fixing one thresholded copy that a binary model could memorise.
pub fn binarize(images: &[f32], rng: &mut HostRng) -> Vec<f32> {
    images
        .iter()
        .map(|&p| if rng.uniform() < p as f64 { 1.0 } else { 0.0 })
        .collect()
}
