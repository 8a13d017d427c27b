//! `rlvr check`: run configs and task files loaded, validated and printed resolved.

use super::{RunConfig, TaskConfig, load_yaml};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// Loaded config of either kind, for printing.
enum Checked {
    Run(Box<RunConfig>),
    Task(Box<TaskConfig>),
}

fn load_any(path: &Path) -> Result<Checked> {
    let probe: serde_yaml::Value = load_yaml(path)?;
    if probe.get("rewards").is_some() {
        Ok(Checked::Task(Box::new(TaskConfig::load(path)?)))
    } else {
        Ok(Checked::Run(Box::new(RunConfig::load(path)?)))
    }
}

/// `rlvr check`: loads each file as a task (when it has `rewards`) or a run config and
/// prints it resolved with its defaults; an error for each file that fails.
pub fn check_files(files: &[PathBuf], quiet: bool) -> Result<()> {
    let mut failures = 0;
    for path in files {
        match load_any(path) {
            Ok(checked) => {
                let (kind, resolved) = match checked {
                    Checked::Run(c) => ("run config", serde_yaml::to_string(&c)?),
                    Checked::Task(t) => ("task", serde_yaml::to_string(&t)?),
                };
                println!("ok: {} ({kind})", path.display());
                if !quiet {
                    for line in resolved.lines() {
                        println!("    {line}");
                    }
                }
            }
            Err(error) => {
                failures += 1;
                eprintln!("error: {error:#}");
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} file(s) failed the check", files.len());
    }
    Ok(())
}
