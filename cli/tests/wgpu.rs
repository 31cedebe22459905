//! `--backend wgpu` end to end: `msloss energy` agrees with `--backend cpu` on the same files,
//! `gradcheck` passes, and `f64` data is refused with a hint. Needs a GPU adapter (CI installs
//! Mesa's lavapipe); skipped only when `MSLOSS_SKIP_GPU=1`.

use std::path::Path;
use std::process::{Command, Output};

use msloss::Shape;
use msloss::rng::RandomInputs;
use npyz::WriterBuilder;

fn skip() -> bool {
    std::env::var("MSLOSS_SKIP_GPU").as_deref() == Ok("1")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msloss")).args(args).output().expect("run msloss")
}

fn write<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
    let mut buf = vec![];
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(&mut buf).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
    std::fs::write(path, buf).unwrap();
}

fn read_f32(path: &Path) -> Vec<f32> {
    npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap().into_vec().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "msloss failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn energy_wgpu_agrees_with_cpu() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let shape = Shape::new(2, 3, 2, 3, 10, 12).unwrap();
    let d = RandomInputs::<f32>::new(shape, 7);
    write(Path::new(&p("z.npy")), &[2, 3, 3, 10, 12], &d.logits);
    write(Path::new(&p("x.npy")), &[2, 2, 3, 10, 12], &d.image);
    write(Path::new(&p("m.npy")), &[2, 3, 10, 12], &d.mask);
    let (z, x, m) = (p("z.npy"), p("x.npy"), p("m.npy"));
    for extra in [&["--length", "l1"][..], &["--length", "charbonnier", "--reduction", "mean", "--lambda", "0.05"][..]]
    {
        let mut results = Vec::new();
        for backend in ["cpu", "wgpu"] {
            let g = p(&format!("g_{backend}.npy"));
            let mut args =
                vec!["energy", "--logits", &z, "--image", &x, "--mask", &m, "--backend", backend, "--grad-out", &g];
            args.extend_from_slice(extra);
            results.push((json(&run(&args)), read_f32(Path::new(&g))));
        }
        let ((cpu, g_cpu), (gpu, g_gpu)) = (&results[0], &results[1]);
        for key in ["fidelity", "length", "total"] {
            let (a, b) = (cpu[key].as_f64().unwrap(), gpu[key].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-5 * a.abs(), "{extra:?} {key}: cpu {a}, wgpu {b}");
        }
        let scale = g_cpu.iter().fold(0.0f32, |s, v| s.max(v.abs()));
        let worst = g_cpu.iter().zip(g_gpu).fold(0.0f32, |s, (a, b)| s.max((a - b).abs()));
        assert!(worst <= 1e-5 * scale, "{extra:?} gradient: worst {worst}, scale {scale}");
        let (ca, cb) = (&cpu["centroids"], &gpu["centroids"]);
        let flat = |v: &serde_json::Value| -> Vec<f64> {
            v.as_array()
                .unwrap()
                .iter()
                .flat_map(|a| a.as_array().unwrap().iter())
                .flat_map(|a| a.as_array().unwrap().iter())
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        for (a, b) in flat(ca).iter().zip(flat(cb)) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "centroids: cpu {a}, wgpu {b}");
        }
    }
    // f64 files: refused with a hint, not silently rounded.
    write(Path::new(&p("z64.npy")), &[2, 3, 3, 10, 12], &d.logits.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
    let out = run(&["energy", "--logits", &p("z64.npy"), "--image", &x, "--backend", "wgpu"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("computes in f32"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gradcheck_and_bench_on_wgpu() {
    if skip() {
        return;
    }
    let out = run(&[
        "gradcheck",
        "--backend",
        "wgpu",
        "--dtype",
        "f32",
        "--shape",
        "1,3,2,6,7",
        "--mask",
        "--length",
        "charbonnier",
    ]);
    let j = json(&out);
    assert_eq!(j["pass"], serde_json::Value::Bool(true), "{j}");
    assert_eq!(j["backend"], "wgpu");
    let out = run(&["bench", "--backend", "wgpu", "--shape", "1,2,1,32,32"]);
    let j = json(&out);
    assert_eq!(j["backend"], "wgpu");
    assert!(j["median_ms"].as_f64().unwrap() > 0.0, "{j}");
}
