//! Opening input files safely: regular files only (a pipe or a device as `--midi` would block
//! or read without end), with a size cap where the format has a sensible one.

use std::io;
use std::path::Path;

/// The largest MIDI file read (a long piano performance is well under 1 MiB).
pub const MAX_MIDI_BYTES: u64 = 64 << 20;
/// The largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Checks that `path` is a regular file of at most `max_bytes` (if given) and returns its
/// length. Never opens the file, so a FIFO cannot block it.
pub fn check_input(path: &Path, max_bytes: Option<u64>, what: &str) -> io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is a folder, not a {what} file"),
        ));
    }
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is not a regular file (a pipe or a device?): give a {what} file"),
        ));
    }
    if let Some(max) = max_bytes {
        if meta.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "it is {:.1} MiB, over the {} MiB limit for a {what} file",
                    meta.len() as f64 / (1 << 20) as f64,
                    max >> 20
                ),
            ));
        }
    }
    Ok(meta.len())
}

/// Reads a whole input file after [`check_input`].
pub fn read_input(path: &Path, max_bytes: Option<u64>, what: &str) -> io::Result<Vec<u8>> {
    check_input(path, max_bytes, what)?;
    std::fs::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_devices_and_oversized_files_are_refused_without_reading() {
        let dir = std::env::temp_dir();
        assert!(check_input(&dir, None, "MIDI")
            .unwrap_err()
            .to_string()
            .contains("folder"));
        let err = check_input(Path::new("/dev/zero"), None, "MIDI").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let big = dir.join(format!("continuo-files-{}.bin", std::process::id()));
        std::fs::write(&big, vec![0u8; 2 << 20]).unwrap();
        let err = check_input(&big, Some(1 << 20), "config").unwrap_err();
        assert!(err.to_string().contains("over the 1 MiB limit"), "{err}");
        assert_eq!(check_input(&big, None, "weights").unwrap(), 2 << 20);
        let _ = std::fs::remove_file(&big);
    }
}
