//! Tasks end to end: a task file's data, prompts and rewards, through the same path as
//! `rlvr reward-check`. HumanEval's canonical solutions must all pass under CPython.

use rlvr::reward::check::{CheckOptions, run};
use std::path::{Path, PathBuf};

fn task(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tasks")
        .join(name)
}

fn options(completions: Option<&Path>) -> CheckOptions<'_> {
    CheckOptions {
        completions,
        limit: None,
        show_slowest: 3,
        show_failures: 5,
    }
}

#[test]
fn humaneval_canonical_solutions_all_pass() {
    let report = run(&task("humaneval.yaml"), &options(None)).unwrap();
    assert_eq!(report.records, 164);
    assert_eq!(
        report.verdicts.get("pass"),
        Some(&164),
        "{:?}",
        report.verdicts
    );
    assert_eq!(report.infra_errors, 0);
}

#[test]
fn arithmetic_references_score_full_marks() {
    let report = run(&task("arithmetic.yaml"), &options(None)).unwrap();
    assert_eq!(report.records, 5000);
    for (name, mean) in &report.means {
        assert_eq!(*mean, 1.0, "{name}");
    }
}

#[test]
fn given_completions_are_scored_against_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let completions = dir.path().join("completions.jsonl");
    let lines = [
        // Correct, wrong, gaming attempt, no code at all, on HumanEval/2 (truncate_number).
        r#"{"index": 2, "completion": "```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n```"}"#,
        r#"{"index": 2, "completion": "```python\ndef truncate_number(number: float) -> float:\n    return number\n```"}"#,
        r#"{"index": 2, "completion": "```python\nimport sys\nsys.exit(0)\n```"}"#,
        r#"{"index": 2, "completion": "I cannot solve this."}"#,
    ];
    std::fs::write(&completions, lines.join("\n")).unwrap();
    let report = run(&task("humaneval.yaml"), &options(Some(&completions))).unwrap();
    assert_eq!(report.records, 4);
    assert_eq!(
        report.means[0].1, 0.25,
        "only the correct completion scores"
    );
    assert_eq!(report.verdicts.get("pass"), Some(&1));
    assert_eq!(
        report.verdicts.get("fail"),
        Some(&2),
        "{:?}",
        report.verdicts
    );
    assert_eq!(
        report.verdicts.get("error"),
        Some(&1),
        "no code is an error verdict: {:?}",
        report.verdicts
    );

    std::fs::write(&completions, r#"{"index": 999, "completion": "x"}"#).unwrap();
    let error = run(&task("humaneval.yaml"), &options(Some(&completions)))
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("index 999 is past the 164 records"),
        "{error}"
    );
}

#[test]
fn countdown_script_checks_the_equation() {
    let dir = tempfile::tempdir().unwrap();
    let completions = dir.path().join("c.jsonl");
    // Record 0 of the shipped task; read its numbers and target to write completions.
    let task_path = task("countdown.yaml");
    let task_config = rlvr::config::TaskConfig::load(&task_path).unwrap();
    let records = rlvr::data::load_records(&task_config, task_path.parent().unwrap()).unwrap();
    let numbers: Vec<i64> = serde_json::from_value(records[0]["numbers"].clone()).unwrap();
    let reference = records[0]["solution"].as_str().unwrap();
    let rows = [
        reference.to_string(),
        format!(
            "<answer>{}</answer>",
            numbers
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(" + ")
                + " + 1"
        ),
        "<answer>__import__('os').system('ls')</answer>".to_string(),
        "no answer here".to_string(),
    ];
    let lines: Vec<String> = rows
        .iter()
        .map(|c| serde_json::json!({"index": 0, "completion": c}).to_string())
        .collect();
    std::fs::write(&completions, lines.join("\n")).unwrap();
    let report = run(&task_path, &options(Some(&completions))).unwrap();
    assert_eq!(
        report.means[0],
        ("equation".to_string(), 0.25),
        "only the reference is right"
    );
    assert_eq!(report.infra_errors, 0);
}

#[test]
fn broken_reward_scripts_are_infrastructure_errors() {
    use rlvr::reward::script::ScriptReward;
    use rlvr::reward::{RewardFunction, Sample};
    let dir = tempfile::tempdir().unwrap();
    let record = serde_json::json!({"question": "q"});
    let sample = Sample::new(&record, "q", "anything", 1);
    let limits = rlvr::reward::sandbox::Limits::default();
    for (script, expected) in [
        ("raise RuntimeError('boom')", "RuntimeError: boom"),
        ("print('not json at all')", "printed no JSON score"),
        ("print('{\"score\": \"high\"}')", "printed no JSON score"),
    ] {
        let path = dir.path().join("score.py");
        std::fs::write(&path, script).unwrap();
        let reward =
            ScriptReward::load(&path, rlvr::reward::sandbox::Runtime::CPython, limits).unwrap();
        let score = reward.score(&sample);
        assert_eq!(score.value, 0.0, "{script}");
        let error = score
            .infra_error
            .unwrap_or_else(|| panic!("{script}: not counted as an infrastructure error"));
        assert!(error.contains(expected), "{script}: {error}");
    }
    // Through a task, the failures are counted, and a missing script is an error that
    // names the file when the task loads.
    std::fs::write(dir.path().join("data.jsonl"), "{\"question\": \"q\"}\n").unwrap();
    std::fs::write(
        dir.path().join("completions.jsonl"),
        "{\"completion\": \"anything\"}\n",
    )
    .unwrap();
    let task_text = "name: t\nsource:\n  path: data.jsonl\nprompt: '{question}'\nrewards:\n  - kind: script\n    script: score.py\n";
    let task_path = dir.path().join("task.yaml");
    std::fs::write(&task_path, task_text).unwrap();
    let completions = dir.path().join("completions.jsonl");
    assert_eq!(
        run(&task_path, &options(Some(&completions)))
            .unwrap()
            .infra_errors,
        1
    );
    std::fs::remove_file(dir.path().join("score.py")).unwrap();
    let error = run(&task_path, &options(Some(&completions))).err().unwrap();
    assert!(format!("{error:#}").contains("score.py"), "{error:#}");
}

#[test]
fn python_functions_references_pass_in_micropython() {
    let options = CheckOptions {
        limit: Some(200),
        ..options(None)
    };
    let report = run(&task("python_functions.yaml"), &options).unwrap();
    assert_eq!(
        report.verdicts.get("pass"),
        Some(&200),
        "{:?}",
        report.verdicts
    );
}

/// GSM8K and MATH read the user's local copy; here a few rows written for the test,
/// in the shape of the Hugging Face data sets.
#[test]
fn gsm8k_and_math_tasks_read_local_rows() {
    let dir = tempfile::tempdir().unwrap();
    let gsm8k_rows = [
        serde_json::json!({"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}),
        serde_json::json!({"question": "A book costs $1,200 and a pen $34. Total?", "answer": "1200 + 34 = 1234\n#### 1,234"}),
    ];
    let math_rows = [
        serde_json::json!({"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "solution": "Sum is $\\boxed{\\frac{3}{4}}$.", "level": "Level 1", "type": "Algebra"}),
        serde_json::json!({"problem": "Solve $x^2=4$, $x>0$.", "solution": "So $x=\\boxed{2}$.", "level": "Level 2", "type": "Algebra"}),
    ];
    for (name, rows, completions) in [
        (
            "gsm8k",
            &gsm8k_rows,
            ["The total is 7.\n#### 7", "So 1234 dollars.\n#### 1235"],
        ),
        (
            "math",
            &math_rows,
            ["I get \\boxed{0.75}", "x = \\boxed{-2}"],
        ),
    ] {
        let data = dir.path().join(format!("{name}.jsonl"));
        std::fs::write(
            &data,
            rows.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .unwrap();
        let shipped = std::fs::read_to_string(task(&format!("{name}.yaml"))).unwrap();
        let task_path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &task_path,
            shipped.replace(
                &format!("path: data/{name}.jsonl"),
                &format!("path: {name}.jsonl"),
            ),
        )
        .unwrap();

        let references = run(&task_path, &options(None)).unwrap();
        assert_eq!(
            references.means[0].1, 1.0,
            "{name}: the reference solutions must score 1"
        );
        let given = dir.path().join(format!("{name}-completions.jsonl"));
        let lines: Vec<String> = completions
            .iter()
            .map(|c| serde_json::json!({"completion": c}).to_string())
            .collect();
        std::fs::write(&given, lines.join("\n")).unwrap();
        let scored = run(&task_path, &options(Some(&given))).unwrap();
        assert_eq!(scored.means[0].1, 0.5, "{name}: one right, one wrong");
    }
    // The same GSM8K rows as parquet, the file format of Hugging Face datasets.
    let parquet = dir.path().join("gsm8k.parquet");
    write_parquet(&parquet, &gsm8k_rows);
    assert_eq!(
        rlvr::data::read_records(&parquet).unwrap(),
        gsm8k_rows.to_vec()
    );
    let shipped = std::fs::read_to_string(task("gsm8k.yaml")).unwrap();
    let task_path = dir.path().join("gsm8k-parquet.yaml");
    std::fs::write(
        &task_path,
        shipped.replace("path: data/gsm8k.jsonl", "path: gsm8k.parquet"),
    )
    .unwrap();
    assert_eq!(run(&task_path, &options(None)).unwrap().means[0].1, 1.0);
    // A file that is not parquet is an error that names it.
    std::fs::write(dir.path().join("broken.parquet"), "not parquet").unwrap();
    let error = rlvr::data::read_records(&dir.path().join("broken.parquet")).unwrap_err();
    assert!(
        format!("{error:#}").contains("broken.parquet: cannot open as parquet"),
        "{error:#}"
    );
}

/// Writes rows of string fields `question` and `answer` as a parquet file.
fn write_parquet(path: &Path, rows: &[serde_json::Value]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let schema = parse_message_type(
        "message rows { REQUIRED BYTE_ARRAY question (UTF8); REQUIRED BYTE_ARRAY answer (UTF8); }",
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(
        file,
        schema.into(),
        WriterProperties::builder().build().into(),
    )
    .unwrap();
    let mut group = writer.next_row_group().unwrap();
    for field in ["question", "answer"] {
        let mut column = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = rows
            .iter()
            .map(|r| ByteArray::from(r[field].as_str().unwrap()))
            .collect();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

/// The rewards of a task written in `dir` from `yaml` (a jsonl source beside it).
fn reward_set(dir: &Path, yaml: &str) -> rlvr::reward::RewardSet {
    std::fs::write(dir.join("data.jsonl"), "{\"q\": \"6*7\", \"a\": \"42\"}\n").unwrap();
    std::fs::write(dir.join("task.yaml"), yaml).unwrap();
    let task = rlvr::config::TaskConfig::load(&dir.join("task.yaml")).unwrap();
    rlvr::reward::RewardSet::from_task(&task, dir).unwrap()
}

#[test]
fn rewards_read_the_answer_after_the_reasoning_unless_asked_for_the_whole_text() {
    use rlvr::reward::Sample;
    let dir = tempfile::tempdir().unwrap();
    let rewards = reward_set(
        dir.path(),
        r#"
name: t
source: {path: data.jsonl}
prompt: "{q}"
answer_field: a
rewards:
  - {kind: math}
  - {kind: regex, pattern: "(?s).*42.*"}
  - {kind: regex, name: whole, pattern: "(?s).*42.*", reads: completion}
  - {kind: format}
"#,
    );
    let record = serde_json::json!({"a": "42"});
    let score = |prompt: &str, completion: &str| -> Vec<f64> {
        let scored = rewards.score_batch(&[Sample::new(&record, prompt, completion, 5)]);
        scored[0].per_function.iter().map(|s| s.value).collect()
    };
    // The answer after the block counts; a right guess inside it does not.
    assert_eq!(
        score("Q", "<think>6*7=42</think>\nThe answer is 42."),
        [1.0, 1.0, 1.0, 1.0]
    );
    assert_eq!(
        score("Q", "<think>is it 42?</think>\nThe answer is 41."),
        [0.0, 0.0, 1.0, 1.0]
    );
    // Cut off inside the block: no answer, whatever it holds.
    let scored = rewards.score_batch(&[Sample::new(&record, "Q", "<think>42, so \\boxed{42}", 5)]);
    let values: Vec<f64> = scored[0].per_function.iter().map(|s| s.value).collect();
    assert_eq!(values, [0.0, 0.0, 1.0, 0.0]);
    assert!(
        scored[0].per_function[0].reason.contains("never closed"),
        "{scored:?}"
    );
    // The generation prompt opened the block (R1 distills): the completion is inside it.
    assert_eq!(
        score("Assistant: <think>\n", "the answer is 42"),
        [0.0, 0.0, 1.0, 0.0]
    );
    assert_eq!(
        score("Assistant: <think>\n", "so</think> 42"),
        [1.0, 1.0, 1.0, 0.0]
    );
    // Qwen3 with enable_thinking=false closes an empty block in the prompt.
    assert_eq!(score("<think>\n\n</think>\n\n", "42"), [1.0, 1.0, 1.0, 0.0]);
}

#[test]
fn reasoning_tags_are_configurable_and_checked() {
    use rlvr::reward::Sample;
    let dir = tempfile::tempdir().unwrap();
    let rewards = reward_set(
        dir.path(),
        r#"
name: t
source: {path: data.jsonl}
prompt: "{q}"
answer_field: a
reasoning: {open: "<reasoning>", close: "</reasoning>"}
rewards: [{kind: exact}, {kind: format}]
"#,
    );
    let record = serde_json::json!({"a": "42"});
    let scored = rewards.score_batch(&[
        Sample::new(&record, "Q", "<reasoning>try 41</reasoning>42", 3),
        Sample::new(&record, "Q", "<reasoning>42", 3),
    ]);
    let values =
        |i: usize| -> Vec<f64> { scored[i].per_function.iter().map(|s| s.value).collect() };
    // The default format follows the task's tags.
    assert_eq!(values(0), [1.0, 1.0]);
    assert_eq!(values(1), [0.0, 0.0]);
    assert!(
        scored[1].per_function[0]
            .reason
            .contains("<reasoning> never closed")
    );

    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: t\nsource: {path: data.jsonl}\nprompt: x\nreasoning: {open: \"|\", close: \"|\"}\nrewards: [{kind: format}]\n",
    )
    .unwrap();
    let error = rlvr::config::TaskConfig::load(&dir.path().join("bad.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("reasoning") && error.contains("must differ"),
        "{error}"
    );
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: t\nsource: {path: data.jsonl}\nprompt: x\nrewards: [{kind: overlong, max_length: 9, cache_length: 2, reads: answer}]\n",
    )
    .unwrap();
    let error = rlvr::config::TaskConfig::load(&dir.path().join("bad.yaml"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("`reads` does not apply"), "{error}");
}
