//! A task's records as prompts: the rendered text and its chat-templated ids, with bad
//! records named or skipped.

use crate::config::TaskConfig;
use crate::config::run::OnBadRecord;
use crate::tokenizer::{Message, Tokenizer};
use anyhow::{Result, bail};
use serde_json::Value;
use std::path::Path;

/// A task record ready to prompt with.
pub struct Prompt {
    pub record: Value,
    /// The rendered prompt text (what reward functions see as the prompt).
    pub text: String,
    /// Chat-templated ids, ending with the assistant header.
    pub ids: Vec<i64>,
    /// Those ids as text, special tokens kept: what the model continues from (its end
    /// says whether the template opened a reasoning block).
    pub chat_text: String,
}

/// The task's records as prompts; records lacking the answer field or whose prompt
/// cannot be rendered are an error naming the record, or skipped (`on_bad_record`).
pub fn load_prompts(
    task: &TaskConfig,
    task_path: &Path,
    tokenizer: &Tokenizer,
    on_bad: OnBadRecord,
) -> Result<Vec<Prompt>> {
    let task_dir = task_path.parent().unwrap_or(Path::new("."));
    let records = crate::data::load_records(task, task_dir)?;
    filter_records(&records, task_path, on_bad, |record| {
        if let Some(field) = &task.answer_field
            && record.get(field).is_none_or(Value::is_null)
        {
            bail!("no answer field `{field}`");
        }
        let text = crate::data::render_prompt(&task.prompt, record)?;
        let mut messages = Vec::new();
        if let Some(system) = &task.system_prompt {
            messages.push(Message {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: text.clone(),
        });
        let ids = tokenizer.render_chat(&messages, true)?.ids;
        Ok(Prompt {
            record: record.clone(),
            text,
            chat_text: tokenizer.decode(&ids, false)?,
            ids,
        })
    })
}

/// Applies `parse` to every record; a failure names the record (1-based line), or is
/// skipped and counted when `on_bad` says so.
pub fn filter_records<T>(
    records: &[Value],
    path: &Path,
    on_bad: OnBadRecord,
    mut parse: impl FnMut(&Value) -> Result<T>,
) -> Result<Vec<T>> {
    let mut kept = Vec::with_capacity(records.len());
    let mut skipped = 0;
    for (i, record) in records.iter().enumerate() {
        match parse(record) {
            Ok(item) => kept.push(item),
            Err(e) if on_bad == OnBadRecord::Skip => {
                if skipped == 0 {
                    eprintln!("{} record {}: {e:#} (skipped)", path.display(), i + 1);
                }
                skipped += 1;
            }
            Err(e) => bail!(
                "{} record {}: {e:#} (set train.on_bad_record: skip to leave such records out)",
                path.display(),
                i + 1
            ),
        }
    }
    if skipped > 0 {
        eprintln!(
            "{}: skipped {skipped} of {} records",
            path.display(),
            records.len()
        );
    }
    Ok(kept)
}
