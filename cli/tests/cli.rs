//! End-to-end tests of the `msloss` binary: energy and gradient files, gradcheck, bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use msloss::rng::RandomInputs;
use msloss::{Backend, Input, Outputs, Params, Reference, Scores, Shape};
use npyz::WriterBuilder;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_msloss"))
}

fn write<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
    let mut buf = vec![];
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(&mut buf).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
    std::fs::write(path, buf).unwrap();
}

fn read<T: npyz::Deserialize>(path: &Path) -> (Vec<u64>, Vec<T>) {
    let f = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
    (f.shape().to_vec(), f.into_vec().unwrap())
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

/// A 3D problem written as f64 files; returns the files and the reference's answer.
fn setup() -> (Files, Shape, RandomInputs<f64>) {
    let files = Files { dir: tempfile::tempdir().unwrap() };
    let shape = Shape::new(2, 3, 2, 3, 4, 5).unwrap();
    let d = RandomInputs::<f64>::new(shape, 42);
    write(&files.path("z.npy"), &[2, 3, 3, 4, 5], &d.logits);
    write(&files.path("x.npy"), &[2, 2, 3, 4, 5], &d.image);
    let mask_u8: Vec<u8> = d.mask.iter().map(|&v| v as u8).collect();
    write(&files.path("m.npy"), &[2, 3, 4, 5], &mask_u8);
    (files, shape, d)
}

#[test]
fn energy_matches_the_reference_and_writes_the_gradient() {
    let (f, shape, d) = setup();
    for backend in ["reference", "cpu"] {
        let out = run(&[
            "energy",
            "--image",
            &f.s("x.npy"),
            "--logits",
            &f.s("z.npy"),
            "--mask",
            &f.s("m.npy"),
            "--lambda",
            "0.1",
            "--length",
            "charbonnier",
            "--backend",
            backend,
            "--grad-out",
            &f.s("g.npy"),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let params = Params { lambda: 0.1, length: msloss::LengthKind::Charbonnier, ..Params::default() };
        let input = Input::new(shape, Scores::Logits(&d.logits), &d.image, Some(&d.mask)).unwrap();
        let mut g = vec![0.0; shape.scores_len()];
        let mut c = vec![0.0; shape.centroids_len()];
        let e = Reference
            .evaluate(
                &input,
                &params,
                Outputs { grad: Some(&mut g), centroids: Some(&mut c) },
                &mut Reference.workspace(),
            )
            .unwrap();
        let total = json["total"].as_f64().unwrap();
        assert!((total - e.total).abs() <= 1e-12 * e.total.abs(), "{total} vs {}", e.total);
        assert!((json["fidelity"].as_f64().unwrap() + json["length"].as_f64().unwrap() - total).abs() < 1e-9);
        assert!((json["centroids"][1][2][1].as_f64().unwrap() - c[(3 + 2) * 2 + 1]).abs() < 1e-12);
        let (gshape, gfile) = read::<f64>(&f.path("g.npy"));
        assert_eq!(gshape, vec![2, 3, 3, 4, 5]);
        let max = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (a, b) in gfile.iter().zip(&g) {
            assert!((a - b).abs() <= 1e-12 * max);
        }
    }
}

#[test]
fn energy_keeps_the_f32_dtype_and_4d_shape() {
    let f = Files { dir: tempfile::tempdir().unwrap() };
    let shape = Shape::new_2d(1, 2, 3, 6, 7).unwrap();
    let d = RandomInputs::<f32>::new(shape, 3);
    write(&f.path("y.npy"), &[1, 2, 6, 7], &d.probs);
    write(&f.path("x.npy"), &[1, 3, 6, 7], &d.image);
    let out = run(&["energy", "--image", &f.s("x.npy"), "--probs", &f.s("y.npy"), "--grad-out", &f.s("g.npy")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (gshape, g) = read::<f32>(&f.path("g.npy"));
    assert_eq!((gshape, g.len()), (vec![1, 2, 6, 7], 84));
}

#[test]
fn gradcheck_passes_and_reports() {
    for args in [
        &["--shape", "2,3,2,5,4", "--length", "l1", "--mask"][..],
        &["--shape", "1,2,1,4,3,3", "--length", "charbonnier", "--dtype", "f32", "--input", "probs"][..],
        &["--shape", "1,2,3,12,16,2", "--length", "l2", "--reduction", "mean"][..],
        &["--shape", "2,3,2,7,8", "--fidelity", "local", "--sigma", "1.5", "--mask"][..],
        &["--shape", "1,2,1,5,6,3", "--fidelity", "local", "--sigma", "0.8", "--dtype", "f32", "--input", "probs"][..],
    ] {
        let out = bin().arg("gradcheck").args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["pass"], true);
        assert!(json["max_rel_error"].as_f64().unwrap() < 1e-4);
    }
}

#[test]
fn the_local_fidelitys_sigma_is_checked() {
    for (args, needle) in [
        (&["--fidelity", "local"][..], "--sigma"),
        (&["--fidelity", "local", "--sigma", "0"][..], "parameter sigma must be finite, > 0"),
        (&["--fidelity", "local", "--sigma", "9"][..], "at most the largest spatial extent of the input, got 9"),
        (&["--sigma", "2"][..], "sigma must be given only with --fidelity local"),
    ] {
        let out = bin().args(["gradcheck", "--shape", "1,2,1,4,8"]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && out.stdout.is_empty(), "{args:?} succeeded");
        assert!(err.contains(needle) && !err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn segment_takes_the_local_fidelity_with_its_sigma() {
    for (args, needle) in [
        (&["--fidelity", "local"][..], "--sigma"),
        (&["--sigma", "4"][..], "sigma must be given only with --fidelity local"),
        (&["--fidelity", "local", "--sigma", "-1"][..], "sigma"),
        (&["--fidelity", "local", "--sigma", "1e9"][..], "at most the largest extent of the image"),
    ] {
        let out = bin().args(["segment", "--size", "32", "--quiet"]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && out.stdout.is_empty(), "{args:?} succeeded");
        assert!(err.contains(needle) && !err.contains("panicked"), "{args:?}: {err}");
    }
    let out = bin().args(["segment", "--size", "32", "--phases", "2", "--fidelity", "local", "--sigma", "4"]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn gradcheck_fails_loudly_when_the_tolerance_cannot_be_met() {
    // A tolerance below what any floating-point check reaches must make the command exit non-zero.
    let out = run(&["gradcheck", "--shape", "1,2,1,4,4", "--dtype", "f32", "--tol", "1e-30"]);
    assert_eq!(out.status.code(), Some(1));
}

/// Runs a failing command and checks: non-zero exit, the message on stderr, nothing on stdout,
/// no gradient file left behind.
fn fails(f: &Files, args: &[&str], needle: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: stderr `{err}` lacks `{needle}`");
    assert!(out.stdout.is_empty());
    assert!(!f.path("out.npy").exists(), "{args:?} left an output file");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_exits_non_zero_with_a_message_and_no_output() {
    let (f, _, d) = setup();
    let g = f.s("out.npy");
    let x = f.s("x.npy");
    let z = f.s("z.npy");
    // Mismatched shapes.
    write(&f.path("x_b1.npy"), &[1, 2, 3, 4, 5], &d.image[..60 * 2]);
    fails(
        &f,
        &["energy", "--image", &f.s("x_b1.npy"), "--logits", &z, "--grad-out", &g],
        "B = 1 but the scores have B = 2",
    );
    // Zero-sized.
    write::<f64>(&f.path("empty.npy"), &[2, 3, 0, 4, 5], &[]);
    write::<f64>(&f.path("x_empty.npy"), &[2, 2, 0, 4, 5], &[]);
    fails(
        &f,
        &["energy", "--image", &f.s("x_empty.npy"), "--logits", &f.s("empty.npy"), "--grad-out", &g],
        "zero-sized",
    );
    // Unsupported rank and dtype.
    write(&f.path("r3.npy"), &[3, 4, 5], &d.logits[..60]);
    fails(&f, &["energy", "--image", &x, "--logits", &f.s("r3.npy"), "--grad-out", &g], "rank 3");
    write(&f.path("i32.npy"), &[2, 3, 3, 4, 5], &[1i32; 360]);
    fails(&f, &["energy", "--image", &x, "--logits", &f.s("i32.npy"), "--grad-out", &g], "expected float32 or float64");
    // NaN, negative probabilities, bad mask values.
    let mut nan = d.logits.clone();
    nan[7] = f64::NAN;
    write(&f.path("nan.npy"), &[2, 3, 3, 4, 5], &nan);
    fails(&f, &["energy", "--image", &x, "--logits", &f.s("nan.npy"), "--grad-out", &g], "not finite at flat index 7");
    let mut neg = d.probs.clone();
    neg[11] = -0.5;
    write(&f.path("neg.npy"), &[2, 3, 3, 4, 5], &neg);
    fails(&f, &["energy", "--image", &x, "--probs", &f.s("neg.npy"), "--grad-out", &g], "must be >= 0");
    write(&f.path("m2.npy"), &[2, 3, 4, 5], &[2u8; 120]);
    fails(&f, &["energy", "--image", &x, "--logits", &z, "--mask", &f.s("m2.npy"), "--grad-out", &g], "0 or 1");
    // Missing files, bad parameters, unwritable output.
    fails(&f, &["energy", "--image", &f.s("nope.npy"), "--logits", &z, "--grad-out", &g], "cannot read image");
    fails(&f, &["energy", "--image", &x, "--logits", &z, "--delta", "0", "--grad-out", &g], "delta");
    fails(
        &f,
        &["energy", "--image", &x, "--logits", &z, "--lambda", "-1", "--grad-out", &g],
        "parameter lambda must be",
    );
    std::fs::write(f.path("not_npy.npy"), b"hello").unwrap();
    fails(&f, &["energy", "--image", &f.s("not_npy.npy"), "--logits", &z, "--grad-out", &g], "cannot read image");
    let out = run(&["energy", "--image", &x, "--logits", &z, "--grad-out", "/nonexistent-dir/g.npy"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot write"));
    // Bad --shape for gradcheck.
    fails(&f, &["gradcheck", "--shape", "1,2,3"], "5 or 6 sizes");
}

#[test]
fn cpu_threads_flag_is_accepted_and_checked() {
    // The CPU backend's one setting: any thread count gives the same gradient, which checks out.
    let out = run(&["gradcheck", "--shape", "2,3,2,9,20", "--threads", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pass"], true);
    let out = run(&["bench", "--shape", "1,2,1,32,32", "--iters", "2", "--threads", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["median_ms"].as_f64().is_some_and(|v| v > 0.0));
    assert!(["avx512", "avx2", "scalar", "neon"].contains(&json["isa"].as_str().unwrap()), "{json}");
    for (args, needle) in [
        (&["bench", "--shape", "1,2,1,8,8", "--threads", "0"][..], "--threads must be between 1 and 1024, got 0"),
        // A huge count is refused at once rather than starting threads without bound.
        (&["bench", "--shape", "1,2,1,8,8", "--threads", "1099511627776"][..], "got 1099511627776"),
        // The tuning flags of earlier versions are gone.
        (&["bench", "--shape", "1,2,1,8,8", "--block-pixels", "64"][..], "unexpected argument '--block-pixels'"),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: stderr `{err}` lacks `{needle}`");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Runs `args` with stdout on `/dev/full` (every write fails with "no space left").
#[cfg(target_os = "linux")]
fn run_to_full(args: &[&str]) -> Output {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    bin().args(args).stdout(full).output().unwrap()
}

/// Bad sizes, outputs and a stdout that cannot be written get a message and exit 1 or 2: never a
/// panic (101) or an abort, never a destroyed input, never an output left after a failure.
#[test]
fn hostile_input_is_refused_with_a_message() {
    let (f, _, _) = setup();
    let refused = |out: &Output, code: i32, says: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains(says), "expected `{says}` in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    let huge = u64::MAX.to_string();
    refused(&run(&["bench", "--shape", "1,2,1,4,4", "--iters", &huge]), 2, "is not in 1..=1000000");
    refused(&run(&["bench", "--shape", "4096,64,3,4096,4096"]), 1, "GiB of memory");
    refused(&run(&["gradcheck", "--shape", "4096,64,3,4096,4096"]), 1, "GiB of memory");
    refused(&run(&["gradcheck", "--shape", "1,2,1,3,3", "--tol", "nan"]), 2, "finite and > 0");
    refused(&run(&["segment", "--size", &huge, "--quiet"]), 1, "more bytes than can be counted");
    // An output path that is an input, or a device, is refused before any work.
    let z = std::fs::read(f.path("z.npy")).unwrap();
    refused(
        &run(&["energy", "--image", &f.s("x.npy"), "--logits", &f.s("z.npy"), "--grad-out", &f.s("z.npy")]),
        1,
        "it is the input",
    );
    assert_eq!(std::fs::read(f.path("z.npy")).unwrap(), z, "the input was changed");
    refused(
        &run(&["energy", "--image", &f.s("x.npy"), "--logits", &f.s("z.npy"), "--grad-out", "/dev/null"]),
        1,
        "not a regular file",
    );
    #[cfg(target_os = "linux")]
    {
        // A result that cannot be printed is an error, and the outputs that came with it are not left.
        let g = f.path("g.npy");
        let energy = ["energy", "--image", &f.s("x.npy"), "--logits", &f.s("z.npy"), "--grad-out", &f.s("g.npy")];
        refused(&run_to_full(&energy), 1, "cannot write the result to stdout");
        assert!(!g.exists(), "the gradient was left behind after a failure");
        refused(&run_to_full(&["bench", "--shape", "1,2,1,4,4", "--iters", "1"]), 1, "No space left");
        refused(&run_to_full(&["gradcheck", "--shape", "1,2,1,3,3"]), 1, "No space left");
        let labels = f.path("labels.png");
        let segment = ["segment", "--size", "32", "--out", &f.s("labels.png")];
        refused(&run_to_full(&segment), 1, "No space left");
        assert!(!labels.exists(), "the label map was left behind after a failure");
        let leftovers: Vec<_> = std::fs::read_dir(f.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 3, "temporary files were left behind: {leftovers:?}");
    }
}
