//! A run directory, `runs/NAME/`: the resolved config, run.json (the git revision, the
//! command, the config's fingerprint, each resume), metrics.jsonl,
//! samples.jsonl, checkpoints and the final model.
//!
//! Checkpoints (`checkpoint-000050/`) hold the model in the Hugging Face layout plus
//! `optimizer.safetensors` and `trainer_state.json`. Each is written to a hidden
//! staging folder and renamed into place, so any `checkpoint-*` folder is complete,
//! whenever the process was killed. Resuming truncates the logs to the checkpoint's
//! step, so a resumed run's logs read as if it had never stopped.
//!
//! A resume continues the experiment the folder holds: run.json keeps the fingerprint
//! (SHA-256) of the resolved config, and a resume under a config that differs from
//! config.yaml is refused, naming each key, unless it is asked for explicitly.

use crate::config::RunConfig;
use crate::config::diff::{self, Change};
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
const CONFIG: &str = "config.yaml";
const INFO: &str = "run.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";

/// How a run starts: fresh (refusing a used folder), resumed, or overwriting.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    pub resume: bool,
    pub overwrite: bool,
    /// With `resume`: continue even if the config differs from the one the run
    /// started with (run.json records what changed).
    pub allow_config_change: bool,
}

impl RunDir {
    /// Opens the run's folder. A folder that already holds a run is an error unless
    /// `resume` (continue it, under the config it started with) or `overwrite` (delete
    /// it first) is given. Nothing in the folder changes before these checks pass.
    pub fn open(config: &RunConfig, stage: &str, options: StartOptions) -> Result<Self> {
        let dir = config.run_dir();
        let fingerprint = diff::fingerprint(config)?;
        let info = match prepare(&dir, config, &fingerprint, options)? {
            Some(changes) => resumed_info(&dir, &fingerprint, &changes)?,
            None => start_info(stage, &fingerprint),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let run = Self { dir };
        std::fs::write(run.dir.join(CONFIG), serde_yaml::to_string(config)?)?;
        std::fs::write(
            run.dir.join(INFO),
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

/// Readies `dir` for a run: `Some(changes)` when it continues the run the folder holds
/// (once the config check passed), `None` when a run starts there (a used folder is
/// cleared with `overwrite`, refused without `resume`).
fn prepare(
    dir: &Path,
    config: &RunConfig,
    fingerprint: &str,
    options: StartOptions,
) -> Result<Option<Vec<Change>>> {
    let used = dir.join(METRICS).exists() || latest_checkpoint(dir)?.is_some();
    if !used {
        return Ok(None);
    }
    if options.overwrite {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        return Ok(None);
    }
    if !options.resume {
        bail!(
            "{} already holds a run: pass --resume to continue it or --overwrite to start again",
            dir.display()
        );
    }
    let changes = config_changes(dir, config, fingerprint)?;
    refuse_changes(dir, &changes, options.allow_config_change)?;
    Ok(Some(changes))
}

/// What differs between the config `dir`'s run started with and `config`. Equal
/// fingerprints mean no change; otherwise config.yaml names the keys (folders from
/// before run.json held a fingerprint have only that).
fn config_changes(dir: &Path, config: &RunConfig, fingerprint: &str) -> Result<Vec<Change>> {
    let stored_fingerprint =
        read_info(dir).and_then(|info| info.get("config_sha256")?.as_str().map(String::from));
    if stored_fingerprint.as_deref() == Some(fingerprint) {
        return Ok(Vec::new());
    }
    let path = dir.join(CONFIG);
    if !path.exists() {
        let old = match stored_fingerprint {
            Some(old) => format!("sha256 {old}"),
            None => "(not stored)".into(),
        };
        return Ok(vec![Change {
            key: "config.yaml (missing, so only fingerprints compare)".into(),
            old: Some(old.into()),
            new: Some(format!("sha256 {fingerprint}").into()),
        }]);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(diff::differences(
        &stored_config(&text, &path)?,
        &diff::resolved(config)?,
    ))
}

/// A stored config.yaml, resolved as today's schema reads it (so that a default added
/// since is no difference); as plain YAML if today's schema refuses it.
fn stored_config(text: &str, path: &Path) -> Result<Value> {
    match serde_yaml::from_str::<RunConfig>(text) {
        Ok(config) => diff::resolved(&config),
        Err(_) => serde_yaml::from_str(text)
            .with_context(|| format!("{}: not valid YAML", path.display())),
    }
}

/// A resume under a changed config continues another experiment in the same folder:
/// refused unless asked for, naming every key that differs.
fn refuse_changes(dir: &Path, changes: &[Change], allowed: bool) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let listed: String = changes.iter().map(|c| format!("\n  {c}")).collect();
    if allowed {
        eprintln!(
            "continuing {} under a changed config:{listed}",
            dir.display()
        );
        return Ok(());
    }
    bail!(
        "{}: the config differs from the one this run started with:{listed}\n\
         pass --allow-config-change to continue the run under the new config anyway, \
         or --overwrite to start again",
        dir.display()
    )
}

/// Which build of rlvr, run by which command: recorded at a start and at each resume.
fn provenance() -> Value {
    json!({
        "rlvr_version": crate::build_info::VERSION,
        "git_revision": crate::build_info::GIT_REVISION,
        "source_hash": crate::build_info::SOURCE_HASH,
        "command": std::env::args().collect::<Vec<_>>(),
    })
}

/// run.json of a new run: what made it, and the fingerprint of its config.
fn start_info(stage: &str, fingerprint: &str) -> Value {
    let mut info = provenance();
    info["stage"] = json!(stage);
    info["config_sha256"] = json!(fingerprint);
    info
}

/// run.json of a resumed run: the start's record, with this resume appended to
/// `resumes` (from which step, by which command, and any config changes).
fn resumed_info(dir: &Path, fingerprint: &str, changes: &[Change]) -> Result<Value> {
    let mut info = read_info(dir)
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let from_step = latest_checkpoint(dir)?.map_or(0, |(step, _)| step);
    let mut resume = provenance();
    resume["from_step"] = json!(from_step);
    if !changes.is_empty() {
        let shown: Vec<String> = changes.iter().map(Change::to_string).collect();
        resume["config_changes"] = json!(shown);
    }
    if !info["resumes"].is_array() {
        info["resumes"] = json!([]);
    }
    if let Some(resumes) = info["resumes"].as_array_mut() {
        resumes.push(resume);
    }
    info["config_sha256"] = json!(fingerprint);
    Ok(info)
}

/// run.json, if it is there and parses.
fn read_info(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(INFO)).ok()?;
    serde_json::from_str(&text).ok()
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
