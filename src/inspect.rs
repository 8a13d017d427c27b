//! Commands for looking at a model and its tokenizer: `rlvr inspect model`, `rlvr tokenize`,
//! `rlvr logprobs`, `rlvr sample` and `rlvr render-chat`.

use crate::model::{Model, position_ids_from_mask};
use crate::sample::{self, SamplingParams};
use crate::tokenizer::{Message, Tokenizer};
use crate::types::Dtype;
use anyhow::{Context, Result, bail};
use std::io::IsTerminal;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Parses `--device`: `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match name.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => cuda(index),
            _ => bail!("--device must be cpu, cuda or cuda:N, not `{name}`"),
        },
    }
}

fn cuda(index: usize) -> Result<Device> {
    if !tch::Cuda::is_available() {
        bail!("--device cuda: no CUDA device is available (built with --features cuda?)");
    }
    Ok(Device::Cuda(index))
}

/// The tokenizer of a model folder, or of a tokenizer.json given directly.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    Tokenizer::load(&file)
}

/// `rlvr inspect model DIR`: what rlvr will do with a model folder. The weights are loaded
/// (in f32, as runs load them by default), so a folder that passes will load.
pub fn model_report(dir: &Path) -> Result<String> {
    use std::fmt::Write;
    let model = Model::load(dir, Device::Cpu, Dtype::F32)?;
    let config = model.config();
    let tokenizer = load_tokenizer(dir)?;
    let mut out = String::new();
    let architecture = config.architectures.first().map_or("?", String::as_str);
    writeln!(out, "model: {}", dir.display())?;
    writeln!(
        out,
        "  architecture: {architecture} (model_type {}): {} layers, hidden {}, {} heads / {} KV heads, head_dim {}, MLP {}, vocab {}, {} embeddings{}",
        config.model_type,
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.kv_heads(),
        config.head_dim(),
        config.intermediate_size,
        config.vocab_size,
        if config.tie_word_embeddings {
            "tied"
        } else {
            "untied"
        },
        if config.qk_norm() {
            "; per-head q/k norms"
        } else {
            ""
        },
    )?;
    let rope = config.rope();
    writeln!(
        out,
        "  rotary: {} (theta {})",
        rope.rope_type.as_deref().unwrap_or("default"),
        rope.rope_theta.unwrap_or_default()
    )?;
    let parameters = model.parameter_count();
    writeln!(
        out,
        "  parameters: {parameters} ({:.3} GB in f32, {:.3} GB in bf16); every tensor found and shaped as config.json says",
        parameters as f64 * 4.0 / 1e9,
        parameters as f64 * 2.0 / 1e9
    )?;
    let stored = ["dtype", "torch_dtype"]
        .iter()
        .find_map(|k| config.extra.get(*k).and_then(|v| v.as_str()))
        .unwrap_or("not stated");
    writeln!(
        out,
        "  stored dtype: {stored}; runs use `model.dtype` (f32 unless set)"
    )?;
    let path = sample::default_path(&model.transformer);
    writeln!(out, "  sampling in f32 on the CPU: {path}")?;
    writeln!(out, "tokenizer: {} tokens", tokenizer.vocab_size())?;
    if tokenizer.vocab_size() > config.vocab_size {
        writeln!(
            out,
            "  warning: the tokenizer has {} tokens but the model embeds only {}: prompts with ids from {} up are refused",
            tokenizer.vocab_size(),
            config.vocab_size,
            config.vocab_size
        )?;
    }
    writeln!(out, "  {}", tokenizer.template_source())?;
    let stops = sample::stop_token_ids(config, &tokenizer);
    let named: Vec<String> = stops
        .iter()
        .map(|&id| {
            format!(
                "{id} {:?}",
                tokenizer.decode(&[id], false).unwrap_or_default()
            )
        })
        .collect();
    writeln!(out, "  stop tokens: {}", named.join(", "))?;
    let messages = [
        Message {
            role: "system".into(),
            content: "You are a helpful assistant.".into(),
        },
        Message {
            role: "user".into(),
            content: "What is 2 + 2?".into(),
        },
    ];
    let rendered = tokenizer.render_chat(&messages, true)?;
    let text = tokenizer.decode(&rendered.ids, false)?;
    let opens = text.trim_end().ends_with("<think>");
    writeln!(
        out,
        "sample prompt (system + user, generation prompt; {} tokens{}):",
        rendered.ids.len(),
        if opens {
            "; the template opens a <think> block for the model"
        } else {
            ""
        }
    )?;
    for line in text.lines() {
        writeln!(out, "  | {line}")?;
    }
    Ok(out)
}

/// `rlvr tokenize`: the pieces of `text`, alternately coloured on a terminal.
pub fn tokenize(tokenizer_path: &Path, text: &str) -> Result<()> {
    let tokenizer = load_tokenizer(tokenizer_path)?;
    let ids = tokenizer.encode(text)?;
    let colour = std::io::stdout().is_terminal();
    let backgrounds = [
        "\x1b[48;5;153m",
        "\x1b[48;5;223m",
        "\x1b[48;5;194m",
        "\x1b[48;5;217m",
    ];
    let mut line = String::new();
    for (i, &id) in ids.iter().enumerate() {
        let piece = tokenizer.decode(&[id], false)?;
        if colour {
            line.push_str(&format!(
                "{}\x1b[30m{piece}\x1b[0m",
                backgrounds[i % backgrounds.len()]
            ));
        } else {
            line.push_str(&format!("[{piece}]"));
        }
    }
    println!("{line}");
    println!("{} tokens: {:?}", ids.len(), ids);
    Ok(())
}

/// `rlvr logprobs`: each token with its id and log-prob given the tokens before it.
pub fn logprobs(
    model_dir: &Path,
    text: Option<&str>,
    ids: Option<&str>,
    json: bool,
    with_logits: bool,
    device: Device,
) -> Result<()> {
    let model = Model::load(model_dir, device, Dtype::F32)?;
    let tokenizer = load_tokenizer(model_dir).ok();
    let ids: Vec<i64> = match (text, ids) {
        (Some(text), None) => tokenizer
            .as_ref()
            .with_context(|| format!("--text needs {}/tokenizer.json", model_dir.display()))?
            .encode(text)?,
        (None, Some(list)) => parse_ids(list)?,
        _ => bail!("give exactly one of --text and --ids"),
    };
    if ids.is_empty() {
        bail!("the input has no tokens");
    }
    let input = Tensor::from_slice(&ids).unsqueeze(0).to_device(device);
    let mask = input.ones_like();
    let logits = tch::no_grad(|| {
        model
            .transformer
            .forward(&input, &position_ids_from_mask(&mask), &mask, None)
    })?
    .squeeze_dim(0)
    .to_kind(Kind::Float)
    .to_device(Device::Cpu);
    let log_softmax = logits.log_softmax(-1, Kind::Float);
    let mut rows = Vec::with_capacity(ids.len());
    for (position, &id) in ids.iter().enumerate() {
        // The first token has no context, hence no log-prob.
        let logprob = (position > 0).then(|| log_softmax.double_value(&[position as i64 - 1, id]));
        let token = tokenizer.as_ref().and_then(|t| t.decode(&[id], false).ok());
        let mut row = serde_json::json!({ "position": position, "id": id, "token": token, "logprob": logprob });
        if with_logits {
            row["logits"] =
                serde_json::to_value(Vec::<f32>::try_from(logits.get(position as i64))?)?;
        }
        rows.push(row);
    }
    let total: f64 = rows.iter().filter_map(|r| r["logprob"].as_f64()).sum();
    let scored = ids.len() - 1;
    if json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "tokens": rows, "sum_logprob": total }))?
        );
        return Ok(());
    }
    println!("{:>5} {:>7} {:>12}  token", "pos", "id", "logprob");
    for row in &rows {
        let logprob = row["logprob"]
            .as_f64()
            .map_or("-".to_string(), |l| format!("{l:.5}"));
        println!(
            "{:>5} {:>7} {logprob:>12}  {:?}",
            row["position"],
            row["id"],
            row["token"].as_str().unwrap_or("?")
        );
        if let Some(logits) = row.get("logits") {
            println!("      logits: {logits}");
        }
    }
    if scored > 0 {
        println!(
            "sum log-prob {total:.4} over {scored} tokens, perplexity {:.3}",
            (-total / scored as f64).exp()
        );
    }
    Ok(())
}

fn parse_ids(list: &str) -> Result<Vec<i64>> {
    list.split(',')
        .map(|s| {
            s.trim()
                .parse::<i64>()
                .with_context(|| format!("--ids: `{s}` is not an integer"))
        })
        .collect()
}

/// `rlvr sample`: `n` completions of one prompt.
pub fn sample(
    model_dir: &Path,
    prompt: &str,
    chat: bool,
    n: usize,
    mut params: SamplingParams,
    device: Device,
) -> Result<()> {
    let model = Model::load(model_dir, device, Dtype::F32)?;
    let tokenizer = load_tokenizer(model_dir)?;
    let prompt_ids = if chat {
        let message = Message {
            role: "user".into(),
            content: prompt.into(),
        };
        tokenizer.render_chat(&[message], true)?.ids
    } else {
        tokenizer.encode(prompt)?
    };
    if prompt_ids.is_empty() {
        bail!("--prompt is empty");
    }
    params
        .stop_token_ids
        .extend(sample::stop_token_ids(model.config(), &tokenizer));
    params
        .stop_token_ids
        .extend(tokenizer.token_id(crate::tokenizer::END_OF_TEXT));
    let prompts = vec![prompt_ids; n];
    let started = std::time::Instant::now();
    let decode = |ids: &[i64]| tokenizer.decode(ids, false).unwrap_or_default();
    let completions = sample::generate(&model.transformer, &prompts, &params, Some(&decode))?;
    let elapsed = started.elapsed().as_secs_f64();
    let tokens: usize = completions.iter().map(|c| c.token_ids.len()).sum();
    for (i, completion) in completions.iter().enumerate() {
        let text = tokenizer.decode(&completion.token_ids, false)?;
        let mean_logprob =
            completion.logprobs.iter().sum::<f32>() / completion.logprobs.len().max(1) as f32;
        println!(
            "--- {i} ({:?}, {} tokens, mean log-prob {mean_logprob:.3})\n{text}",
            completion.finish_reason,
            completion.token_ids.len()
        );
    }
    println!(
        "--- {tokens} tokens in {elapsed:.2} s ({:.0} tokens/s)",
        tokens as f64 / elapsed
    );
    Ok(())
}

/// `rlvr render-chat`: a conversation file through the tokenizer folder's chat
/// template, printed as `{"text", "input_ids", "assistant_mask"}` (JSON with `--json`).
/// Which template was used goes to stderr.
pub fn render_chat(tokenizer_path: &Path, conversation: &Path, json: bool) -> Result<()> {
    let tokenizer = load_tokenizer(tokenizer_path)?;
    let text = std::fs::read_to_string(conversation)
        .with_context(|| format!("cannot read {}", conversation.display()))?;
    let conversation: crate::tokenizer::Conversation = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a conversation", conversation.display()))?;
    eprintln!("[render-chat] {}", tokenizer.template_source());
    let (text, rendered) = match &tokenizer.template {
        Some(template) => (
            template.render(&conversation)?,
            tokenizer.render_conversation(template, &conversation)?,
        ),
        None => {
            let messages: Vec<Message> = conversation
                .messages
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    serde_json::from_value(m.clone()).with_context(|| {
                        format!(
                            "message {i}: the built-in format takes only role and content strings"
                        )
                    })
                })
                .collect::<Result<_>>()?;
            let rendered = tokenizer.render_chat(&messages, conversation.add_generation_prompt)?;
            (tokenizer.decode(&rendered.ids, false)?, rendered)
        }
    };
    let out = serde_json::json!({
        "text": text,
        "input_ids": rendered.ids,
        "assistant_mask": rendered.assistant_mask,
    });
    if json {
        println!("{out}");
    } else {
        println!("{text}");
        println!(
            "{} tokens, {} in the assistant mask",
            rendered.ids.len(),
            rendered.assistant_mask.iter().filter(|&&m| m == 1).count()
        );
    }
    Ok(())
}
