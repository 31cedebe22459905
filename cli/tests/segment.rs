//! End-to-end tests of `msloss segment` and `msloss eval`: outputs, quality, bad input.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msloss")).args(args).output().expect("the binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn built_in_image_outputs_and_eval() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = |n: &str| dir.path().join(n);
    let (labels, overlay, plot, summary, truth, input) =
        (p("labels.png"), p("overlay.png"), p("energy.svg"), p("summary.json"), p("truth.png"), p("input.png"));
    let o = run(&[
        "segment",
        "--size",
        "48",
        "--phases",
        "2",
        "--grey",
        "--seed",
        "3",
        "--quiet",
        "--out",
        s(&labels),
        "--overlay",
        s(&overlay),
        "--plot",
        s(&plot),
        "--json",
        s(&summary),
        "--save-truth",
        s(&truth),
        "--save-input",
        s(&input),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "--quiet printed something");
    let sum = json(&std::fs::read(&summary).expect("summary written"));
    assert_eq!(sum["phases"], 2);
    assert_eq!(sum["shape"], serde_json::json!([1, 1, 48, 48]));
    assert!(sum["quality"]["mean_iou"].as_f64().expect("mean IoU") >= 0.95, "{sum}");
    assert!(sum["energy"]["total"].as_f64().expect("energy") > 0.0);
    assert!(sum["seconds"]["total"].as_f64().is_some() && sum["iterations"].as_u64().is_some());
    assert!(std::fs::read_to_string(&plot).expect("plot").contains("<svg"));
    assert!(overlay.exists());

    let o = run(&["eval", s(&labels), s(&truth)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let q = json(&o.stdout);
    assert!(q["mean_iou"].as_f64().expect("mean IoU") >= 0.95, "{q}");
    assert!(q["adapted_rand_error"].as_f64().expect("ARE") <= 0.05, "{q}");
    assert_eq!(q["per_class_iou"].as_object().expect("per class").len(), 2);

    // The saved input segments to the same labels (as .npy this time).
    let npy = p("labels.npy");
    let o = run(&["segment", s(&input), "--phases", "2", "--seed", "3", "--quiet", "--out", s(&npy)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["eval", s(&npy), s(&truth)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(json(&o.stdout)["mean_iou"].as_f64().expect("mean IoU") >= 0.95);
}

#[test]
fn prints_quality_of_the_built_in_image() {
    let o = run(&["segment", "--size", "32", "--phases", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("mean IoU") && out.contains("adapted Rand error"), "{out}");
}

#[test]
fn bad_input_fails_cleanly_without_partial_outputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = |n: &str| dir.path().join(n);
    let expect_err = |args: &[&str], needle: &str| {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let e = stderr(&o);
        assert!(e.contains(needle), "{args:?}: stderr {e:?} lacks {needle:?}");
    };
    expect_err(&["segment", "--size", "16", "--phases", "1"], "phases");
    let tiny = p("tiny.npy");
    {
        use npyz::WriterBuilder;
        let mut buf = Vec::new();
        let mut w =
            npyz::WriteOptions::new().default_dtype().shape(&[2, 2]).writer(&mut buf).begin_nd().expect("header");
        w.extend([0.0f32, 0.3, 0.6, 1.0]).expect("data");
        w.finish().expect("finish");
        std::fs::write(&tiny, buf).expect("write");
    }
    expect_err(&["segment", s(&tiny), "--phases", "5"], "pixel count 4");
    expect_err(&["segment", s(&tiny)], "--phases");
    let text = p("text.png");
    std::fs::write(&text, "hello").expect("write");
    expect_err(&["segment", s(&text), "--phases", "2"], "text.png");
    expect_err(&["segment", s(&p("missing.tif")), "--phases", "2"], "cannot read");
    let empty = p("empty.npy");
    {
        use npyz::WriterBuilder;
        let mut buf = Vec::new();
        let w = npyz::WriteOptions::<f32>::new().default_dtype().shape(&[0, 4]).writer(&mut buf).begin_nd();
        w.expect("header").finish().expect("finish");
        std::fs::write(&empty, buf).expect("write");
    }
    expect_err(&["segment", s(&empty), "--phases", "2"], "empty");
    expect_err(&["segment", "--size", "16", "--out", s(&p("labels.jpg"))], ".png or .npy");
    expect_err(&["segment", "--size", "8", "--depth", "4", "--out", s(&p("vol.png"))], ".npy");
    expect_err(&["eval", s(&tiny), s(&text)], "integer or bool dtype");

    // One unwritable output: an error, and none of the others written.
    let ok = p("overlay.png");
    let bad = p("no-such-dir").join("labels.png");
    expect_err(&["segment", "--size", "16", "--overlay", s(&ok), "--out", s(&bad)], "no-such-dir");
    assert!(!ok.exists(), "a partial output was left behind");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["empty.npy", "text.png", "tiny.npy"], "stray files");
}

/// A float32 `.npy` image `[H, W]` at `path`.
fn write_npy(path: &Path, h: u64, w: u64, data: &[f32]) {
    use npyz::WriterBuilder;
    let mut buf = Vec::new();
    let mut wr = npyz::WriteOptions::new().default_dtype().shape(&[h, w]).writer(&mut buf).begin_nd().expect("header");
    wr.extend(data.iter().copied()).expect("data");
    wr.finish().expect("finish");
    std::fs::write(path, buf).expect("write");
}

#[test]
fn bad_phase_counts_are_clear_errors_without_outputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = |n: &str| dir.path().join(n);
    let out = p("labels.npy");
    let expect_err = |args: &[&str], needle: &str| {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert_eq!(o.status.code(), Some(if needle.starts_with("invalid value") { 2 } else { 1 }), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains(needle), "{args:?}: stderr {e:?} lacks {needle:?}");
        assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
        assert!(!out.exists(), "{args:?} left an output behind");
    };
    // Two values over 64 pixels, and a constant image.
    let two = p("two.npy");
    write_npy(&two, 8, 8, &(0..64).map(|i| if i < 30 { 0.2 } else { 0.8 }).collect::<Vec<f32>>());
    let flat = p("flat.npy");
    write_npy(&flat, 8, 8, &[0.5; 64]);
    for k in ["0", "1"] {
        expect_err(&["segment", s(&two), "--phases", k, "--out", s(&out)], ">= 2");
        expect_err(&["segment", "--size", "16", "--phases", k, "--out", s(&out)], "between 2 and 5");
    }
    expect_err(&["segment", s(&two), "--phases", "256", "--out", s(&out)], "<= min(255");
    expect_err(&["segment", s(&two), "--phases", "65", "--out", s(&out)], "pixel count 64");
    expect_err(&["segment", s(&two), "--phases", "3", "--out", s(&out)], "fewer than 3 distinct pixel values");
    expect_err(&["segment", s(&flat), "--phases", "2", "--out", s(&out)], "fewer than 2 distinct pixel values");
    expect_err(&["segment", s(&two), "--phases", "many", "--out", s(&out)], "invalid value 'many'");
    expect_err(&["segment", s(&two), "--phases=-1", "--out", s(&out)], "invalid value '-1'");
    expect_err(&["segment", s(&flat), "--phases", "auto", "--out", s(&out)], "fewer than 2 distinct pixel values");
    // Two values, two phases: fine, and `auto` stops at the values there are.
    let o = run(&["segment", s(&two), "--phases", "2", "--out", s(&out), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(&out).expect("remove");
    let summary = p("auto.json");
    let o = run(&["segment", s(&two), "--phases", "auto", "--out", s(&out), "--json", s(&summary), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&std::fs::read(&summary).expect("summary"));
    assert_eq!(v["phases"], 2, "{v}");
    assert!(v["auto"]["reason"].as_str().expect("a reason").contains("K 3 and above not tried"), "{v}");
}

#[test]
fn phases_auto_chooses_and_explains_k() {
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = dir.path().join("s.json");
    let o = run(&["segment", "--size", "96", "--grey", "--phases", "auto", "--json", s(&summary)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("--phases auto chose K = 3: K 3 has the shortest description length"), "{out}");
    let v = json(&std::fs::read(&summary).expect("summary"));
    assert_eq!(v["phases"], 3, "{v}");
    assert!(v["quality"]["mean_iou"].as_f64().expect("quality") > 0.95, "{v}");
    let cands = v["auto"]["candidates"].as_array().expect("candidates");
    assert_eq!(cands[0]["phases"], 2);
    assert!(cands.len() >= 3, "{v}");
    assert!(v["auto"]["criterion"].as_str().expect("criterion").contains("ln(3)*boundary_pairs"));
}

#[test]
fn small_close_built_in_image_finds_all_four_phases() {
    // Issue 27's image: the k-means start lost its small phase (IoU 0, mean IoU 0.73).
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = dir.path().join("s.json");
    let o = run(&["segment", "--image", "small-close", "--size", "128", "--seed", "5", "--json", s(&summary)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&std::fs::read(&summary).expect("summary"));
    assert_eq!(v["phases"], 4, "{v}");
    let per = v["quality"]["per_class_iou"].as_array().expect("per-phase IoU");
    assert!(per.iter().all(|q| q.as_f64().expect("IoU") >= 0.9), "{v}");
    assert!(v["contrast_to_noise"].as_f64().expect("r") > 1.0, "{v}");
    // Its own noise and two dimensions: the Voronoi image's flags are refused.
    for extra in [["--depth", "4"], ["--noise", "0.1"]] {
        let o = run(&["segment", "--image", "small-close", "--size", "32", extra[0], extra[1]]);
        assert_eq!(o.status.code(), Some(1), "{extra:?}");
        assert!(stderr(&o).contains("apply to the Voronoi image only"), "{}", stderr(&o));
    }
}
