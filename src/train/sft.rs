//! Supervised fine-tuning on conversations: the next-token objective of pretraining,
//! counted only on assistant tokens (and the token that ends each assistant turn).

use super::pretrain::{Examples, NextToken};
use crate::config::RunConfig;
use crate::data::prompts::filter_records;
use crate::tokenizer::{Message, Tokenizer};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// Renders each record's conversation with the chat template, cut to `max_length`.
pub fn conversations(config: &RunConfig, tokenizer: &Tokenizer) -> Result<Examples> {
    let data = config
        .data
        .as_ref()
        .context("SFT needs a `data` section (data.path: jsonl with `messages`)")?;
    let records = crate::data::read_records(&data.path)?;
    let rendered = filter_records(&records, &data.path, config.train.on_bad_record, |record| {
        let field = record
            .get(&data.messages_field)
            .with_context(|| format!("no `{}` field", data.messages_field))?;
        let messages: Vec<Message> = serde_json::from_value(field.clone()).with_context(|| {
            format!(
                "`{}` must be a list of {{role, content}} objects",
                data.messages_field
            )
        })?;
        let mut chat = tokenizer.render_chat(&messages, false)?;
        chat.ids.truncate(data.max_length);
        chat.assistant_mask.truncate(data.max_length);
        if chat.assistant_mask[1.min(chat.ids.len())..]
            .iter()
            .all(|&m| m == 0)
        {
            bail!("no assistant tokens to learn from (within data.max_length)");
        }
        Ok(chat)
    })?;
    Ok(Examples {
        sequences: rendered.iter().map(|c| c.ids.clone()).collect(),
        loss_masks: rendered.into_iter().map(|c| c.assistant_mask).collect(),
    })
}

pub fn run(config: &RunConfig, options: super::StartOptions) -> Result<PathBuf> {
    let (model, tokenizer_path) = super::initial_model(config)?;
    let tokenizer = super::run_tokenizer(config, &tokenizer_path)?;
    let examples = conversations(config, &tokenizer)?;
    let mut objective = NextToken::new(examples, config)?;
    super::train(
        config,
        "sft",
        model,
        &tokenizer_path,
        &mut objective,
        options,
    )
}
