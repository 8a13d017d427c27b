//! The `rlvr` binary: it starts without LD_LIBRARY_PATH (libtorch is found through
//! the RPATH that build.rs adds), lists only working commands, and reports bad
//! configs with file, line and suggestion.

use std::process::Command;

fn rlvr(args: &[&str]) -> (bool, String, String) {
    rlvr_in(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

fn rlvr_in(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_rlvr"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .current_dir(dir)
        .output()
        .expect("the rlvr binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_working_commands() {
    let (ok, stdout, _) = rlvr(&["--help"]);
    assert!(ok);
    for command in [
        "check", "env", "demo", "tokenize", "logprobs", "sample", "bench",
    ] {
        assert!(
            stdout.contains(command),
            "--help lacks `{command}`:\n{stdout}"
        );
    }
}

#[test]
fn env_loads_libtorch_and_finds_the_sandbox_modules() {
    let (ok, stdout, stderr) = rlvr(&["env"]);
    assert!(ok, "rlvr env failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("= 14"),
        "libtorch computed a wrong dot product:\n{stdout}"
    );
    assert!(stdout.contains("python-3.12.wasm"), "{stdout}");
}

#[test]
fn check_accepts_shipped_files_and_rejects_a_typo() {
    let (ok, stdout, stderr) = rlvr(&[
        "check",
        "--quiet",
        "configs/grpo.yaml",
        "tasks/arithmetic.yaml",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ok: configs/grpo.yaml (run config)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: tasks/arithmetic.yaml (task)"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: x\nmodel:\n  path: m\n  dtpye: bf16\n").unwrap();
    let (ok, _, stderr) = rlvr(&["check", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("bad.yaml:4:"), "{stderr}");
    assert!(stderr.contains("did you mean `dtype`?"), "{stderr}");
    assert!(stderr.contains("1 of 1 file(s) failed"), "{stderr}");
}

/// A tiny model folder with a trained tokenizer, as a from-scratch run would write.
fn tiny_model_dir() -> tempfile::TempDir {
    use rlvr::config::run::Dtype;
    use rlvr::model::{Model, ModelConfig};
    use rlvr::tokenizer::Tokenizer;
    let dir = tempfile::tempdir().unwrap();
    let corpus = (0..300).map(|i| format!("What is {i} + {}? #### {}", i * 3, i * 4));
    let tokenizer = Tokenizer::train_bpe(corpus, 300).unwrap();
    let tokenizer_path = dir.path().join("tokenizer.json");
    tokenizer.save(&tokenizer_path).unwrap();
    let config = ModelConfig::tiny_qwen2(tokenizer.vocab_size(), 32, 2, 4);
    let model = Model::random(&config, tch::Device::Cpu, Dtype::F32, 0).unwrap();
    model
        .save(&dir.path().join("model"), Some(&tokenizer_path))
        .unwrap();
    dir
}

#[test]
fn tokenize_shows_pieces_and_ids() {
    let dir = tiny_model_dir();
    let model = dir.path().join("model");
    let (ok, stdout, stderr) = rlvr(&[
        "tokenize",
        "--tokenizer",
        model.to_str().unwrap(),
        "What is 12?",
    ]);
    assert!(ok, "{stderr}");
    // Not a terminal: pieces in brackets, digits split one by one.
    assert!(stdout.contains("[1][2]"), "{stdout}");
    assert!(
        stdout.lines().nth(1).unwrap().starts_with("6 tokens: ["),
        "{stdout}"
    );
}

#[test]
fn logprobs_json_matches_the_model() {
    let dir = tiny_model_dir();
    let model_dir = dir.path().join("model");
    let (ok, stdout, stderr) = rlvr(&[
        "logprobs",
        "--model",
        model_dir.to_str().unwrap(),
        "--ids",
        "5,17,33,2",
        "--json",
        "--logits",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let tokens = report["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 4);
    assert!(
        tokens[0]["logprob"].is_null(),
        "the first token has no context"
    );
    // Recompute token 1's log-prob from the printed logits of position 0.
    let logits: Vec<f64> = serde_json::from_value(tokens[0]["logits"].clone()).unwrap();
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let log_z = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    let want = logits[17] - log_z;
    let got = tokens[1]["logprob"].as_f64().unwrap();
    assert!((want - got).abs() < 1e-4, "{want} vs {got}");
    let sum: f64 = tokens.iter().filter_map(|t| t["logprob"].as_f64()).sum();
    assert!((sum - report["sum_logprob"].as_f64().unwrap()).abs() < 1e-9);

    let (ok, _, stderr) = rlvr(&[
        "logprobs",
        "--model",
        model_dir.to_str().unwrap(),
        "--ids",
        "5,999",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("token id 999 is outside the vocabulary"),
        "{stderr}"
    );
    let (ok, _, stderr) = rlvr(&[
        "logprobs",
        "--model",
        dir.path().join("nope").to_str().unwrap(),
        "--ids",
        "1",
    ]);
    assert!(!ok);
    assert!(stderr.contains("nope: not a model folder"), "{stderr}");
}

#[test]
fn sample_prints_n_completions_reproducibly() {
    let dir = tiny_model_dir();
    let model_dir = dir.path().join("model");
    let args = [
        "sample",
        "--model",
        model_dir.to_str().unwrap(),
        "--prompt",
        "What is 3 + 4?",
        "--chat",
        "-n",
        "3",
        "--max-new-tokens",
        "5",
        "--seed",
        "11",
    ];
    let (ok, first, stderr) = rlvr(&args);
    assert!(ok, "{stderr}");
    assert_eq!(
        first.matches("--- ").count(),
        4,
        "3 completions and a summary:\n{first}"
    );
    let (_, second, _) = rlvr(&args);
    let strip_timing = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("tokens/s"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip_timing(&first),
        strip_timing(&second),
        "same seed, same completions"
    );
    let (ok, _, stderr) = rlvr(&[
        "sample",
        "--model",
        model_dir.to_str().unwrap(),
        "--prompt",
        "",
    ]);
    assert!(!ok);
    assert!(stderr.contains("--prompt is empty"), "{stderr}");
}

/// Runs `rlvr demo [--task code]` with the real stage configs shrunk to tiny models and
/// a few steps, in a scratch folder, twice.
fn tiny_demo(task: &str, configs: &str, tasks: &[&str], output: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.path().join(configs)).unwrap();
    std::fs::create_dir_all(dir.path().join("tasks")).unwrap();
    for file in tasks {
        std::fs::copy(
            root.join("tasks").join(file),
            dir.path().join("tasks").join(file),
        )
        .unwrap();
    }
    let shrink = |name: &str, edits: &[(&str, &str)]| {
        let mut text = std::fs::read_to_string(root.join(configs).join(name)).unwrap();
        for (key, value) in edits {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{key}:")))
                .unwrap_or_else(|| panic!("{name} has no {key}"))
                .to_string();
            let indent = &line[..line.len() - line.trim_start().len()];
            text = text.replace(&line, &format!("{indent}{key}: {value}"));
        }
        std::fs::write(dir.path().join(configs).join(name), text).unwrap();
    };
    shrink(
        "pretrain.yaml",
        &[
            (
                "init",
                "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 4}",
            ),
            ("max_steps", "3"),
            ("batch_size", "4"),
        ],
    );
    shrink("sft.yaml", &[("max_steps", "3"), ("batch_size", "4")]);
    shrink(
        "grpo.yaml",
        &[
            ("max_steps", "2"),
            ("prompts_per_step", "2"),
            ("max_completion_length", "8"),
        ],
    );
    let run = || {
        let (ok, stdout, stderr) = rlvr_in(dir.path(), &["demo", "--task", task]);
        assert!(ok, "{stderr}");
        stdout
    };
    let first = run();
    for expected in [
        "[demo 4] byte-level BPE tokenizer",
        "[demo 5] pretraining",
        "[demo 7] GRPO",
        "greedy accuracy on 500 held-out items",
        "McNemar exact p",
    ] {
        assert!(first.contains(expected), "missing {expected:?}:\n{first}");
    }
    for file in [
        "train.jsonl",
        "held_out.jsonl",
        "corpus.jsonl",
        "sft.jsonl",
        "tokenizer.json",
        "pretrain/model/model.safetensors",
        "sft/model/config.json",
        "grpo/model/tokenizer.json",
        "grpo/metrics.jsonl",
        "report.html",
    ] {
        assert!(dir.path().join(output).join(file).exists(), "{file}");
    }
    // A second run reuses every stage and the saved evaluations.
    let second = run();
    assert_eq!(second.matches("reusing").count(), 3, "{second}");
    let summary = |out: &str| {
        out.lines()
            .find(|l| l.contains("held-out items:"))
            .map(String::from)
    };
    assert_eq!(summary(&second), summary(&first));
}

#[test]
fn arithmetic_demo_runs_every_stage_and_reuses_them() {
    tiny_demo(
        "arithmetic",
        "configs/demo",
        &["arithmetic.yaml", "arithmetic-held-out.yaml"],
        "runs/demo",
    );
}

#[test]
fn code_demo_runs_every_stage_and_reuses_them() {
    tiny_demo(
        "code",
        "configs/demo-code",
        &["python_functions.yaml", "python-functions-held-out.yaml"],
        "runs/demo-code",
    );
}

/// `rlvr render-chat`: the built-in format without a template, the folder's
/// chat_template.jinja (over tokenizer_config.json's) with it, and the template's own
/// message when it raises.
#[test]
fn render_chat_uses_the_folders_template_and_reports_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = (0..200).map(|i| format!("What is {i} plus {}?", i * 7));
    let tokenizer = rlvr::tokenizer::Tokenizer::train_bpe(corpus, 300).unwrap();
    tokenizer.save(&dir.path().join("tokenizer.json")).unwrap();
    let conversation = dir.path().join("conversation.json");
    std::fs::write(
        &conversation,
        r#"{"messages": [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4"}]}"#,
    )
    .unwrap();
    let folder = dir.path().to_str().unwrap();
    let args = [
        "render-chat",
        "--tokenizer",
        folder,
        "--conversation",
        conversation.to_str().unwrap(),
        "--json",
    ];
    let (ok, stdout, stderr) = rlvr(&args);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("built-in"), "{stderr}");
    let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        out["text"],
        "<|user|>What is 2 plus 2?<|end|><|assistant|>4<|end|>"
    );

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<|endoftext|>", "eos_token": "<|end|>", "chat_template": "loses to the .jinja file"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('Unknown role: ' + m.role) }}{% endif %}<|{{ m.role }}|>{{ m.content | trim }}<|end|>\n{% endfor %}",
    )
    .unwrap();
    let (ok, stdout, stderr) = rlvr(&args);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("chat_template.jinja"), "{stderr}");
    let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let text = "<|endoftext|><|user|>What is 2 plus 2?<|end|>\n<|assistant|>4<|end|>\n";
    assert_eq!(out["text"], text);
    let ids: Vec<i64> = serde_json::from_value(out["input_ids"].clone()).unwrap();
    assert_eq!(ids, tokenizer.encode(text).unwrap());
    let bos = tokenizer.token_id("<|endoftext|>").unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == bos).count(), 1);
    let mask: Vec<u8> = serde_json::from_value(out["assistant_mask"].clone()).unwrap();
    let learned: Vec<i64> = ids
        .iter()
        .zip(&mask)
        .filter(|(_, m)| **m == 1)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(tokenizer.decode(&learned, false).unwrap(), "4<|end|>");

    std::fs::write(
        &conversation,
        r#"{"messages": [{"role": "critic", "content": "x"}]}"#,
    )
    .unwrap();
    let (ok, _, stderr) = rlvr(&args);
    assert!(!ok);
    assert!(stderr.contains("Unknown role: critic"), "{stderr}");
}

#[test]
fn inspect_reports_what_rlvr_will_do_with_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let folder = dir.path().join("m");
    std::fs::create_dir(&folder).unwrap();
    for file in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixtures.join("tiny-qwen3").join(file), folder.join(file)).unwrap();
    }
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(
            fixtures.join("chat-tokenizers/qwen").join(file),
            folder.join(file),
        )
        .unwrap();
    }
    std::fs::write(
        folder.join("chat_template.jinja"),
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}",
    )
    .unwrap();
    let path = folder.to_str().unwrap();
    let (ok, stdout, stderr) = rlvr(&["inspect", "model", path]);
    assert!(ok, "{stderr}");
    for expected in [
        "Qwen3ForCausalLM (model_type qwen3)",
        "head_dim 16",
        "per-head q/k norms",
        "tied embeddings",
        "every tensor found",
        "chat_template.jinja",
        "stop tokens: 2 \"<|im_end|>\"",
        "opens a <think> block",
        "| <|im_start|>assistant",
        // The fixture's tokenizer is larger than the tiny model's vocabulary.
        "warning: the tokenizer has 384 tokens but the model embeds only 96",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    // A folder that would not load says why.
    let config = std::fs::read_to_string(folder.join("config.json")).unwrap();
    std::fs::write(
        folder.join("config.json"),
        config.replace("\"qwen3\"", "\"qwen2\""),
    )
    .unwrap();
    let (ok, _, stderr) = rlvr(&["inspect", "model", path]);
    assert!(!ok && stderr.contains("q_norm"), "{stderr}");
}
