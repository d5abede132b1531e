//! Checkpoint files: round trip, atomic saves, and rejection of every kind of bad file.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::{Dtype, TensorView};
use wmvl::checkpoint::{Checkpoint, NamedTensor, FORMAT, FORMAT_KEY, FORMAT_VERSION_KEY};
use wmvl::Error;

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wmvl-ckpt-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
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

fn tensor(name: &str, rows: usize, cols: usize, seed: f32) -> NamedTensor {
    let data = (0..rows * cols)
        .map(|i| seed + (i as f32) * 0.37 - 1.5)
        .collect();
    NamedTensor::new(name, rows, cols, data).unwrap()
}

fn sample() -> Checkpoint {
    let mut metadata = BTreeMap::new();
    metadata.insert("model".to_string(), "score-net".to_string());
    metadata.insert("dim".to_string(), "2".to_string());
    metadata.insert("hidden".to_string(), "100".to_string());
    metadata.insert("activation".to_string(), "swish".to_string());
    metadata.insert("lr".to_string(), "0.001".to_string());
    metadata.insert(
        "note".to_string(),
        "ünïcødé, \"quotes\" and\nnewlines".to_string(),
    );
    let mut special = tensor("special", 1, 8, 0.0);
    special.data = vec![
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        1e-45, // subnormal
        f32::MAX,
        f32::MIN,
        f32::EPSILON,
        -123.456,
    ];
    Checkpoint {
        // Deliberately not in name order.
        tensors: vec![
            tensor("w2", 100, 2, 0.5),
            tensor("b1", 1, 100, -2.0),
            tensor("w1", 2, 100, 1.0),
            special,
            tensor("empty", 0, 5, 0.0),
            tensor("layers.0.u", 1, 100, 3.0),
        ],
        metadata,
    }
}

/// Raw safetensors bytes, for files `save` would never write.
fn raw_file(
    tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    metadata: Option<&[(&str, &str)]>,
) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = metadata.map(|m| {
        m.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>()
    });
    safetensors::serialize(views, meta).unwrap()
}

const OURS: &[(&str, &str)] = &[("format", "wmvl-checkpoint"), ("format_version", "1")];

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn load_err(path: &Path) -> String {
    let e = Checkpoint::load(path).expect_err("loading should fail");
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    msg
}

#[test]
fn round_trip_preserves_tensors_and_metadata() {
    let dir = TempDir::new("roundtrip");
    let path = dir.file("model.safetensors");
    let ckpt = sample();
    ckpt.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();

    // Tensors come back sorted by name, bit for bit.
    let mut expected = ckpt.tensors.clone();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(back.tensors.len(), expected.len());
    for (b, e) in back.tensors.iter().zip(&expected) {
        assert_eq!((&b.name, b.rows, b.cols), (&e.name, e.rows, e.cols));
        let bits = |t: &NamedTensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(b), bits(e), "tensor {}", e.name);
    }
    assert_eq!(
        back.names(),
        vec!["b1", "empty", "layers.0.u", "special", "w1", "w2"]
    );

    // Metadata: everything we put in, plus the two format entries.
    let mut meta = ckpt.metadata.clone();
    meta.insert(FORMAT_KEY.into(), FORMAT.into());
    meta.insert(FORMAT_VERSION_KEY.into(), "1".into());
    assert_eq!(back.metadata, meta);

    // Helpers on the loaded checkpoint.
    assert_eq!(back.meta("model").unwrap(), "score-net");
    assert_eq!(back.meta_parse::<usize>("hidden").unwrap(), 100);
    assert_eq!(back.meta_parse::<f32>("lr").unwrap(), 0.001);
    let hidden: usize = back.meta_parse("hidden").unwrap();
    assert_eq!(back.expect_shape("w1", 2, hidden).unwrap().data.len(), 200);

    // A loaded checkpoint (format entries included) saves again and reloads identically.
    let path2 = dir.file("again.safetensors");
    back.save(&path2).unwrap();
    assert_eq!(Checkpoint::load(&path2).unwrap(), back);

    // No temporary files left behind.
    assert_eq!(
        dir.entries(),
        vec!["again.safetensors", "model.safetensors"]
    );
}

#[test]
fn empty_checkpoint_round_trips() {
    let dir = TempDir::new("empty");
    let path = dir.file("e.safetensors");
    Checkpoint::new().save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert!(back.tensors.is_empty());
    assert_eq!(back.meta("format").unwrap(), "wmvl-checkpoint");
    assert_eq!(back.meta("format_version").unwrap(), "1");
}

#[test]
fn save_overwrites_atomically_and_concurrent_saves_do_not_collide() {
    let dir = TempDir::new("overwrite");
    let path = dir.file("m.safetensors");
    sample().save(&path).unwrap();
    let mut second = sample();
    second.tensors.truncate(1);
    second.save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap().names(), vec!["w2"]);

    std::thread::scope(|s| {
        for i in 0..8 {
            let path = &path;
            s.spawn(move || {
                let mut c = Checkpoint::new();
                c.tensors.push(tensor("w", 4, 4, i as f32));
                c.metadata.insert("writer".into(), i.to_string());
                c.save(path).unwrap();
            });
        }
    });
    let last = Checkpoint::load(&path).unwrap();
    let writer: usize = last.meta_parse("writer").unwrap();
    assert_eq!(last.get("w").unwrap(), &tensor("w", 4, 4, writer as f32));
    assert_eq!(dir.entries(), vec!["m.safetensors"]);
}

#[test]
fn rank_one_tensor_is_read_as_a_row() {
    let dir = TempDir::new("rank1");
    let path = dir.file("r1.safetensors");
    let bytes = raw_file(
        &[("bias", Dtype::F32, vec![3], f32_bytes(&[1.0, 2.0, 3.0]))],
        Some(OURS),
    );
    fs::write(&path, bytes).unwrap();
    let c = Checkpoint::load(&path).unwrap();
    let t = c.expect_shape("bias", 1, 3).unwrap();
    assert_eq!(t.data, vec![1.0, 2.0, 3.0]);
}

#[test]
fn save_into_missing_directory_fails() {
    let dir = TempDir::new("nodir");
    let path = dir.file("no/such/dir/m.safetensors");
    let e = sample().save(&path).unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e:?}");
    assert!(e.to_string().contains("m.safetensors"), "{e}");
    assert!(!path.exists());
    assert!(dir.entries().is_empty());
}

#[test]
fn failed_save_leaves_previous_file_byte_identical() {
    let dir = TempDir::new("failedsave");
    let path = dir.file("m.safetensors");
    sample().save(&path).unwrap();
    let before = fs::read(&path).unwrap();

    // Data length does not match rows × cols.
    let mut bad = sample();
    bad.tensors[1].data.pop();
    let e = bad.save(&path).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("b1") && msg.contains("99") && msg.contains("1×100"),
        "{msg}"
    );
    assert_eq!(fs::read(&path).unwrap(), before);

    // A non-finite value.
    let mut bad = sample();
    bad.tensors[2].data[7] = f32::NAN;
    let msg = bad.save(&path).unwrap_err().to_string();
    assert!(msg.contains("`w1`") && msg.contains("NaN"), "{msg}");
    assert_eq!(fs::read(&path).unwrap(), before);

    // Duplicate, empty and reserved names; a conflicting format entry.
    let mut bad = sample();
    bad.tensors.push(tensor("w1", 1, 1, 0.0));
    assert!(bad
        .save(&path)
        .unwrap_err()
        .to_string()
        .contains("two tensors named `w1`"));
    let mut bad = sample();
    bad.tensors.push(tensor("", 1, 1, 0.0));
    assert!(bad.save(&path).is_err());
    let mut bad = sample();
    bad.tensors.push(tensor("__metadata__", 1, 1, 0.0));
    assert!(bad
        .save(&path)
        .unwrap_err()
        .to_string()
        .contains("reserved"));
    let mut bad = sample();
    bad.metadata.insert("format_version".into(), "2".into());
    assert!(bad
        .save(&path)
        .unwrap_err()
        .to_string()
        .contains("format_version"));

    // The target is a directory: the rename fails and the temporary file is removed.
    let sub = dir.file("sub");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("keep"), b"x").unwrap();
    assert!(matches!(sample().save(&sub), Err(Error::Io(_))));

    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(dir.entries(), vec!["m.safetensors", "sub"]);
    assert!(Checkpoint::load(&path).is_ok());
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let dir = TempDir::new("missing");
    let path = dir.file("nope.safetensors");
    let msg = load_err(&path);
    assert!(
        matches!(Checkpoint::load(&path), Err(Error::Io(_))),
        "{msg}"
    );
    // A directory is not readable as a checkpoint either.
    load_err(&dir.0);
}

#[test]
fn truncated_file_is_rejected() {
    let dir = TempDir::new("truncated");
    let good = dir.file("good.safetensors");
    sample().save(&good).unwrap();
    let bytes = fs::read(&good).unwrap();
    let path = dir.file("cut.safetensors");
    for len in [
        0,
        1,
        7,
        8,
        9,
        20,
        bytes.len() / 2,
        bytes.len() - 4,
        bytes.len() - 1,
    ] {
        fs::write(&path, &bytes[..len]).unwrap();
        let msg = load_err(&path);
        assert!(msg.contains("safetensors"), "len {len}: {msg}");
    }
    // Trailing junk is rejected too (the file must end where the data ends).
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 4]);
    fs::write(&path, &long).unwrap();
    load_err(&path);
}

#[test]
fn random_garbage_is_rejected() {
    let dir = TempDir::new("garbage");
    let path = dir.file("junk.safetensors");
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for len in [1usize, 8, 16, 100, 4096, 65536] {
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        fs::write(&path, &junk).unwrap();
        load_err(&path);
        // Same junk behind a plausible header length.
        let mut framed = ((len as u64).min(32)).to_le_bytes().to_vec();
        framed.extend_from_slice(&junk);
        fs::write(&path, &framed).unwrap();
        load_err(&path);
    }
    fs::write(&path, b"{\"not\": \"safetensors\"}").unwrap();
    load_err(&path);
}

#[test]
fn hostile_header_offsets_are_an_error_not_a_panic() {
    // Offsets whose sum with the header length overflows usize.
    let big = usize::MAX / 8; // the largest U8 element count the parser accepts
    let mut entries = Vec::new();
    let mut start = 0usize;
    for (i, size) in [big, big, big, big, big, big, big, big, 4]
        .into_iter()
        .enumerate()
    {
        entries.push(format!(
            "\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[{size}],\"data_offsets\":[{start},{}]}}",
            start + size
        ));
        start += size;
    }
    let header = format!("{{{}}}", entries.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    let dir = TempDir::new("hostile");
    let path = dir.file("h.safetensors");
    fs::write(&path, &bytes).unwrap();
    load_err(&path);
}

#[test]
fn safetensors_without_our_metadata_is_not_a_wmvl_checkpoint() {
    let dir = TempDir::new("foreign");
    let path = dir.file("foreign.safetensors");
    let t = [("w", Dtype::F32, vec![1, 2], f32_bytes(&[1.0, 2.0]))];

    fs::write(&path, raw_file(&t, None)).unwrap();
    assert!(load_err(&path).contains("not a wmvl checkpoint"));

    fs::write(&path, raw_file(&t, Some(&[("foo", "bar")]))).unwrap();
    assert!(load_err(&path).contains("not a wmvl checkpoint"));

    fs::write(
        &path,
        raw_file(&t, Some(&[("format", "pt"), ("format_version", "1")])),
    )
    .unwrap();
    let msg = load_err(&path);
    assert!(
        msg.contains("not a wmvl checkpoint") && msg.contains("\"pt\""),
        "{msg}"
    );

    fs::write(
        &path,
        raw_file(
            &t,
            Some(&[("format", "wmvl-checkpoint"), ("format_version", "2")]),
        ),
    )
    .unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("unsupported format_version \"2\""), "{msg}");

    fs::write(&path, raw_file(&t, Some(&[("format", "wmvl-checkpoint")]))).unwrap();
    assert!(load_err(&path).contains("format_version"));
}

#[test]
fn f64_tensor_is_rejected() {
    let dir = TempDir::new("f64");
    let path = dir.file("f64.safetensors");
    let b: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    fs::write(
        &path,
        raw_file(&[("weights", Dtype::F64, vec![1, 2], b)], Some(OURS)),
    )
    .unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("`weights`") && msg.contains("F64"), "{msg}");
}

#[test]
fn wrong_rank_is_rejected() {
    let dir = TempDir::new("rank");
    let path = dir.file("r.safetensors");
    let t = [("cube", Dtype::F32, vec![2, 2, 2], f32_bytes(&[0.0; 8]))];
    fs::write(&path, raw_file(&t, Some(OURS))).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("`cube`") && msg.contains("rank 3"), "{msg}");

    let t = [("scalar", Dtype::F32, vec![], f32_bytes(&[1.0]))];
    fs::write(&path, raw_file(&t, Some(OURS))).unwrap();
    assert!(load_err(&path).contains("rank 0"));
}

#[test]
fn non_finite_values_are_rejected_naming_the_tensor() {
    let dir = TempDir::new("nan");
    let path = dir.file("nan.safetensors");
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let t = [
            ("fine", Dtype::F32, vec![1, 2], f32_bytes(&[1.0, 2.0])),
            (
                "layer2.w",
                Dtype::F32,
                vec![2, 2],
                f32_bytes(&[1.0, 2.0, bad, 4.0]),
            ),
        ];
        fs::write(&path, raw_file(&t, Some(OURS))).unwrap();
        let msg = load_err(&path);
        assert!(
            msg.contains("`layer2.w`") && msg.contains("row 1, col 0"),
            "{msg}"
        );
    }
}

#[test]
fn lookup_helpers_give_clear_errors() {
    let c = sample();
    let e = c.expect_shape("w1", 3, 4).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("expected 3×4") && msg.contains("found 2×100"),
        "{msg}"
    );

    let msg = c.get("w3").unwrap_err().to_string();
    assert!(
        msg.contains("`w3`") && msg.contains("w1") && msg.contains("b1"),
        "{msg}"
    );
    assert!(c.expect_shape("w3", 1, 1).is_err());

    let msg = c.meta("depth").unwrap_err().to_string();
    assert!(msg.contains("`depth`") && msg.contains("hidden"), "{msg}");
    let msg = c.meta_parse::<usize>("activation").unwrap_err().to_string();
    assert!(
        msg.contains("`activation`") && msg.contains("\"swish\"") && msg.contains("usize"),
        "{msg}"
    );
    assert!(c.meta_parse::<u32>("missing").is_err());

    assert!(NamedTensor::new("x", 2, 2, vec![0.0; 3]).is_err());
    assert!(NamedTensor::new("x", usize::MAX, 2, vec![]).is_err());
}

/// ~30 metadata entries (with characters JSON escapes) inserted in the order `order` gives,
/// and tensors in the order given.
fn reproducible_checkpoint(order: &[usize], tensors: &[(&str, usize, usize, f32)]) -> Checkpoint {
    let mut metadata = BTreeMap::new();
    for &i in order {
        metadata.insert(
            format!("key_{:02}_{}", (i * 17) % 31, "xyz".repeat(i % 3)),
            format!("value {i}: \"quoted\", ünïcødé\n\t{}", "\\".repeat(i % 4)),
        );
    }
    // The reserved entries, as a loaded checkpoint carries them, in the middle of the rest.
    metadata.insert(FORMAT_KEY.to_string(), FORMAT.to_string());
    metadata.insert(FORMAT_VERSION_KEY.to_string(), "1".to_string());
    Checkpoint {
        tensors: tensors
            .iter()
            .map(|&(n, r, c, s)| tensor(n, r, c, s))
            .collect(),
        metadata,
    }
}

#[test]
fn equal_checkpoints_save_to_identical_bytes() {
    let dir = TempDir::new("reproducible");
    let forward: Vec<usize> = (0..31).collect();
    let shuffled: Vec<usize> = (0..31).map(|i| (i * 13 + 5) % 31).collect();
    let tensors = [
        ("w1", 2, 100, 1.0),
        ("b1", 1, 100, -2.0),
        ("layers.0.u", 1, 100, 3.0),
        ("w2", 100, 2, 0.5),
    ];
    let mut tensors_reordered = tensors;
    tensors_reordered.reverse();
    tensors_reordered.swap(0, 2);

    let a = reproducible_checkpoint(&forward, &tensors);
    let b = reproducible_checkpoint(&shuffled, &tensors_reordered);
    let mut c = reproducible_checkpoint(&shuffled, &tensors);
    // Without the reserved entries: save adds them, and the bytes are the same.
    c.metadata.remove(FORMAT_KEY);
    c.metadata.remove(FORMAT_VERSION_KEY);

    let paths: Vec<PathBuf> = (0..5)
        .map(|i| dir.file(&format!("{i}.safetensors")))
        .collect();
    a.save(&paths[0]).unwrap();
    b.save(&paths[1]).unwrap();
    c.save(&paths[2]).unwrap();
    a.save(&paths[3]).unwrap(); // the same checkpoint again (a fresh HashMap inside)
    Checkpoint::load(&paths[1])
        .unwrap()
        .save(&paths[4])
        .unwrap(); // a loaded copy
    let first = fs::read(&paths[0]).unwrap();
    for p in &paths[1..] {
        assert!(
            fs::read(p).unwrap() == first,
            "{} differs from {}",
            p.display(),
            paths[0].display()
        );
    }

    // The header: 8-byte aligned, metadata first with its keys in sorted order.
    let n = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "header length {n} is not a multiple of 8");
    let header = std::str::from_utf8(&first[8..8 + n]).unwrap();
    assert!(header.starts_with("{\"__metadata__\":{"), "{header}");
    let positions: Vec<usize> = a
        .metadata
        .keys()
        .map(|k| header.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert_eq!(positions.len(), 33);
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "metadata keys are not in sorted order: {header}"
    );

    // Still a valid safetensors file with everything in it.
    assert!(safetensors::SafeTensors::deserialize(&first).is_ok());
    let back = Checkpoint::load(&paths[0]).unwrap();
    assert_eq!(back.metadata, a.metadata);
    let mut expected = a.tensors.clone();
    expected.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(back.tensors, expected);
}
