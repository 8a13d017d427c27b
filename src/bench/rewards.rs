use anyhow::Result;
use std::time::Instant;

/// `rlvr bench rewards`: graded jobs/s on a task's reference completions in the wasm
/// sandbox against a native `python3` subprocess per job (same programs, same
/// threads), plus the CPython module's compile and cached-load times.
pub fn rewards(task_path: &std::path::Path, limit: Option<usize>) -> Result<()> {
    use crate::config::TaskConfig;
    use crate::reward::{RewardSet, Sample};
    use rayon::prelude::*;

    let (compile, load) = crate::reward::sandbox::measure_module_load(&crate::cache::wasm_module(
        crate::reward::sandbox::Runtime::CPython.module_file(),
    ))?;
    println!(
        "CPython WASI module: compile {compile:.2} s, load the compiled artifact {:.1} ms",
        load * 1e3
    );

    let task = TaskConfig::load(task_path)?;
    let task_dir = task_path.parent().unwrap_or(std::path::Path::new("."));
    let mut records = crate::data::load_records(&task, task_dir)?;
    if let Some(limit) = limit {
        records.truncate(limit);
    }
    let completions: Vec<String> = crate::reward::check::reference_completions(&task, &records)?
        .into_iter()
        .map(|(_, completion)| completion)
        .collect();
    let rewards = RewardSet::from_task(&task, task_dir)?;
    let samples: Vec<Sample> = records
        .iter()
        .zip(&completions)
        .map(|(record, completion)| Sample::new(record, "", completion, 0))
        .collect();
    rewards.score_batch(&samples[..1.min(samples.len())]); // load the sandbox outside the timing
    let started = Instant::now();
    let scored = rewards.score_batch(&samples);
    let sandbox_seconds = started.elapsed().as_secs_f64();
    let passed = scored.iter().filter(|s| s.total > 0.0).count();

    // The same programs run natively: completion + tests in one python3 process each.
    let programs: Vec<String> = records
        .iter()
        .zip(&completions)
        .map(|(record, completion)| {
            let tests: Vec<&str> = match record.get("tests") {
                Some(serde_json::Value::Array(items)) => {
                    items.iter().filter_map(|t| t.as_str()).collect()
                }
                Some(serde_json::Value::String(t)) => vec![t.as_str()],
                _ => Vec::new(),
            };
            format!("{completion}\n{}", tests.join("\n"))
        })
        .collect();
    let started = Instant::now();
    let native_passed = programs
        .par_iter()
        .filter(|program| {
            std::process::Command::new("python3")
                .arg("-c")
                .arg(program.as_str())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .count();
    let native_seconds = started.elapsed().as_secs_f64();
    let jobs = samples.len() as f64;
    println!(
        "{} jobs, {} rayon threads:",
        samples.len(),
        rayon::current_num_threads()
    );
    println!(
        "  wasm sandbox (CPython 3.12)  {:>7.1} jobs/s  ({sandbox_seconds:.2} s, {passed} passed)",
        jobs / sandbox_seconds
    );
    println!(
        "  native python3 subprocess    {:>7.1} jobs/s  ({native_seconds:.2} s, {native_passed} passed)   sandbox / native ×{:.2}",
        jobs / native_seconds,
        native_seconds / sandbox_seconds
    );
    Ok(())
}
