//! Replays every fuzz target's corpus (`fuzz/corpus/<target>`) and every crash found so far
//! (`fuzz/crashes/<target>`, kept as regression tests) on stable: CI needs no nightly.

use std::path::Path;

#[test]
fn every_corpus_and_crash_file_runs_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, target) in msloss_fuzz::TARGETS {
        let corpus = msloss_fuzz::files(&root.join("corpus").join(name));
        assert!(!corpus.is_empty(), "the {name} target has no corpus in fuzz/corpus/{name}");
        for file in corpus.iter().chain(&msloss_fuzz::files(&root.join("crashes").join(name))) {
            let data = std::fs::read(file).expect("a corpus file");
            // A panic here names the file through the backtrace's message.
            eprintln!("{name}: {}", file.display());
            target(&data);
        }
    }
}
