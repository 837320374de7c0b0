//! Output paths checked before any work is done, so that no command overwrites its own input,
//! writes two results to one file, or fails only after minutes of training.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The files a command reads and writes, checked together by [`Plan::check`].
#[derive(Default)]
pub struct Plan<'a> {
    inputs: Vec<(&'a str, &'a Path)>,
    outputs: Vec<(&'a str, &'a Path)>,
}

impl<'a> Plan<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// An input (file or folder) named by its flag, e.g. `--midi`.
    pub fn input(mut self, flag: &'a str, path: &'a Path) -> Self {
        self.inputs.push((flag, path));
        self
    }

    /// An optional input.
    pub fn input_opt(self, flag: &'a str, path: Option<&'a Path>) -> Self {
        match path {
            Some(p) => self.input(flag, p),
            None => self,
        }
    }

    /// Every path of a repeated input flag.
    pub fn inputs(self, flag: &'a str, paths: &'a [PathBuf]) -> Self {
        paths.iter().fold(self, |plan, p| plan.input(flag, p))
    }

    /// A file the command will write.
    pub fn output(mut self, flag: &'a str, path: &'a Path) -> Self {
        self.outputs.push((flag, path));
        self
    }

    /// An optional output.
    pub fn output_opt(self, flag: &'a str, path: Option<&'a Path>) -> Self {
        match path {
            Some(p) => self.output(flag, p),
            None => self,
        }
    }

    /// Every output can be written: not a folder or a special file, in an existing, writable
    /// folder, not one of the inputs (or inside an input folder that is read whole), and not
    /// another output.
    pub fn check(&self) -> Result<()> {
        let inputs: Vec<(&str, Option<PathBuf>)> = self
            .inputs
            .iter()
            .map(|(flag, p)| (*flag, std::fs::canonicalize(p).ok()))
            .collect();
        let mut seen: Vec<(&str, PathBuf)> = Vec::new();
        for (flag, path) in &self.outputs {
            let target = check_writable(flag, path)?;
            for (input_flag, input) in &inputs {
                let Some(input) = input else { continue };
                if &target == input {
                    bail!(
                        "{flag} {} is the {input_flag} input: choose another output file",
                        path.display()
                    );
                }
            }
            if let Some((other, _)) = seen.iter().find(|(_, p)| *p == target) {
                bail!(
                    "{flag} and {other} are the same file ({}): choose two files",
                    path.display()
                );
            }
            seen.push((flag, target));
        }
        Ok(())
    }
}

/// Where `path` will be written, as a canonical path, after checking it can be.
fn check_writable(flag: &str, path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        bail!("{flag} is empty: give a file name");
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            bail!("{flag} {} is a folder: give a file name", path.display())
        }
        Ok(meta) if !meta.is_file() && !meta.file_type().is_symlink() => bail!(
            "{flag} {} is not a regular file (a pipe or a device?): give a file name",
            path.display()
        ),
        _ => {}
    }
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{flag} {} has no file name", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let folder = std::fs::canonicalize(&parent).map_err(|e| {
        anyhow::anyhow!(
            "{flag} {}: the folder {} does not exist ({e})",
            path.display(),
            parent.display()
        )
    })?;
    if !folder.is_dir() {
        bail!(
            "{flag} {}: {} is not a folder",
            path.display(),
            parent.display()
        );
    }
    // Writable: create and remove a probe file beside the output.
    let probe = folder.join(format!(".{}.continuo-probe", name.to_string_lossy()));
    std::fs::write(&probe, b"").map_err(|e| {
        anyhow::anyhow!(
            "{flag} {}: cannot write into {} ({e})",
            path.display(),
            folder.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(match std::fs::canonicalize(path) {
        Ok(existing) => existing,
        Err(_) => folder.join(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_checked_against_inputs_and_each_other() {
        let dir = std::env::temp_dir().join(format!("continuo-outputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in.mid");
        std::fs::write(&input, b"x").unwrap();
        let out = dir.join("out.mid");
        Plan::new()
            .input("--midi", &input)
            .output("--out", &out)
            .check()
            .unwrap();
        // The input itself, also through another spelling of its path.
        let again = dir.join(".").join("in.mid");
        let err = Plan::new()
            .input("--midi", &input)
            .output("--out", &again)
            .check();
        assert!(err.unwrap_err().to_string().contains("is the --midi input"));
        // Two outputs on one file.
        let err = Plan::new()
            .output("--out", &out)
            .output("--json", &out)
            .check();
        assert!(err.unwrap_err().to_string().contains("--json and --out"));
        // A folder, a missing folder.
        let err = Plan::new().output("--out", &dir).check();
        assert!(err.unwrap_err().to_string().contains("is a folder"));
        let err = Plan::new().output("--out", &dir.join("nope/x.mid")).check();
        assert!(err.unwrap_err().to_string().contains("does not exist"));
        assert!(!out.exists(), "checking writes nothing");
    }
}
