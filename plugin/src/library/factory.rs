//! Factory content: the bundled base model and the shipped styles, compiled into the plugin.
//!
//! A `.clap` or `.vst3` copied to another computer has no source tree beside it, so the files
//! the plugin needs out of the box are part of its binary (`include_bytes!`, about 37 MB). The
//! first time an instance needs them they are written into a folder of their own in the user's
//! cache ([`factory_dir`]); from then on they are ordinary files, read by the same code as a
//! user's own model or styles.
//!
//! Invariants:
//! * Each file is written under a temporary name and renamed into place, so instances (or
//!   hosts) starting together never read half a file.
//! * A file already there is used only if it equals the compiled-in bytes; anything else
//!   (another build, a damaged file) is replaced.
//! * Only the loader and generator threads call [`install`]; it does file I/O.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The bundled model's config, relative to the factory folder.
pub const MODEL_CONFIG: &str = "assets/configs/continuo_base.json";
/// The bundled model's weights, relative to the factory folder.
pub const MODEL_WEIGHTS: &str = "assets/continuo_base.safetensors";
/// The shipped styles' folder, relative to the factory folder (the source tree's layout).
pub const STYLES: &str = "lora-weights";

/// One compiled-in file and where it goes, relative to the factory folder.
struct FactoryFile {
    path: &'static str,
    bytes: &'static [u8],
}

/// A file of the source tree, compiled in under the same relative path.
macro_rules! shipped {
    ($path:literal) => {
        FactoryFile {
            path: $path,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../", $path)),
        }
    };
}

/// Everything the plugin ships. The styles must match `lora-weights/` (a test checks).
const FILES: &[FactoryFile] = &[
    shipped!("assets/configs/continuo_base.json"),
    shipped!("assets/continuo_base.safetensors"),
    shipped!("lora-weights/chorale/chorale.safetensors"),
    shipped!("lora-weights/folk/folk.safetensors"),
    shipped!("lora-weights/ragtime/ragtime.safetensors"),
];

/// Where the factory content of this version goes: a `factory-<version>` folder in
/// [`cache_root`].
pub fn factory_dir() -> PathBuf {
    cache_root().join(concat!("factory-", env!("CARGO_PKG_VERSION")))
}

/// The plugin's cache folder: `$XDG_CACHE_HOME/continuo` (or `~/.cache/continuo`) on Linux,
/// `~/Library/Caches/Continuo` on macOS, `%LOCALAPPDATA%\Continuo` on Windows; the system's
/// temporary folder when none of those is set.
pub fn cache_root() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = if cfg!(target_os = "windows") {
        var("LOCALAPPDATA").map(|d| d.join("Continuo"))
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library/Caches/Continuo"))
    } else {
        var("XDG_CACHE_HOME")
            .map(|d| d.join("continuo"))
            .or_else(|| var("HOME").map(|h| h.join(".cache/continuo")))
    };
    cache.unwrap_or_else(|| std::env::temp_dir().join("continuo"))
}

/// Makes sure the factory content is in [`factory_dir`] and returns that folder. If it cannot
/// be written there (a read-only home, say), the system's temporary folder is tried.
pub fn installed() -> Result<PathBuf, String> {
    let dir = factory_dir();
    // Compared byte for byte once per process; after that a file of the right length will do
    // (the loader asks on every rescan, and the model alone is 35 MB).
    static VERIFIED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut verified = crate::sync::lock(&VERIFIED);
    let still_there = |v: &&PathBuf| {
        FILES.iter().all(|f| {
            std::fs::metadata(v.join(f.path)).is_ok_and(|m| m.len() == f.bytes.len() as u64)
        })
    };
    if let Some(dir) = verified.as_ref().filter(still_there) {
        return Ok(dir.clone());
    }
    let result = install_or_fallback(dir);
    if let Ok(dir) = &result {
        *verified = Some(dir.clone());
    }
    result
}

fn install_or_fallback(dir: PathBuf) -> Result<PathBuf, String> {
    match install(&dir) {
        Ok(()) => Ok(dir),
        Err(first) => {
            let fallback =
                std::env::temp_dir().join(concat!("continuo-factory-", env!("CARGO_PKG_VERSION")));
            install(&fallback).map(|()| fallback).map_err(|second| {
                format!(
                    "cannot write the bundled model and styles to {} ({first}) or {} ({second})",
                    dir.display(),
                    std::env::temp_dir().display()
                )
            })
        }
    }
}

/// Writes every factory file into `dir` that is not there already with the right bytes.
pub fn install(dir: &Path) -> io::Result<()> {
    for file in FILES {
        let path = dir.join(file.path);
        if !same_bytes(&path, file.bytes) {
            write_atomically(&path, file.bytes)?;
        }
    }
    Ok(())
}

/// Whether the file at `path` holds exactly `bytes` (false if it cannot be read).
fn same_bytes(path: &Path, bytes: &[u8]) -> bool {
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    if file.metadata().map(|m| m.len()).ok() != Some(bytes.len() as u64) {
        return false;
    }
    let mut buffer = vec![0u8; 1 << 16];
    let mut rest = bytes;
    while !rest.is_empty() {
        let want = buffer.len().min(rest.len());
        if file.read_exact(&mut buffer[..want]).is_err() || buffer[..want] != rest[..want] {
            return false;
        }
        rest = &rest[want..];
    }
    true
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let temp = parent.join(format!(
        ".{}.{}-{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = File::create(&temp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&temp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::{temp_path, SOURCE_ROOT};

    /// The compiled-in list holds every style file under `lora-weights/` (so a new shipped
    /// style cannot be forgotten) and the bundled model.
    #[test]
    fn every_shipped_style_is_compiled_in() {
        fn style_files(dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    style_files(&path, out);
                } else if path.extension().is_some_and(|e| e == "safetensors") {
                    let relative = path.strip_prefix(SOURCE_ROOT).unwrap();
                    out.push(relative.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        let root = Path::new(SOURCE_ROOT);
        let mut on_disk = Vec::new();
        style_files(&root.join(STYLES), &mut on_disk);
        on_disk.sort();
        let mut compiled: Vec<String> = FILES
            .iter()
            .filter(|f| f.path.starts_with(STYLES))
            .map(|f| f.path.to_string())
            .collect();
        compiled.sort();
        assert_eq!(compiled, on_disk);
        for path in [MODEL_CONFIG, MODEL_WEIGHTS] {
            assert!(
                FILES.iter().any(|f| f.path == path),
                "{path} is not compiled in"
            );
        }
    }

    #[test]
    fn install_writes_the_source_files_and_repairs_damaged_ones() {
        let dir = temp_path("install");
        install(&dir).unwrap();
        let root = Path::new(SOURCE_ROOT);
        for file in FILES {
            assert_eq!(
                std::fs::read(dir.join(file.path)).unwrap(),
                std::fs::read(root.join(file.path)).unwrap(),
                "{}",
                file.path
            );
        }
        // A damaged file of the same length and a truncated one are both replaced.
        let weights = dir.join(MODEL_WEIGHTS);
        let mut damaged = std::fs::read(&weights).unwrap();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0xff;
        std::fs::write(&weights, &damaged).unwrap();
        let style = dir.join(FILES[2].path);
        std::fs::write(&style, b"short").unwrap();
        assert!(!same_bytes(&weights, FILES[1].bytes));
        install(&dir).unwrap();
        assert!(same_bytes(&weights, FILES[1].bytes));
        assert!(same_bytes(&style, FILES[2].bytes));
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(weights.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn install_reports_a_folder_it_cannot_write() {
        let dir = temp_path("blocked");
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        // A file where the folder should be.
        std::fs::write(&dir, b"not a folder").unwrap();
        assert!(install(&dir).is_err());
        std::fs::remove_file(&dir).unwrap();
    }
}
