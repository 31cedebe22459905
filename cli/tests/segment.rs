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
