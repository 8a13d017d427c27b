//! Data sources: task records from jsonl files or built-in synthetic generators, and
//! prompt templates rendered from a record's fields.

pub mod arithmetic;
pub mod countdown;
pub mod functions;
pub mod order;
pub mod padding;
pub mod prompts;

use crate::config::TaskConfig;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;

/// The task's records, each a JSON object. `task_dir` resolves relative paths.
pub fn load_records(task: &TaskConfig, task_dir: &Path) -> Result<Vec<Value>> {
    let source = &task.source;
    let mut records = match (&source.path, &source.generator) {
        (Some(path), _) => read_records(&task_dir.join(path))?,
        (None, Some(generator)) => generate(generator, task)?,
        (None, None) => bail!(
            "task `{}`: the source has neither a path nor a generator",
            task.name
        ),
    };
    if let Some(limit) = source.num_examples {
        records.truncate(limit);
    }
    Ok(records)
}

/// Records from a `.parquet` file (the format of Hugging Face datasets) or jsonl.
pub fn read_records(path: &Path) -> Result<Vec<Value>> {
    if path.extension().is_some_and(|e| e == "parquet") {
        read_parquet(path)
    } else {
        read_jsonl(path)
    }
}

/// Each parquet row as a JSON object (lists become arrays, structs objects).
pub fn read_parquet(path: &Path) -> Result<Vec<Value>> {
    use parquet::file::reader::SerializedFileReader;
    let reader = SerializedFileReader::try_from(path)
        .with_context(|| format!("{}: cannot open as parquet", path.display()))?;
    reader
        .into_iter()
        .enumerate()
        .map(|(index, row)| {
            let row =
                row.with_context(|| format!("{}: row {index} is unreadable", path.display()))?;
            Ok(row.to_json_value())
        })
        .collect()
}

/// One JSON object per line; blank lines are skipped. Errors name the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), index + 1))?;
        if !record.is_object() {
            bail!(
                "{}:{}: expected a JSON object, got {}",
                path.display(),
                index + 1,
                kind_of(&record)
            );
        }
        records.push(record);
    }
    Ok(records)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn to_values<T: serde::Serialize>(items: Vec<T>) -> Result<Vec<Value>> {
    items
        .into_iter()
        .map(|item| serde_json::to_value(item).context("serialising an item"))
        .collect()
}

/// A generator's typed parameters from a task's `source.params` (unknown keys are
/// rejected by the type's `deny_unknown_fields`).
pub fn params_from_yaml<T: serde::de::DeserializeOwned>(
    params: &std::collections::BTreeMap<String, serde_yaml::Value>,
) -> Result<T> {
    let mapping: serde_yaml::Mapping = params
        .iter()
        .map(|(k, v)| (serde_yaml::Value::String(k.clone()), v.clone()))
        .collect();
    Ok(serde_yaml::from_value(serde_yaml::Value::Mapping(mapping))?)
}

fn generate(generator: &str, task: &TaskConfig) -> Result<Vec<Value>> {
    let source = &task.source;
    let count = source.num_examples.unwrap_or(1000);
    match generator {
        "arithmetic" => {
            let params = arithmetic::ArithmeticParams::from_yaml(&source.params)
                .with_context(|| format!("task `{}`: source.params", task.name))?;
            to_values(arithmetic::generate(params, count, source.seed))
        }
        "countdown" => {
            let params = countdown::CountdownParams::from_yaml(&source.params)
                .with_context(|| format!("task `{}`: source.params", task.name))?;
            to_values(countdown::generate(params, count, source.seed))
        }
        "python_functions" => {
            let params = functions::FunctionParams::from_yaml(&source.params)
                .with_context(|| format!("task `{}`: source.params", task.name))?;
            to_values(functions::generate(params, count, source.seed))
        }
        other => bail!(
            "task `{}`: unknown generator `{other}` (known: arithmetic, countdown, python_functions)",
            task.name
        ),
    }
}

/// Replaces each `{field}` in `template` with the record's field (`{{` and `}}` are
/// literal braces). A missing field is an error that names it.
pub fn render_prompt(template: &str, record: &Value) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().is_some_and(|&(_, n)| n == '{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().is_some_and(|&(_, n)| n == '}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let rest = &template[i + 1..];
                let Some(end) = rest.find('}') else {
                    bail!("prompt template: unclosed `{{` at byte {i}")
                };
                let field = &rest[..end];
                let value = record.get(field).with_context(|| {
                    format!("prompt template: the record has no field `{field}`")
                })?;
                match value {
                    Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                }
                for _ in 0..end + 1 {
                    chars.next();
                }
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_templates_fill_fields_and_keep_escaped_braces() {
        let record = serde_json::json!({"question": "What is 2 + 2?", "n": 3});
        assert_eq!(
            render_prompt("Q: {question} ({n}) {{x}}", &record).unwrap(),
            "Q: What is 2 + 2? (3) {x}"
        );
        let error = render_prompt("{missing}", &record).unwrap_err();
        assert!(error.to_string().contains("no field `missing`"));
        assert!(render_prompt("{oops", &record).is_err());
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"a\": 1}\n\n[1, 2]\n").unwrap();
        let error = read_jsonl(&path).unwrap_err().to_string();
        assert!(
            error.ends_with("d.jsonl:3: expected a JSON object, got an array"),
            "{error}"
        );
        std::fs::write(&path, "{\"a\": 1}\n{oops\n").unwrap();
        let error = format!("{:#}", read_jsonl(&path).unwrap_err());
        assert!(error.contains("d.jsonl:2: not a JSON object"), "{error}");
    }
}
