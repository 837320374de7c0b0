//! Fixtures shared by the plugin's unit tests: paths into the source tree, scratch folders, the
//! tiny golden model and a captured answer.

use std::path::{Path, PathBuf};

use crate::library::{ConfigSpec, ModelLocation, ModelOrigin};
use crate::status::{CapturedAnswer, CapturedNote};

/// The source tree the plugin was built from.
pub const SOURCE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `relative` inside the source tree.
pub fn source_path(relative: &str) -> PathBuf {
    Path::new(SOURCE_ROOT).join(relative)
}

/// The golden test vectors (`engine/testdata/golden`).
pub fn golden() -> PathBuf {
    source_path("engine/testdata/golden")
}

/// The tiny golden test model of the source tree (random weights).
pub fn tiny_test_model() -> ModelLocation {
    ModelLocation {
        origin: ModelOrigin::TinyTest,
        config: ConfigSpec::File(golden().join("tiny_config.json")),
        weights: golden().join("tiny_model.safetensors"),
        quantize: None,
    }
}

/// A scratch path for this test process, removed if it was left behind (not created).
pub fn temp_path(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("continuo-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    path
}

/// An empty scratch folder for this test process.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = temp_path(tag);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An answer of `(start beats, end beats, key)` notes at 90 BPM on channel 2.
pub fn answer(notes: &[(f64, f64, u8)]) -> CapturedAnswer {
    CapturedAnswer {
        number: 3,
        style: "Irish Folk Tune".into(),
        tempo_bpm: 90.0,
        channel: 2,
        notes: notes
            .iter()
            .map(|&(start_beats, end_beats, key)| CapturedNote {
                start_beats,
                end_beats,
                key,
                velocity: 0.5,
            })
            .collect(),
    }
}
