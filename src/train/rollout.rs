//! Rollouts shared by the RL objectives (GRPO and PPO): the task's prompts, sampling
//! completions with the KV cache, scoring them with the task's rewards, the frozen
//! reference's log-probs, reward metrics and samples.jsonl.

use super::batch::{CompletionForward, DataOrder, completion_forward, micro_batches, step_seed};
use crate::config::run::RlSection;
use crate::config::{RunConfig, TaskConfig};
use crate::data::prompts::{Prompt, load_prompts};
use crate::model::Model;
use crate::reward::{RewardSet, Sample, Score, Scored, reasoning};
use crate::run::{Metrics, RunDir};
use crate::sample::{self, Completion, FinishReason, SamplingParams};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// One sampled completion with everything the update and the logs need.
pub struct Rollout {
    pub prompt: usize,
    pub completion: Completion,
    pub text: String,
    pub scored: Scored,
    /// The advantage the update gives the sequence (for the logs).
    pub advantage: f64,
    /// Tokens of the reasoning block (all of them when it was never closed).
    pub reasoning_tokens: usize,
    /// The reasoning block was closed (or never opened): there is an answer.
    pub answered: bool,
}

pub struct RolloutSource {
    pub rl: RlSection,
    /// Rows per micro-batch, padded tokens per micro-batch (0: no budget), and
    /// activation checkpointing in the training forward.
    pub micro_batch: usize,
    max_tokens: usize,
    checkpointing: bool,
    seed: u64,
    sample_log_steps: usize,
    pub prompts: Vec<Prompt>,
    rewards: RewardSet,
    reward_names: Vec<String>,
    tokenizer: Tokenizer,
    stop_token_ids: Vec<i64>,
    pub reference: Option<Model>,
    order: DataOrder,
    /// Prompts drawn so far (dynamic sampling draws a varying number per step).
    pub cursor: usize,
    /// The proxy (learned reward model) and gold means of the last `MONITOR_WINDOW`
    /// batches, when the task has both.
    monitor: Vec<(f64, f64)>,
}

/// Batches the over-optimisation monitor looks back over.
const MONITOR_WINDOW: usize = 10;

/// Least-squares slope of `values` against their index.
fn slope(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = values.iter().sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for (x, y) in values.iter().enumerate() {
        let dx = x as f64 - mean_x;
        covariance += dx * (y - mean_y);
        variance += dx * dx;
    }
    if variance > 0.0 {
        covariance / variance
    } else {
        0.0
    }
}

/// Reward over-optimisation: over the last `window` batches the proxy (a learned reward
/// model) trends up while the gold reward trends down.
pub fn overoptimized(history: &[(f64, f64)], window: usize) -> bool {
    if history.len() < window || window < 2 {
        return false;
    }
    let recent = &history[history.len() - window..];
    let proxy: Vec<f64> = recent.iter().map(|p| p.0).collect();
    let gold: Vec<f64> = recent.iter().map(|p| p.1).collect();
    slope(&proxy) > 0.0 && slope(&gold) < 0.0
}

impl RolloutSource {
    pub fn new(
        config: &RunConfig,
        tokenizer_path: &Path,
        policy: &Model,
        needs_reference: bool,
    ) -> Result<Self> {
        let rl = config
            .rl
            .clone()
            .context("an RL run needs an `rl` section")?;
        let task_path = config.task.clone().context("an RL run needs a `task`")?;
        let task = TaskConfig::load(&task_path)?;
        let tokenizer = super::run_tokenizer(config, tokenizer_path)?;
        let prompts = load_prompts(&task, &task_path, &tokenizer, config.train.on_bad_record)?;
        if prompts.is_empty() {
            bail!("{}: no usable prompts", task_path.display());
        }
        let task_dir = task_path.parent().unwrap_or(Path::new("."));
        let rewards = RewardSet::from_task(&task, task_dir)
            .with_context(|| format!("{}: cannot build the rewards", task_path.display()))?;
        let stop_token_ids = sample::stop_token_ids(policy.config(), &tokenizer);
        let reference = if needs_reference {
            Some(reference_model(config, policy)?)
        } else {
            None
        };
        Ok(Self {
            micro_batch: config.train.batch_size,
            max_tokens: config.train.max_tokens_per_micro_batch,
            checkpointing: config.train.gradient_checkpointing,
            seed: config.seed,
            sample_log_steps: config.train.sample_log_steps,
            order: DataOrder::new(prompts.len(), config.seed),
            reward_names: rewards.names().iter().map(|s| s.to_string()).collect(),
            prompts,
            rewards,
            tokenizer,
            stop_token_ids,
            reference,
            cursor: 0,
            monitor: Vec::new(),
            rl,
        })
    }

    /// Samples and scores one draw of `prompts_per_step` prompts × G completions.
    pub fn draw(
        &mut self,
        model: &Model,
        step: usize,
        draw: u64,
        timing: &mut Metrics,
    ) -> Result<Vec<Rollout>> {
        let group = self.rl.num_generations;
        let picks: Vec<usize> = (0..self.rl.prompts_per_step)
            .map(|i| self.order.get(self.cursor + i))
            .collect();
        self.cursor += picks.len();
        let rows: Vec<Vec<i64>> = picks
            .iter()
            .flat_map(|&p| std::iter::repeat_n(self.prompts[p].ids.clone(), group))
            .collect();
        let params = SamplingParams {
            max_new_tokens: self.rl.max_completion_length,
            temperature: self.rl.temperature,
            top_k: self.rl.top_k,
            top_p: self.rl.top_p,
            stop_token_ids: self.stop_token_ids.clone(),
            stop_strings: Vec::new(),
            seed: step_seed(self.seed, step, draw),
            ..SamplingParams::default()
        };
        let started = Instant::now();
        let completions = sample::generate(&model.transformer, &rows, &params, None)?;
        *timing.entry("time/sample".into()).or_default() += started.elapsed().as_secs_f64();

        let started = Instant::now();
        let texts: Vec<String> = completions
            .iter()
            .map(|c| self.tokenizer.decode_completion(&c.token_ids))
            .collect::<Result<_>>()?;
        let owners: Vec<usize> = picks
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, group))
            .collect();
        let samples: Vec<Sample> = owners
            .iter()
            .zip(&texts)
            .zip(&completions)
            .map(|((&p, text), completion)| {
                Sample::new(
                    &self.prompts[p].record,
                    &self.prompts[p].text,
                    text,
                    completion.token_ids.len(),
                )
                .after(&self.prompts[p].chat_text)
            })
            .collect();
        let scored = self.rewards.score_batch(&samples);
        *timing.entry("time/score".into()).or_default() += started.elapsed().as_secs_f64();
        Ok(owners
            .into_iter()
            .zip(completions)
            .zip(texts)
            .zip(scored)
            .map(|(((prompt, completion), text), scored)| {
                let split = reasoning::split(
                    &self.rewards.reasoning,
                    &self.prompts[prompt].chat_text,
                    &text,
                );
                let reasoning_tokens = match split.answer {
                    None => completion.token_ids.len(),
                    Some(_) => tokens_spanning(
                        &self.tokenizer,
                        &completion.token_ids,
                        split.reasoning.len(),
                    ),
                };
                Rollout {
                    prompt,
                    answered: split.answer.is_some(),
                    reasoning_tokens,
                    completion,
                    text,
                    scored,
                    advantage: 0.0,
                }
            })
            .collect())
    }

    pub fn reference_logprobs(
        &self,
        reference: &Model,
        rollouts: &[Rollout],
    ) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(rollouts.len());
        for range in self.micro_batches(rollouts.iter()) {
            let chunk = &rollouts[range];
            let logprobs = tch::no_grad(|| self.forward(reference, chunk))?.logprobs;
            out.extend(completion_rows(&logprobs, chunk)?);
        }
        Ok(out)
    }

    /// What a checkpoint keeps of the rollouts: the prompt cursor and the monitor's
    /// history (as f64 bits: a JSON float may not parse back to the same value).
    pub fn state(&self) -> Value {
        let monitor: Vec<[u64; 2]> = self
            .monitor
            .iter()
            .map(|(p, g)| [p.to_bits(), g.to_bits()])
            .collect();
        json!({ "prompt_cursor": self.cursor, "monitor": monitor })
    }

    pub fn restore(&mut self, state: &Value) -> Result<()> {
        self.cursor = state
            .get("prompt_cursor")
            .and_then(Value::as_u64)
            .context("trainer_state.json: objective.prompt_cursor is missing")?
            as usize;
        let monitor: Vec<[u64; 2]> = match state.get("monitor") {
            Some(value) => serde_json::from_value(value.clone())
                .context("trainer_state.json: objective.monitor is unreadable")?,
            None => Vec::new(),
        };
        self.monitor = monitor
            .into_iter()
            .map(|[p, g]| (f64::from_bits(p), f64::from_bits(g)))
            .collect();
        Ok(())
    }

    /// With a learned reward model (proxy) and a gold reward in the task: both means,
    /// and a flag when the proxy rises while the gold falls.
    fn monitor_metrics(&mut self, rollouts: &[Rollout], metrics: &mut Metrics) {
        let (proxy, gold) = (&self.rewards.proxy, &self.rewards.gold);
        if proxy.is_empty() || gold.is_empty() {
            return;
        }
        // Over the scores that were graded: a failed gold check is no evidence.
        let mean = |functions: &[usize]| {
            let values: Vec<f64> = rollouts
                .iter()
                .flat_map(|r| functions.iter().map(|&f| &r.scored.per_function[f]))
                .filter_map(Score::graded_value)
                .collect();
            values.iter().sum::<f64>() / values.len().max(1) as f64
        };
        let point = (mean(proxy), mean(gold));
        self.monitor.push(point);
        if self.monitor.len() > MONITOR_WINDOW {
            self.monitor.remove(0);
        }
        let flagged = overoptimized(&self.monitor, MONITOR_WINDOW);
        metrics.insert("overoptimization/proxy".into(), point.0);
        metrics.insert("overoptimization/gold".into(), point.1);
        metrics.insert("overoptimization/flag".into(), f64::from(u8::from(flagged)));
    }

    /// The rollouts' prompt ids and completion ids, row by row.
    pub fn sequences<'a, 'b>(
        &'a self,
        rollouts: impl IntoIterator<Item = &'b Rollout>,
    ) -> (Vec<&'a [i64]>, Vec<&'b [i64]>) {
        rollouts
            .into_iter()
            .map(|r| {
                (
                    self.prompts[r.prompt].ids.as_slice(),
                    r.completion.token_ids.as_slice(),
                )
            })
            .unzip()
    }

    /// The micro-batches `rollouts` go through the model in, as index ranges (see
    /// [`micro_batches`]: `train.batch_size` rows, `train.max_tokens_per_micro_batch`).
    pub fn micro_batches<'b>(
        &self,
        rollouts: impl IntoIterator<Item = &'b Rollout>,
    ) -> Vec<Range<usize>> {
        let (prompts, completions) = self.sequences(rollouts);
        let sizes: Vec<(usize, usize)> = prompts
            .iter()
            .zip(&completions)
            .map(|(p, c)| (p.len(), c.len()))
            .collect();
        micro_batches(&sizes, self.micro_batch, self.max_tokens)
    }

    /// One forward pass of `model` over the rollouts' prompts and completions.
    pub fn forward<'a>(
        &self,
        model: &Model,
        rollouts: impl IntoIterator<Item = &'a Rollout>,
    ) -> Result<CompletionForward> {
        let (prompts, completions) = self.sequences(rollouts);
        completion_forward(
            &model.transformer,
            &prompts,
            &completions,
            self.rl.temperature,
            self.checkpointing,
        )
    }

    /// The batch's reward metrics, over the completions that were graded.
    pub fn reward_metrics(&mut self, rollouts: &[Rollout], metrics: &mut Metrics) {
        self.monitor_metrics(rollouts, metrics);
        let graded: Vec<&Rollout> = rollouts.iter().filter(|r| r.scored.graded()).collect();
        let stats = |values: Vec<f64>| {
            let n = values.len().max(1) as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
            (mean, var.sqrt())
        };
        let (mean, std) = stats(graded.iter().map(|r| r.scored.total).collect());
        metrics.insert("reward".into(), mean);
        metrics.insert("reward_std".into(), std);
        for (f, name) in self.reward_names.iter().enumerate() {
            let (mean, std) = stats(
                rollouts
                    .iter()
                    .filter_map(|r| r.scored.per_function[f].graded_value())
                    .collect(),
            );
            metrics.insert(format!("rewards/{name}/mean"), mean);
            metrics.insert(format!("rewards/{name}/std"), std);
        }
        let solved = graded.iter().filter(|r| r.scored.solved()).count();
        metrics.insert(
            "accuracy".into(),
            solved as f64 / graded.len().max(1) as f64,
        );
        let infra = rollouts
            .iter()
            .flat_map(|r| &r.scored.per_function)
            .filter(|s| s.infra_error.is_some())
            .count();
        metrics.insert("reward_infra_errors".into(), infra as f64);
        let ungraded = rollouts.len() - graded.len();
        metrics.insert("ungraded".into(), ungraded as f64);
        let n = rollouts.len().max(1) as f64;
        let lengths: Vec<usize> = rollouts
            .iter()
            .map(|r| r.completion.token_ids.len())
            .collect();
        metrics.insert(
            "completions/mean_length".into(),
            lengths.iter().sum::<usize>() as f64 / n,
        );
        metrics.insert(
            "completions/max_length".into(),
            lengths.iter().copied().max().unwrap_or(0) as f64,
        );
        let truncated = rollouts
            .iter()
            .filter(|r| r.completion.finish_reason == FinishReason::Length)
            .count();
        metrics.insert("completions/clipped_ratio".into(), truncated as f64 / n);
        let reasoning: usize = rollouts.iter().map(|r| r.reasoning_tokens).sum();
        let total: usize = lengths.iter().sum();
        metrics.insert("completions/reasoning_length".into(), reasoning as f64 / n);
        metrics.insert(
            "completions/answer_length".into(),
            (total - reasoning) as f64 / n,
        );
        let unanswered = rollouts.iter().filter(|r| !r.answered).count();
        metrics.insert(
            "completions/unclosed_reasoning_ratio".into(),
            unanswered as f64 / n,
        );
    }

    /// Stops the run when too many completions could not be graded: training on what
    /// is left would follow a broken grader's sample, not the task.
    pub fn check_ungraded(&self, step: usize, rollouts: &[Rollout]) -> Result<()> {
        let ungraded = rollouts.iter().filter(|r| !r.scored.graded()).count();
        let rate = ungraded as f64 / rollouts.len().max(1) as f64;
        if ungraded == 0 || rate <= self.rl.max_ungraded_rate {
            return Ok(());
        }
        let first = rollouts
            .iter()
            .find_map(|r| r.scored.ungraded.as_deref())
            .unwrap_or_default();
        bail!(
            "step {}: {ungraded} of {} completions could not be graded ({:.1}%, above \
             rl.max_ungraded_rate = {}); the first: {first}",
            step + 1,
            rollouts.len(),
            100.0 * rate,
            self.rl.max_ungraded_rate
        )
    }

    /// Appends the batch sampled at `step` (0-based) to samples.jsonl, every
    /// `sample_log_steps` steps.
    pub fn log_samples<'a>(
        &self,
        run: &RunDir,
        step: usize,
        rollouts: impl IntoIterator<Item = &'a Rollout>,
    ) -> Result<()> {
        if self.sample_log_steps == 0 || !step.is_multiple_of(self.sample_log_steps) {
            return Ok(());
        }
        let step = step + 1;
        let rows: Vec<Value> = rollouts
            .into_iter()
            .map(|r| {
                let rewards: serde_json::Map<String, Value> = self
                    .reward_names
                    .iter()
                    .zip(&r.scored.per_function)
                    .map(|(name, s)| {
                        let value = s.graded_value();
                        (name.clone(), json!({"value": value, "reason": s.reason}))
                    })
                    .collect();
                json!({
                    "step": step,
                    "prompt": self.prompts[r.prompt].text,
                    "chat_prompt": self.prompts[r.prompt].chat_text,
                    "completion": r.text,
                    "reward": r.scored.graded().then_some(r.scored.total),
                    "ungraded": r.scored.ungraded,
                    "rewards": rewards,
                    "advantage": r.advantage,
                    "tokens": r.completion.token_ids.len(),
                    "reasoning_tokens": r.reasoning_tokens,
                    "finish_reason": r.completion.finish_reason,
                })
            })
            .collect();
        run.log_samples(&rows)
    }
}

/// How many of `ids` it takes to decode to at least `bytes` bytes of text: where
/// the reasoning block ends, in tokens (a binary search over decoded prefixes).
fn tokens_spanning(tokenizer: &Tokenizer, ids: &[i64], bytes: usize) -> usize {
    if bytes == 0 {
        return 0;
    }
    let decoded_len = |k: usize| {
        tokenizer
            .decode_completion(&ids[..k])
            .map_or(0, |text| text.len())
    };
    let (mut low, mut high) = (0, ids.len());
    while low < high {
        let mid = (low + high) / 2;
        if decoded_len(mid) >= bytes {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    low
}

/// Each rollout's row of a [rows, tokens] tensor, cut to its completion's length.
pub fn completion_rows(values: &Tensor, rollouts: &[Rollout]) -> Result<Vec<Vec<f32>>> {
    rollouts
        .iter()
        .enumerate()
        .map(|(row, rollout)| {
            let n = rollout.completion.token_ids.len() as i64;
            Ok(Vec::<f32>::try_from(
                values.get(row as i64).narrow(0, 0, n),
            )?)
        })
        .collect()
}

/// A step's metrics from its batch's: all of them on the batch's first update; on the
/// updates that reuse the batch, the same rewards but no sampling time.
pub fn batch_metrics(metrics: &Metrics, first_update: bool) -> Metrics {
    metrics
        .iter()
        .filter(|(k, _)| first_update || !k.starts_with("time/"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The frozen KL reference: `model.reference`, or the policy's starting weights.
pub fn reference_model(config: &RunConfig, policy: &Model) -> Result<Model> {
    let path: PathBuf = match (&config.model.reference, &config.model.path) {
        (Some(reference), _) => reference.clone(),
        (None, Some(path)) => path.clone(),
        (None, None) => bail!(
            "rl.beta > 0 needs a reference model: set model.reference (a new model has no \
             starting weights on disk)"
        ),
    };
    let reference = Model::load(&path, policy.vs.device(), config.model.dtype)
        .with_context(|| format!("model.reference: cannot load {}", path.display()))?;
    if reference.config().vocab_size != policy.config().vocab_size {
        bail!(
            "model.reference {}: vocab_size {} differs from the policy's {}",
            path.display(),
            reference.config().vocab_size,
            policy.config().vocab_size
        );
    }
    for mut variable in reference.vs.trainable_variables() {
        let _ = variable.requires_grad_(false);
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitor_flags_a_rising_proxy_with_a_falling_gold() {
        let rising_falling: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 0.1, 1.0 - i as f64 * 0.05))
            .collect();
        assert!(overoptimized(&rising_falling, 10));
        assert!(
            !overoptimized(&rising_falling[..9], 10),
            "too little history"
        );
        let both_rise: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, i as f64)).collect();
        assert!(!overoptimized(&both_rise, 10));
        // Only the last window counts: an old decline does not flag a healthy run.
        let mut recovered = rising_falling.clone();
        recovered.extend((0..10).map(|i| (1.0 + i as f64 * 0.1, 0.5 + i as f64 * 0.05)));
        assert!(!overoptimized(&recovered, 10));
        assert!((slope(&[1.0, 3.0, 5.0]) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn the_reasoning_length_is_counted_in_tokens() {
        let corpus = ["<think>one two three</think> four five"; 50].map(String::from);
        let tokenizer = Tokenizer::train_bpe(corpus.into_iter(), 300).unwrap();
        let text = "<think>one two three</think> four five";
        let ids = tokenizer.encode(text).unwrap();
        let reasoning = "<think>one two three</think>";
        let k = tokens_spanning(&tokenizer, &ids, reasoning.len());
        let head = tokenizer.decode_completion(&ids[..k]).unwrap();
        assert!(
            head.starts_with(reasoning) && head.len() < text.len(),
            "{head:?}"
        );
        let shorter = tokenizer.decode_completion(&ids[..k - 1]).unwrap();
        assert!(shorter.len() < reasoning.len(), "{shorter:?}");
        assert_eq!(tokens_spanning(&tokenizer, &ids, 0), 0);
        assert_eq!(tokens_spanning(&tokenizer, &ids, text.len()), ids.len());
    }
}
