//! "Quantize on load": an f32 or bf16 checkpoint (an official `.pt`, say) chosen with an 8- or
//! 4-bit format is quantized once, as it is read, and kept in the user's cache as
//! `<base fingerprint>-<format>.safetensors`; after that the quantized file is loaded directly
//! (a fraction of a second for Medium, where quantizing takes seconds and reads the whole f32
//! file).
//!
//! The fingerprint is that of the f32 weights, so styles made for the original base play on
//! the quantized one. It is only known once the weights are read, so `index.json` beside the
//! files remembers which fingerprint a source file had, by its canonical path, length and
//! modification time; a source that changed is quantized again. A cache that cannot be
//! written is not an error: the model still loads, quantized in memory.
//!
//! **Thread:** whichever thread loads the model (the loader or the generator), never the
//! audio thread.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use continuo_engine::quant::QFormat;
use continuo_engine::{Config, Moonbeam, Precision};
use serde::{Deserialize, Serialize};

use super::factory;

/// The folder of quantized copies: `quantized/` in the plugin's cache folder.
pub fn cache_dir() -> PathBuf {
    factory::cache_root().join("quantized")
}

/// A quantized model and how it was obtained.
pub struct Loaded {
    pub model: Moonbeam,
    /// Read from the cache (`false`: quantized now).
    pub reused: bool,
    /// Why the quantized copy could not be kept, if it could not.
    pub cache_error: Option<String>,
}

/// What `index.json` remembers of one source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    source: PathBuf,
    len: u64,
    modified_ns: u128,
    fingerprint: String,
}

/// The source's identity for the index: canonical path, length, modification time.
fn identity(source: &Path) -> Result<(PathBuf, u64, u128), String> {
    let canonical = std::fs::canonicalize(source)
        .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    let meta = std::fs::metadata(&canonical)
        .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok((canonical, meta.len(), modified_ns))
}

fn read_index(dir: &Path) -> Vec<Entry> {
    std::fs::read(dir.join("index.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn write_index(dir: &Path, entries: &[Entry]) -> std::io::Result<()> {
    let tmp = dir.join("index.json.partial");
    std::fs::write(&tmp, serde_json::to_vec_pretty(entries)?)?;
    std::fs::rename(tmp, dir.join("index.json"))
}

fn file_for(dir: &Path, fingerprint: &str, format: QFormat) -> PathBuf {
    dir.join(format!("{fingerprint}-{format}.safetensors"))
}

/// `source` for `cfg` with `format` weights, from the cache in `dir` if it holds them, else
/// quantized now (and kept there). A source that is quantized already loads as it is.
pub fn load(cfg: &Config, source: &Path, format: QFormat, dir: &Path) -> Result<Loaded, String> {
    let (canonical, len, modified_ns) = identity(source)?;
    let mut index = read_index(dir);
    let known = index
        .iter()
        .find(|e| e.source == canonical && e.len == len && e.modified_ns == modified_ns)
        .map(|e| e.fingerprint.clone());
    if let Some(fingerprint) = known {
        let path = file_for(dir, &fingerprint, format);
        if path.is_file() {
            // A copy that does not load, or is not what it says, is made again below.
            if let Ok(model) = Moonbeam::load(cfg, &path, Precision::F32) {
                let matches = model
                    .quantization
                    .as_ref()
                    .is_some_and(|q| q.format == format && q.base_fingerprint == fingerprint);
                if matches {
                    return Ok(Loaded {
                        model,
                        reused: true,
                        cache_error: None,
                    });
                }
            }
        }
    }
    let model = match Moonbeam::load_quantized(cfg, source, Precision::F32, format) {
        Ok(model) => model,
        Err(e) if e.to_string().contains("already quantized") => {
            let model = Moonbeam::load(cfg, source, Precision::F32)
                .map_err(|e| format!("cannot load {}: {e}", source.display()))?;
            return Ok(Loaded {
                model,
                reused: false,
                cache_error: None,
            });
        }
        Err(e) => return Err(format!("cannot load {}: {e}", source.display())),
    };
    let fingerprint = model.fingerprint();
    let kept = (|| -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let card = serde_json::json!({
            "quantized_from": canonical.display().to_string(),
            "by": "the Continuo plugin (quantize on load)",
        });
        continuo_engine::model::weights::save_weights(
            &model,
            &file_for(dir, &fingerprint, format),
            &card,
        )
        .map_err(|e| e.to_string())?;
        index.retain(|e| e.source != canonical);
        index.push(Entry {
            source: canonical.clone(),
            len,
            modified_ns,
            fingerprint: fingerprint.clone(),
        });
        write_index(dir, &index).map_err(|e| e.to_string())
    })();
    Ok(Loaded {
        model,
        reused: false,
        cache_error: kept.err().map(|e| {
            format!(
                "the quantized copy could not be kept in {}: {e}",
                dir.display()
            )
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{golden, temp_dir};

    fn tiny_config() -> Config {
        Config::from_file(&golden().join("tiny_config.json")).unwrap()
    }

    /// The release-format checkpoint is quantized once and then read from the cache; the copy
    /// answers to the f32 fingerprint; a changed source is quantized again.
    #[test]
    fn a_checkpoint_is_quantized_once_and_then_read_from_the_cache() {
        let dir = temp_dir("quantize-on-load");
        let source = dir.join("model.pt");
        std::fs::copy(golden().join("tiny_model_release_format_bf16.pt"), &source).unwrap();
        let cache = dir.join("cache");
        let cfg = tiny_config();
        let f32_fingerprint = Moonbeam::load(&cfg, &source, Precision::F32)
            .unwrap()
            .fingerprint();

        let first = load(&cfg, &source, QFormat::Q4, &cache).unwrap();
        assert!(!first.reused && first.cache_error.is_none());
        let q = first.model.quantization.clone().unwrap();
        assert_eq!(
            (q.format, q.base_fingerprint.as_str()),
            (QFormat::Q4, f32_fingerprint.as_str())
        );
        let file = file_for(&cache, &f32_fingerprint, QFormat::Q4);
        let written = std::fs::metadata(&file).unwrap().modified().unwrap();

        let again = load(&cfg, &source, QFormat::Q4, &cache).unwrap();
        assert!(again.reused);
        assert_eq!(again.model.quantization, first.model.quantization);
        assert_eq!(
            std::fs::metadata(&file).unwrap().modified().unwrap(),
            written
        );
        // The other format is a file of its own.
        let q8 = load(&cfg, &source, QFormat::Q8, &cache).unwrap();
        assert!(!q8.reused);
        assert!(load(&cfg, &source, QFormat::Q8, &cache).unwrap().reused);

        // Another checkpoint at the same path: quantized again, under its own fingerprint.
        std::fs::copy(golden().join("tiny_model.safetensors"), &source).unwrap();
        let changed = load(&cfg, &source, QFormat::Q4, &cache).unwrap();
        assert!(!changed.reused);
        let other = changed.model.quantization.unwrap().base_fingerprint;
        assert_ne!(other, f32_fingerprint);
        assert!(file_for(&cache, &other, QFormat::Q4).is_file());

        // A cache that cannot be written: the model still loads, and says why it was not kept.
        let blocked = dir.join("blocked");
        std::fs::write(&blocked, b"a file, not a folder").unwrap();
        let uncached = load(&cfg, &source, QFormat::Q4, &blocked).unwrap();
        assert!(uncached.cache_error.is_some());
        assert!(uncached.model.quantization.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
