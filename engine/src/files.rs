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

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash or a full disk never leaves a half-written file where a good one was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = partial_path(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The temporary name [`write_atomic`] uses beside `path`.
pub fn partial_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    std::path::PathBuf::from(name)
}

/// Gives a file the permissions a plain `std::fs::write` would (0666 less the umask): files
/// written through a private temporary file (safetensors' writer) come out 0600 otherwise.
pub fn set_default_permissions(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let probe = partial_path(&path.with_extension("permissions-probe"));
        std::fs::write(&probe, b"")?;
        let mode = std::fs::metadata(&probe).map(|m| m.permissions());
        let _ = std::fs::remove_file(&probe);
        std::fs::set_permissions(path, mode?)?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
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

    #[test]
    fn atomic_writes_replace_whole_files_with_default_permissions() {
        let path = std::env::temp_dir().join(format!("continuo-atomic-{}.mid", std::process::id()));
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!partial_path(&path).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let plain = path.with_extension("plain");
            std::fs::write(&plain, b"").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            set_default_permissions(&path).unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode(&path), mode(&plain));
            let _ = std::fs::remove_file(&plain);
        }
        let _ = std::fs::remove_file(&path);
    }
}
