//! A run directory, `runs/NAME/`: the resolved config, the git revision, metrics.jsonl,
//! samples.jsonl, checkpoints and the final model.
//!
//! Checkpoints (`checkpoint-000050/`) hold the model in the Hugging Face layout plus
//! `optimizer.safetensors` and `trainer_state.json`. Each is written to a hidden
//! staging folder and renamed into place, so any `checkpoint-*` folder is complete,
//! whenever the process was killed. Resuming truncates the logs to the checkpoint's
//! step, so a resumed run's logs read as if it had never stopped.

use crate::config::RunConfig;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One step's metrics, by name. Names under `time/` measure wall time and are the
/// only ones that differ between two runs with the same config and seed.
pub type Metrics = BTreeMap<String, f64>;

pub struct RunDir {
    pub dir: PathBuf,
}

const METRICS: &str = "metrics.jsonl";
const SAMPLES: &str = "samples.jsonl";
const STATE: &str = "trainer_state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";

impl RunDir {
    /// Opens the run's folder. A folder that already holds a run is an error unless
    /// `resume` (continue it) or `overwrite` (delete it first) is given.
    pub fn open(config: &RunConfig, stage: &str, resume: bool, overwrite: bool) -> Result<Self> {
        let dir = config.run_dir();
        let used = dir.join(METRICS).exists() || latest_checkpoint(&dir)?.is_some();
        if used && overwrite {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        } else if used && !resume {
            bail!(
                "{} already holds a run: pass --resume to continue it or --overwrite to start again",
                dir.display()
            );
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let run = Self { dir };
        std::fs::write(run.dir.join("config.yaml"), serde_yaml::to_string(config)?)?;
        let info = json!({
            "stage": stage,
            "rlvr_version": env!("CARGO_PKG_VERSION"),
            "git_revision": crate::build_info::GIT_REVISION,
            "source_hash": crate::build_info::SOURCE_HASH,
            "command": std::env::args().collect::<Vec<_>>(),
        });
        std::fs::write(
            run.dir.join("run.json"),
            serde_json::to_string_pretty(&info)? + "\n",
        )?;
        Ok(run)
    }

    pub fn checkpoint_dir(&self, step: usize) -> PathBuf {
        self.dir.join(format!("checkpoint-{step:06}"))
    }

    /// The final model folder.
    pub fn model_dir(&self) -> PathBuf {
        self.dir.join("model")
    }

    pub fn latest_checkpoint(&self) -> Result<Option<(usize, PathBuf)>> {
        latest_checkpoint(&self.dir)
    }

    pub fn log_metrics(&self, step: usize, metrics: &Metrics) -> Result<()> {
        let mut line = json!({ "step": step });
        for (name, value) in metrics {
            line[name] = json!(value);
        }
        append_lines(&self.dir.join(METRICS), &[line])
    }

    pub fn log_samples(&self, rows: &[Value]) -> Result<()> {
        append_lines(&self.dir.join(SAMPLES), rows)
    }

    /// Drops log lines after `step` (and any torn last line) before a resume.
    pub fn truncate_logs(&self, step: usize) -> Result<()> {
        for name in [METRICS, SAMPLES] {
            let path = self.dir.join(name);
            if !path.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<Value>(line)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s as usize <= step)
                })
                .collect();
            let body = kept.iter().map(|l| format!("{l}\n")).collect::<String>();
            std::fs::write(&path, body)?;
        }
        Ok(())
    }

    /// The metrics logged so far, in order.
    pub fn read_metrics(dir: &Path) -> Result<Vec<Value>> {
        let path = dir.join(METRICS);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        text.lines()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))
            })
            .collect()
    }
}

/// What a checkpoint records besides weights and optimizer moments. Randomness is
/// derived from (seed, step), so the step is all the RNG state a resume needs.
pub fn write_trainer_state(dir: &Path, step: usize, seed: u64, objective: Value) -> Result<()> {
    let state = json!({ "step": step, "seed": seed, "objective": objective });
    std::fs::write(
        dir.join(STATE),
        serde_json::to_string_pretty(&state)? + "\n",
    )
    .with_context(|| format!("cannot write {}", dir.join(STATE).display()))
}

pub fn read_trainer_state(dir: &Path) -> Result<Value> {
    let path = dir.join(STATE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

fn latest_checkpoint(dir: &Path) -> Result<Option<(usize, PathBuf)>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut best = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if path.join(STATE).exists() && best.as_ref().is_none_or(|(s, _)| step > *s) {
            best = Some((step, path));
        }
    }
    Ok(best)
}

fn append_lines(path: &Path, rows: &[Value]) -> Result<()> {
    let mut body = String::new();
    for row in rows {
        body.push_str(&serde_json::to_string(row)?);
        body.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(body.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
