//! Metrics on hand-computed cases; input loading and scaling; outputs and their all-or-nothing
//! writing.

use std::path::Path;

use msloss_cpu::CpuBackend;
use msloss_segment::output::{self, Format};
use msloss_segment::synth::{SynthSpec, generate};
use msloss_segment::{SegmentConfig, SegmentError, Volume, metrics, segment};

fn write_npy<T: npyz::AutoSerialize>(
    path: &Path,
    shape: &[u64],
    data: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    write_npy_as(path, T::default_dtype(), shape, data)
}

/// An `.npy` of `data` with the given dtype (e.g. big-endian).
fn write_npy_as<T: npyz::Serialize>(
    path: &Path,
    dtype: npyz::DType,
    shape: &[u64],
    data: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    use npyz::WriterBuilder;
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut w = npyz::WriteOptions::new().dtype(dtype).shape(shape).writer(file).begin_nd()?;
    w.extend(data)?;
    w.finish()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn metrics_hand_computed() {
    // pred [0,0,1,1] vs truth [0,0,0,1]: contingency p0∩t0 = 2, p1∩t0 = 1, p1∩t1 = 1.
    // Matching p0→t0, p1→t1: IoU(t0) = 2/(2+3−2) = 2/3, IoU(t1) = 1/(2+1−1) = 1/2.
    // Pairs: Σn² − n = 2, Σa² − n (pred) = 4, Σb² − n (truth) = 6: P = 1/2, R = 1/3, F = 0.4.
    let q = metrics::evaluate(&[0u8, 0, 1, 1], &[0u8, 0, 0, 1]).expect("same size");
    assert!(close(q.per_class_iou[0], 2.0 / 3.0) && close(q.per_class_iou[1], 0.5), "{q:?}");
    assert!(close(q.mean_iou, 7.0 / 12.0), "{q:?}");
    assert!(close(q.adapted_rand_error, 0.6), "{q:?}");
    assert!(close(q.accuracy, 0.75));
    assert_eq!(q.matched, vec![Some(0), Some(1)]);
}

#[test]
fn metrics_invariant_to_renaming_and_handle_missing_classes() {
    let truth: Vec<u32> = (0..300).map(|i| (i / 100) as u32).collect();
    let renamed: Vec<u32> = truth.iter().map(|&t| [7, 2, 40][t as usize]).collect();
    let q = metrics::evaluate(&renamed, &truth).expect("same size");
    assert!(close(q.mean_iou, 1.0) && close(q.adapted_rand_error, 0.0), "{q:?}");
    assert_eq!(q.matched, vec![Some(7), Some(2), Some(40)]);
    // One predicted class for three true ones: two classes get IoU 0.
    let q = metrics::evaluate(&vec![5u32; 300], &truth).expect("same size");
    assert_eq!(q.matched.iter().filter(|m| m.is_none()).count(), 2);
    assert!(close(q.mean_iou, (1.0 / 3.0) / 3.0), "{q:?}");
    assert!(matches!(metrics::evaluate(&[0u8; 3], &[0u8; 4]), Err(SegmentError::ShapeMismatch { .. })));
    assert!(matches!(metrics::evaluate::<u8, u8>(&[], &[]), Err(SegmentError::BadImage(_))));
}

#[test]
fn loads_16_bit_grey_and_8_bit_colour_png_scaled_to_unit_range() {
    let dir = tempfile::tempdir().expect("temp dir");
    let grey = dir.path().join("grey16.png");
    image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2, 1, vec![0u16, 65535])
        .expect("buffer")
        .save(&grey)
        .expect("save");
    let v = Volume::load(&grey).expect("loads");
    assert_eq!((v.channels(), v.dims()), (1, [1, 1, 2]));
    assert_eq!(v.data(), &[0.0, 1.0]);
    let rgb = dir.path().join("rgb.png");
    image::RgbImage::from_raw(1, 2, vec![255, 0, 51, 0, 255, 0]).expect("buffer").save(&rgb).expect("save");
    let v = Volume::load(&rgb).expect("loads");
    assert_eq!((v.channels(), v.dims()), (3, [1, 2, 1]));
    // [C, D, H, W]: red = [1, 0], green = [0, 1], blue = [0.2, 0].
    assert_eq!(v.data(), &[1.0, 0.0, 0.0, 1.0, 0.2, 0.0]);
}

#[test]
fn loads_jpeg_and_16_bit_tiff() {
    let dir = tempfile::tempdir().expect("temp dir");
    let jpg = dir.path().join("grey.jpg");
    image::GrayImage::from_raw(8, 8, vec![200u8; 64]).expect("buffer").save(&jpg).expect("save");
    let v = Volume::load(&jpg).expect("loads");
    assert_eq!((v.channels(), v.dims()), (1, [1, 8, 8]));
    assert!(v.data().iter().all(|&x| (x - 200.0 / 255.0).abs() < 0.02), "{:?}", &v.data()[..4]);
    let tif = dir.path().join("rgb16.tif");
    let px: Vec<u16> = (0..4 * 3).map(|i| if i % 3 == 1 { 65535 } else { 0 }).collect();
    image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(2, 2, px).expect("buffer").save(&tif).expect("save");
    let v = Volume::load(&tif).expect("loads");
    assert_eq!((v.channels(), v.dims()), (3, [1, 2, 2]));
    assert_eq!(v.channel(0), &[0.0; 4]);
    assert_eq!(v.channel(1), &[1.0; 4]);
}

#[test]
fn loads_npy_volumes_and_rejects_bad_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vol.npy");
    let data: Vec<u8> = (0..2 * 3 * 4 * 5).map(|i| (i % 256) as u8).collect();
    write_npy(&path, &[2u64, 3, 4, 5], data.iter().copied()).expect("write");
    let v = Volume::load(&path).expect("loads");
    assert_eq!((v.channels(), v.dims()), (2, [3, 4, 5]));
    assert_eq!(v.data()[7], 7.0 / 255.0);

    let bad_rank = dir.path().join("rank5.npy");
    write_npy(&bad_rank, &[1u64, 1, 1, 1, 2], [0.0f32, 1.0]).expect("write");
    assert!(matches!(Volume::load(&bad_rank), Err(SegmentError::Unsupported { .. })));
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").expect("write");
    let err = Volume::load(&text).unwrap_err();
    assert!(matches!(err, SegmentError::Unsupported { .. } | SegmentError::Decode { .. }), "{err}");
    let missing = dir.path().join("missing.png");
    assert!(matches!(Volume::load(&missing), Err(SegmentError::Read { .. })));
    let empty = dir.path().join("empty.npy");
    write_npy(&empty, &[1u64, 0, 3], std::iter::empty::<f32>()).expect("write");
    assert!(matches!(Volume::load(&empty), Err(SegmentError::BadImage(_))));
}

#[test]
fn npy_floats_read_alike_in_either_byte_order_across_blocks() {
    let dir = tempfile::tempdir().expect("temp dir");
    // More values than one block of the bulk reader (65,536), and not a multiple of it.
    let shape = [1u64, 300, 301];
    let data: Vec<f64> = (0..300 * 301).map(|i| (i as f64 * 0.37).sin() * 1e3).collect();
    let mut loaded = Vec::new();
    for (i, descr) in ["<f4", ">f4", "<f8", ">f8"].into_iter().enumerate() {
        let path = dir.path().join(format!("x{i}.npy"));
        let dtype = npyz::DType::Plain(descr.parse().expect("descr"));
        if descr.ends_with('4') {
            write_npy_as(&path, dtype, &shape, data.iter().map(|&v| v as f32)).expect("write");
        } else {
            write_npy_as(&path, dtype, &shape, data.iter().copied()).expect("write");
        }
        let v = Volume::load(&path).expect("loads");
        assert_eq!(v.dims(), [1, 300, 301], "{descr}");
        loaded.push(v.data().to_vec());
    }
    let want: Vec<f32> = data.iter().map(|&v| v as f32).collect();
    for (got, descr) in loaded.iter().zip(["<f4", ">f4", "<f8", ">f8"]) {
        assert!(got == &want, "{descr}");
    }
}

#[test]
fn outputs_round_trip_and_write_all_or_nothing() {
    let img = generate(&SynthSpec { phases: 3, dims: [1, 24, 32], ..SynthSpec::default() }).expect("valid");
    let seg = segment(&CpuBackend::new(), &img.volume, &SegmentConfig::default().with_phases(3), |_| {}).expect("ok");
    let dir = tempfile::tempdir().expect("temp dir");
    let png = dir.path().join("labels.png");
    let npy = dir.path().join("labels.npy");
    let overlay = dir.path().join("overlay.png");
    let svg = dir.path().join("energy.svg");
    output::write_all(vec![
        (png.clone(), output::label_png(&seg, &png).expect("png")),
        (npy.clone(), output::label_npy(&seg, &npy).expect("npy")),
        (overlay.clone(), output::overlay_png(&img.volume, &seg, &overlay).expect("overlay")),
        (svg.clone(), output::energy_svg(&seg.history, &svg).expect("svg")),
    ])
    .expect("written");
    for p in [&png, &npy] {
        let back = output::load_labels(p).expect("reads back");
        assert_eq!(back.dims, vec![24, 32]);
        assert!(back.labels.iter().zip(&seg.labels).all(|(a, &b)| *a == u64::from(b)), "{p:?} differs");
    }
    let o = image::open(&overlay).expect("overlay decodes");
    assert_eq!((o.width(), o.height()), (32, 24));
    assert!(std::fs::read_to_string(&svg).expect("svg").contains("<svg"));

    // A second set whose last file cannot be written: nothing of it may be left behind.
    let good = dir.path().join("again.png");
    let bad = dir.path().join("no such dir").join("x.svg");
    let err = output::write_all(vec![(good.clone(), vec![1, 2, 3]), (bad.clone(), vec![4])]).unwrap_err();
    assert!(matches!(err, SegmentError::Write { .. }), "{err}");
    assert!(!good.exists(), "a partial output was left behind");
    assert!(output::check_writable(&bad, &[]).is_err());
    assert!(output::check_writable(dir.path(), &[]).is_err(), "a directory is not a writable file");
    let leftovers = std::fs::read_dir(dir.path()).expect("list").count();
    assert_eq!(leftovers, 4, "temporary files were left behind");

    assert!(output::label_png(&seg, Path::new("x.png")).is_ok());
    assert_eq!(Format::of(Path::new("a.PNG"), &[Format::Png, Format::Npy]).ok(), Some(Format::Png));
    assert!(Format::of(Path::new("a.jpg"), &[Format::Png, Format::Npy]).is_err());
}

#[test]
fn volume_label_map_needs_npy() {
    let img = generate(&SynthSpec { phases: 2, colour: false, dims: [4, 6, 5], ..SynthSpec::default() }).expect("ok");
    let seg = segment(&CpuBackend::new(), &img.volume, &SegmentConfig::default(), |_| {}).expect("ok");
    assert!(matches!(output::label_png(&seg, Path::new("v.png")), Err(SegmentError::Unsupported { .. })));
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join("v.npy");
    output::write_all(vec![(p.clone(), output::label_npy(&seg, &p).expect("npy"))]).expect("written");
    assert_eq!(output::load_labels(&p).expect("reads").dims, vec![4, 6, 5]);
    // The overlay shows the middle slice.
    let o = output::overlay_png(&img.volume, &seg, &p).expect("overlay");
    assert_eq!(image::load_from_memory(&o).expect("decodes").width(), 5);
}

#[test]
fn outputs_refuse_inputs_and_special_files_and_headers_are_checked_before_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.npy");
    write_npy(&input, &[2u64, 3], [0.5f32; 6]).expect("write");
    // An output onto an input, directly or through another name for it, is refused.
    let err = output::check_writable(&input, &[&input]).expect_err("the input itself");
    assert!(err.to_string().contains("it is the input"), "{err}");
    let alias = dir.path().join(".").join("in.npy");
    assert!(output::check_writable(&alias, &[&input]).is_err(), "another path to the input");
    assert!(output::check_writable(&dir.path().join("out.npy"), &[&input]).is_ok());
    // A device is not replaced by a regular file.
    #[cfg(unix)]
    {
        let err = output::check_writable(Path::new("/dev/null"), &[]).expect_err("a device");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
    // A header that declares more data than its file holds is refused before anything is read.
    let mut bytes = std::fs::read(&input).expect("read");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let at = text.find("2, 3").expect("the shape in the header");
    bytes.splice(at..at + 4, b"9, 3".iter().copied());
    let lying = dir.path().join("lying.npy");
    std::fs::write(&lying, &bytes).expect("write");
    let err = Volume::load(&lying).expect_err("more data declared than held");
    assert!(err.to_string().contains("more than the file's"), "{err}");
    assert!(output::load_labels(&lying).is_err());
}

#[test]
fn eval_bounds_the_labels_it_matches() {
    let many: Vec<u32> = (0..2000).collect();
    let err = metrics::evaluate(&many, &many).expect_err("too many labels");
    assert!(err.to_string().contains("more than 1024 distinct labels"), "{err}");
    let few: Vec<u32> = (0..2000).map(|i| i % 1024).collect();
    assert_eq!(metrics::evaluate(&few, &few).expect("at the bound").mean_iou, 1.0);
}

#[test]
fn synthetic_sizes_that_cannot_fit_are_refused() {
    for dims in [[1, usize::MAX, 2], [1 << 20, 1 << 20, 1 << 20]] {
        let err = generate(&SynthSpec { dims, ..SynthSpec::default() }).expect_err("does not fit");
        assert!(err.to_string().contains("fit in memory"), "{dims:?}: {err}");
    }
}

#[test]
fn grey_float_tiffs_are_read_as_they_are() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("grey.tif");
    let values: Vec<f32> = (0..6 * 7).map(|i| i as f32 * 0.25 - 3.0).collect();
    {
        let file = std::fs::File::create(&path).expect("create");
        let mut tiff = tiff::encoder::TiffEncoder::new(file).expect("encoder");
        tiff.write_image::<tiff::encoder::colortype::Gray32Float>(7, 6, &values).expect("written");
    }
    let v = Volume::load(&path).expect("a grey float TIFF");
    assert_eq!((v.channels(), v.dims()), (1, [1, 6, 7]));
    assert_eq!(v.data(), &values[..], "values are read as they are, not scaled");
}
