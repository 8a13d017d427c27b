//! The training core end to end on tiny models: pretraining and SFT lower their loss,
//! training log-probs equal the sampler's, and bad input stops a run with a message that
//! says where.

mod common;

use common::{digit_task, mean, metrics, tiny_model, write_config};
use rlvr::config::RunConfig;
use rlvr::config::run::Dtype;
use rlvr::model::Model;
use rlvr::run::RunDir;
use rlvr::tokenizer::Tokenizer;
use rlvr::train::{self, StartOptions};

#[test]
fn pretraining_then_sft_lower_their_losses() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..200)
        .map(|i| format!("What is {i} + 1? {}", i + 1))
        .collect();
    std::fs::write(dir.path().join("corpus.txt"), lines.join("\n")).unwrap();
    let pretrain = write_config(
        dir.path(),
        "pretrain",
        &format!(
            r#"name: pre
output_dir: {out}
model:
  init: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 4}}
  tokenizer: {out}/tokenizer.json
data:
  path: {out}/corpus.txt
  max_length: 32
  tokenizer_vocab_size: 300
optim:
  learning_rate: 3.0e-3
train:
  max_steps: 30
  batch_size: 8
  gradient_accumulation_steps: 2
"#,
            out = dir.path().display()
        ),
    );
    let config = RunConfig::load(&pretrain).unwrap();
    let model = train::pretrain::run(&config, StartOptions::default()).unwrap();
    assert!(dir.path().join("tokenizer.json").exists(), "trained first");
    let rows = metrics(&config.run_dir());
    assert!(mean(&rows[25..], "loss") < mean(&rows[..5], "loss") - 1.0);

    let conversations: Vec<String> = (0..50)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("What is {i} + 1?")},
                {"role": "assistant", "content": format!("{}", i + 1)},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(dir.path().join("sft.jsonl"), conversations.join("\n")).unwrap();
    let sft = write_config(
        dir.path(),
        "sft",
        &format!(
            r#"name: sft
output_dir: {out}
model:
  path: {model}
data:
  path: {out}/sft.jsonl
optim:
  learning_rate: 3.0e-3
train:
  max_steps: 20
  batch_size: 8
"#,
            out = dir.path().display(),
            model = model.display()
        ),
    );
    let config = RunConfig::load(&sft).unwrap();
    train::sft::run(&config, StartOptions::default()).unwrap();
    let rows = metrics(&config.run_dir());
    assert!(mean(&rows[15..], "loss") < mean(&rows[..3], "loss"));
    // Only the assistant's answer and end token count: 2–4 tokens per conversation.
    let tokens = rows[0]["tokens"].as_f64().unwrap();
    assert!((16.0..=32.0).contains(&tokens), "{tokens} target tokens");
}

#[test]
fn a_bad_sft_row_is_named_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let good = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "4"}]}"#;
    std::fs::write(
        dir.path().join("sft.jsonl"),
        format!("{good}\n{{\"text\": \"no messages\"}}\n{good}\n"),
    )
    .unwrap();
    let body = |on_bad: &str| {
        format!(
            "name: sft\noutput_dir: {out}\nmodel: {{path: {model}}}\ndata: {{path: {out}/sft.jsonl}}\n\
             train: {{max_steps: 1, batch_size: 2, on_bad_record: {on_bad}}}\n",
            out = dir.path().display(),
            model = model.display()
        )
    };
    let config = RunConfig::load(&write_config(dir.path(), "a", &body("error"))).unwrap();
    let error = train::sft::run(&config, StartOptions::default()).unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("sft.jsonl record 2") && message.contains("messages"),
        "{message}"
    );
    let config = RunConfig::load(&write_config(dir.path(), "b", &body("skip"))).unwrap();
    train::sft::run(&config, StartOptions::default()).unwrap();
}

#[test]
fn a_task_row_without_its_answer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rows.jsonl"),
        "{\"question\": \"1+1\", \"answer\": \"2\"}\n{\"question\": \"2+2\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("task.yaml"),
        "name: t\nsource: {path: rows.jsonl}\nprompt: \"{question}\"\nanswer_field: answer\n\
         rewards: [{kind: math}]\n",
    )
    .unwrap();
    let model = tiny_model(dir.path());
    let body = format!(
        "name: r\noutput_dir: {out}\nmodel: {{path: {model}}}\ntask: {out}/task.yaml\n\
         train: {{max_steps: 1}}\nrl: {{prompts_per_step: 1, num_generations: 2, max_completion_length: 4}}\n",
        out = dir.path().display(),
        model = model.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "r", &body)).unwrap();
    let error = train::rl(&config, StartOptions::default()).unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("task.yaml record 2: no answer field `answer`"),
        "{message}"
    );
}

#[test]
fn configs_that_do_not_fit_the_model_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // A tokenizer with more tokens than the model's vocabulary.
    let words = (0..3000u32).map(|i| {
        let letters =
            |n: u32| (0..4).map(move |k| char::from(b'a' + (n / 26u32.pow(k) % 26) as u8));
        letters(i.wrapping_mul(7919))
            .chain(letters(i))
            .collect::<String>()
    });
    let big = Tokenizer::train_bpe(words, 600).unwrap();
    assert!(big.vocab_size() > 400);
    big.save(&dir.path().join("big.json")).unwrap();
    let body = format!(
        "name: v\noutput_dir: {out}\nmodel: {{path: {model}, tokenizer: {out}/big.json}}\n\
         data: {{path: {out}/none.jsonl}}\n",
        out = dir.path().display(),
        model = model.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "v", &body)).unwrap();
    let message = format!(
        "{:#}",
        train::sft::run(&config, StartOptions::default()).unwrap_err()
    );
    assert!(
        message.contains("big.json") && message.contains("vocab_size"),
        "{message}"
    );

    let task = digit_task(dir.path());
    let body = format!(
        "name: k\noutput_dir: {out}\nmodel: {{path: {model}, reference: {out}/missing}}\ntask: {task}\n\
         rl: {{beta: 0.1, num_generations: 2}}\n",
        out = dir.path().display(),
        model = model.display(),
        task = task.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "k", &body)).unwrap();
    let message = format!(
        "{:#}",
        train::rl(&config, StartOptions::default()).unwrap_err()
    );
    assert!(message.contains("model.reference"), "{message}");
}

#[test]
fn a_diverging_run_stops_and_keeps_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..100)
        .map(|i| format!("{i} plus one is {}", i + 1))
        .collect();
    std::fs::write(dir.path().join("corpus.txt"), lines.join("\n")).unwrap();
    let model = tiny_model(dir.path());
    let body = format!(
        "name: nan\noutput_dir: {out}\nmodel: {{path: {model}}}\ndata: {{path: {out}/corpus.txt, max_length: 16}}\n\
         optim: {{learning_rate: 1.0e+30, max_grad_norm: 0, lr_scheduler: constant}}\n\
         train: {{max_steps: 20, batch_size: 4, save_steps: 1, threads: 2}}\n",
        out = dir.path().display(),
        model = model.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "nan", &body)).unwrap();
    let message = format!(
        "{:#}",
        train::pretrain::run(&config, StartOptions::default()).unwrap_err()
    );
    assert!(message.contains("stopping before the update"), "{message}");
    let run = RunDir {
        dir: config.run_dir(),
    };
    let (step, last) = run
        .latest_checkpoint()
        .unwrap()
        .expect("a checkpoint was kept");
    assert!(message.contains(&last.display().to_string()), "{message}");
    assert!(step < 20);
    Model::load(&last, tch::Device::Cpu, Dtype::F32).expect("the kept checkpoint loads");
}

#[test]
fn training_logprobs_equal_the_samplers() {
    use rlvr::sample::{SamplingParams, generate};
    use rlvr::train::batch::completion_logprobs;
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(&tiny_model(dir.path()), tch::Device::Cpu, Dtype::F32).unwrap();
    let prompts: Vec<Vec<i64>> = vec![vec![5, 9, 12], vec![7], vec![3, 4, 5, 6, 8]];
    let params = SamplingParams {
        max_new_tokens: 7,
        temperature: 0.7,
        stop_token_ids: vec![10, 11, 12],
        seed: 3,
        ..SamplingParams::default()
    };
    let completions = generate(&model.transformer, &prompts, &params, None).unwrap();
    let p: Vec<&[i64]> = prompts.iter().map(Vec::as_slice).collect();
    let c: Vec<&[i64]> = completions.iter().map(|c| c.token_ids.as_slice()).collect();
    let (logprobs, _) =
        tch::no_grad(|| completion_logprobs(&model.transformer, &p, &c, 0.7)).unwrap();
    for (row, completion) in completions.iter().enumerate() {
        for (t, &expected) in completion.logprobs.iter().enumerate() {
            let got = logprobs.double_value(&[row as i64, t as i64]);
            assert!(
                (got - expected as f64).abs() < 1e-4,
                "row {row} token {t}: forward {got} vs sampler {expected}"
            );
        }
    }
}

#[test]
fn a_resume_under_a_changed_config_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let good = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "4"}]}"#;
    std::fs::write(dir.path().join("sft.jsonl"), format!("{good}\n{good}\n")).unwrap();
    let config = |lr: &str, seed: u64| {
        let body = format!(
            "name: sft\noutput_dir: {out}\nseed: {seed}\nmodel: {{path: {model}}}\n\
             data: {{path: {out}/sft.jsonl}}\noptim: {{learning_rate: {lr}}}\n\
             train: {{max_steps: 2, batch_size: 2, save_steps: 1, threads: 2}}\n",
            out = dir.path().display(),
            model = model.display()
        );
        RunConfig::load(&write_config(dir.path(), "sft", &body)).unwrap()
    };
    let resume = |allow_config_change| StartOptions {
        resume: true,
        allow_config_change,
        ..StartOptions::default()
    };
    let original = config("0.001", 3);
    train::sft::run(&original, StartOptions::default()).unwrap();
    let run_dir = original.run_dir();
    let read = |name: &str| std::fs::read_to_string(run_dir.join(name)).unwrap();
    let info: serde_json::Value = serde_json::from_str(&read("run.json")).unwrap();
    assert_eq!(info["config_sha256"].as_str().unwrap().len(), 64);
    // The same config resumes (each resume is recorded).
    train::sft::run(&original, resume(false)).unwrap();
    let before: Vec<String> = ["config.yaml", "run.json", "metrics.jsonl"]
        .iter()
        .map(|n| read(n))
        .collect();
    // A changed learning rate and seed are refused, naming both, before anything changes.
    let changed = config("0.002", 4);
    let refused = |config: &RunConfig| {
        let error = train::sft::run(config, resume(false)).unwrap_err();
        format!("{error:#}")
    };
    let message = refused(&changed);
    for expected in [
        "optim.learning_rate: 0.001 -> 0.002",
        "seed: 3 -> 4",
        "--allow-config-change",
    ] {
        assert!(message.contains(expected), "{message}");
    }
    let after: Vec<String> = ["config.yaml", "run.json", "metrics.jsonl"]
        .iter()
        .map(|n| read(n))
        .collect();
    assert_eq!(before, after, "a refused resume changed the run folder");
    // A folder from before run.json held the fingerprint is checked by its config.yaml.
    let mut old_info: serde_json::Value = serde_json::from_str(&read("run.json")).unwrap();
    old_info.as_object_mut().unwrap().remove("config_sha256");
    std::fs::write(run_dir.join("run.json"), old_info.to_string()).unwrap();
    assert!(refused(&changed).contains("optim.learning_rate: 0.001 -> 0.002"));
    train::sft::run(&original, resume(false)).unwrap();
    // Asked for, the change goes through and run.json records it.
    train::sft::run(&changed, resume(true)).unwrap();
    let info: serde_json::Value = serde_json::from_str(&read("run.json")).unwrap();
    let resumes = info["resumes"].as_array().unwrap();
    assert_eq!(resumes.len(), 3, "{info}");
    assert_eq!(resumes[2]["from_step"], 2);
    assert_eq!(
        resumes[2]["config_changes"],
        serde_json::json!(["optim.learning_rate: 0.001 -> 0.002", "seed: 3 -> 4"])
    );
    assert!(read("config.yaml").contains("learning_rate: 0.002"));
    train::sft::run(&changed, resume(false)).unwrap();
}
