//! Next-token training: pretraining on a text corpus, and the objective SFT reuses
//! (SFT differs only in which tokens count, see `sft.rs`).
//!
//! Documents are tokenized, joined with `<|endoftext|>` and cut into windows of
//! `data.max_length + 1` tokens. Each optimizer step takes `batch_size` sequences per
//! micro-batch for `gradient_accumulation_steps` micro-batches, and the loss is the mean
//! over every target token of the step, so micro-batches of unequal length weigh each
//! token the same.

use super::Objective;
use super::batch::{DataOrder, micro_batches};
use super::token_loss::next_token_loss;
use crate::config::RunConfig;
use crate::config::run::{DataSection, OnBadRecord};
use crate::data::prompts::filter_records;
use crate::model::Model;
use crate::run::{Metrics, RunDir};
use crate::tokenizer::{END_OF_TEXT, Tokenizer};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;

/// Sequences with the mask of tokens the loss counts.
pub struct Examples {
    pub sequences: Vec<Vec<i64>>,
    pub loss_masks: Vec<Vec<u8>>,
}

pub struct NextToken {
    examples: Examples,
    order: DataOrder,
    batch_size: usize,
    accumulation: usize,
    checkpointing: bool,
    max_tokens: usize,
}

impl NextToken {
    pub fn new(examples: Examples, config: &RunConfig) -> Result<Self> {
        if examples.sequences.is_empty() {
            bail!("no training examples");
        }
        Ok(Self {
            order: DataOrder::new(examples.sequences.len(), config.seed),
            examples,
            batch_size: config.train.batch_size,
            accumulation: config.train.gradient_accumulation_steps,
            checkpointing: config.train.gradient_checkpointing,
            max_tokens: config.train.max_tokens_per_micro_batch,
        })
    }
}

impl Objective for NextToken {
    fn accumulate(&mut self, model: &Model, step: usize, _run: &RunDir) -> Result<Metrics> {
        let per_step = self.batch_size * self.accumulation;
        let picks: Vec<usize> = (0..per_step)
            .map(|i| self.order.get(step * per_step + i))
            .collect();
        let step_tokens: f64 = picks
            .iter()
            .map(|&i| {
                self.examples.loss_masks[i][1..]
                    .iter()
                    .map(|&m| f64::from(m))
                    .sum::<f64>()
            })
            .sum();
        let (mut loss_sum, mut correct) = (0.0, 0.0);
        let sizes: Vec<(usize, usize)> = picks
            .iter()
            .map(|&i| (self.examples.sequences[i].len(), 0))
            .collect();
        for range in micro_batches(&sizes, self.batch_size, self.max_tokens) {
            let micro = &picks[range];
            let sequences: Vec<Vec<i64>> = micro
                .iter()
                .map(|&i| self.examples.sequences[i].clone())
                .collect();
            let masks: Vec<Vec<u8>> = micro
                .iter()
                .map(|&i| self.examples.loss_masks[i].clone())
                .collect();
            let token_loss =
                next_token_loss(&model.transformer, &sequences, &masks, self.checkpointing)?;
            let loss = &token_loss.sum / step_tokens.max(1.0);
            token_loss.backward(&model.transformer, &loss);
            loss_sum += token_loss.sum.double_value(&[]);
            correct += token_loss.correct;
        }
        let mean = loss_sum / step_tokens.max(1.0);
        Ok(Metrics::from([
            ("loss".into(), mean),
            ("perplexity".into(), mean.exp()),
            ("token_accuracy".into(), correct / step_tokens.max(1.0)),
            ("tokens".into(), step_tokens),
        ]))
    }
}

/// The documents of a corpus: lines of a `.txt` file, or the text field of each jsonl
/// or parquet record (a record without it is an error or skipped, as configured).
pub fn read_documents(data: &DataSection, on_bad: OnBadRecord) -> Result<Vec<String>> {
    if data.path.extension().is_some_and(|e| e == "txt") {
        let text = std::fs::read_to_string(&data.path)
            .with_context(|| format!("cannot read {}", data.path.display()))?;
        return Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect());
    }
    let records = crate::data::read_records(&data.path)?;
    filter_records(&records, &data.path, on_bad, |record| {
        match record.get(&data.text_field) {
            Some(Value::String(text)) => Ok(text.clone()),
            _ => bail!("no string field `{}`", data.text_field),
        }
    })
}

/// Windows of `max_length + 1` tokens over the joined documents (every token a target).
pub fn corpus_windows(
    documents: &[String],
    tokenizer: &Tokenizer,
    max_length: usize,
) -> Result<Examples> {
    let separator = tokenizer
        .token_id(END_OF_TEXT)
        .with_context(|| format!("the tokenizer has no {END_OF_TEXT} token"))?;
    let mut stream = Vec::new();
    for document in documents {
        stream.extend(tokenizer.encode(document)?);
        stream.push(separator);
    }
    let window = max_length + 1;
    if stream.len() < window {
        bail!(
            "the corpus has {} tokens, fewer than one sequence of data.max_length + 1 = {window}",
            stream.len()
        );
    }
    let sequences: Vec<Vec<i64>> = stream
        .windows(window)
        .step_by(max_length)
        .map(<[i64]>::to_vec)
        .collect();
    let loss_masks = sequences.iter().map(|s| vec![1u8; s.len()]).collect();
    Ok(Examples {
        sequences,
        loss_masks,
    })
}

/// Trains and saves a BPE tokenizer on the run's corpus (`data.tokenizer_vocab_size`).
pub fn train_tokenizer(config: &RunConfig, path: &Path) -> Result<()> {
    let data = config
        .data
        .as_ref()
        .context("the tokenizer is missing and there is no `data` section to train it on")?;
    let size = data.tokenizer_vocab_size.with_context(|| {
        format!(
            "{} does not exist; set data.tokenizer_vocab_size to train one",
            path.display()
        )
    })?;
    let documents = read_documents(data, config.train.on_bad_record)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Tokenizer::train_bpe(documents.into_iter(), size)?.save(path)
}

pub fn run(config: &RunConfig, options: super::StartOptions) -> Result<std::path::PathBuf> {
    let data = config
        .data
        .as_ref()
        .context("pretraining needs a `data` section (data.path: a corpus)")?;
    let (model, tokenizer_path) = super::initial_model(config)?;
    let tokenizer = Tokenizer::load(&tokenizer_path)?;
    let documents = read_documents(data, config.train.on_bad_record)?;
    let examples = corpus_windows(&documents, &tokenizer, data.max_length)?;
    let mut objective = NextToken::new(examples, config)?;
    super::train(
        config,
        "pretrain",
        model,
        &tokenizer_path,
        &mut objective,
        options,
    )
}
