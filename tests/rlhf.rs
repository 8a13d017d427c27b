//! RLHF on tiny models: a reward model learns the shipped synthetic preferences, scores
//! a task as a reward, and PPO against it raises its score while the gold reward and the
//! over-optimisation monitor are logged.

mod common;

use common::{mean, metrics, test_seed, write_config};
use rlvr::config::RunConfig;
use rlvr::config::run::Dtype;
use rlvr::model::{Model, ModelConfig};
use rlvr::tokenizer::Tokenizer;
use rlvr::train::{self, StartOptions};
use serde_json::Value;

#[test]
fn a_reward_model_learns_synthetic_preferences_and_scores_a_task() {
    let dir = tempfile::tempdir().unwrap();
    // The RLHF example's synthetic preference pairs (scripts/make_cheerful_data.py).
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks/data/cheerful/pairs.jsonl");
    let pairs: Vec<Value> = rlvr::data::read_jsonl(&shipped)
        .unwrap()
        .into_iter()
        .take(400)
        .collect();
    let text = |p: &Value, key: &str| p[key].as_str().unwrap().to_string();
    // A base model whose tokenizer knows the words (as a pretrained one would).
    let texts = pairs
        .iter()
        .flat_map(|p| [text(p, "prompt"), text(p, "chosen"), text(p, "rejected")]);
    let tokenizer = Tokenizer::train_bpe(texts, 400).unwrap();
    tokenizer.save(&dir.path().join("tokenizer.json")).unwrap();
    let base = ModelConfig::tiny_qwen2(tokenizer.vocab_size(), 32, 1, 4);
    let model = dir.path().join("base");
    Model::random(&base, tch::Device::Cpu, Dtype::F32, test_seed(0))
        .unwrap()
        .save(&model, Some(&dir.path().join("tokenizer.json")))
        .unwrap();
    let lines: Vec<String> = pairs
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
    std::fs::write(dir.path().join("pairs.jsonl"), lines.join("\n")).unwrap();
    let body = format!(
        "name: rm\noutput_dir: {out}\nseed: {seed}\nmodel: {{path: {model}}}\ndata: {{path: {out}/pairs.jsonl, max_length: 64}}\n\
         optim: {{learning_rate: 5.0e-3, lr_scheduler: constant}}\ntrain: {{max_steps: 30, batch_size: 16, threads: 2}}\n\
         rm: {{eval_fraction: 0.25, eval_steps: 10, center_rewards_coefficient: 0.01}}\n",
        out = dir.path().display(),
        seed = test_seed(0),
        model = model.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "rm", &body)).unwrap();
    let rm = train::reward_model::run(&config, StartOptions::default()).unwrap();
    // The new score head comes from the seed: the same config trains the same weights.
    let again = body.replace("name: rm\n", "name: rm-again\n");
    let config_again = RunConfig::load(&write_config(dir.path(), "rm-again", &again)).unwrap();
    let rm_again = train::reward_model::run(&config_again, StartOptions::default()).unwrap();
    let weights = |dir: &std::path::Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(
        weights(&rm) == weights(&rm_again),
        "two runs of one config differ"
    );
    let rows = metrics(&config.run_dir());
    let eval = rows.last().unwrap()["eval_accuracy"].as_f64().unwrap();
    let evals: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.get("eval_accuracy")?.as_f64())
        .collect();
    eprintln!("held-out pair accuracy every 10 steps: {evals:?}");
    assert!(eval >= 0.9, "held-out pair accuracy {eval}");
    assert!(rows[0].get("rewards/margin").is_some());
    let config_json = std::fs::read_to_string(rm.join("config.json")).unwrap();
    assert!(
        config_json.contains("ForSequenceClassification"),
        "{config_json}"
    );

    // The trained model is a reward function of a task: upbeat text scores higher.
    std::fs::write(
        dir.path().join("task.yaml"),
        format!(
            "name: t\nsource: {{generator: arithmetic, num_examples: 2}}\nprompt: \"Write a sentence about {{question}}.\"\n\
             rewards: [{{kind: reward_model, model: {}}}]\n",
            rm.display()
        ),
    )
    .unwrap();
    let task = rlvr::config::TaskConfig::load(&dir.path().join("task.yaml")).unwrap();
    let rewards = rlvr::reward::RewardSet::from_task(&task, dir.path()).unwrap();
    let record = serde_json::json!({});
    let sample = |completion| {
        rlvr::reward::Sample::new(&record, "Write a sentence about the sea.", completion, 0)
    };
    let scored = rewards.score_batch(&[
        sample("the sea is bright and lovely."),
        sample("the sea is bleak and gloomy."),
    ]);
    assert!(scored[0].total > scored[1].total, "{scored:?}");
    assert!(scored[0].per_function[0].infra_error.is_none());
    // The top of the reward model's scale: what the held-out preferred texts score.
    let preferred: Vec<_> = pairs[300..]
        .iter()
        .map(|p| {
            let (prompt, chosen) = (p["prompt"].as_str().unwrap(), p["chosen"].as_str().unwrap());
            rlvr::reward::Sample::new(&record, prompt, chosen, 0)
        })
        .collect();
    let preferred = rewards
        .score_batch(&preferred)
        .iter()
        .map(|s| s.total)
        .sum::<f64>()
        / preferred.len() as f64;

    // RL against the reward model, watched by a gold reward that is not trained on:
    // the run logs both and the monitor's flag; the gold score stays out of the total.
    std::fs::write(
        dir.path().join("rlhf.yaml"),
        format!(
            "name: rlhf\nsource: {{generator: arithmetic, num_examples: 8}}\nprompt: \"Write a sentence about {{question}}.\"\n\
             rewards:\n  - {{kind: reward_model, name: rm, model: {}}}\n  - {{kind: regex, name: short, pattern: '.{{0,12}}', gold: true}}\n",
            rm.display()
        ),
    )
    .unwrap();
    let body = format!(
        "name: rlhf\noutput_dir: {out}\nseed: {seed}\nmodel: {{path: {model}}}\ntask: {out}/rlhf.yaml\n\
         optim: {{learning_rate: 2.0e-2, lr_scheduler: constant}}\ntrain: {{max_steps: 64, batch_size: 16}}\n\
         rl: {{algorithm: ppo, prompts_per_step: 8, num_generations: 4, max_completion_length: 8, \
         ppo: {{num_ppo_epochs: 2, num_mini_batches: 2}}}}\n",
        out = dir.path().display(),
        seed = test_seed(0),
        model = model.display()
    );
    let config = RunConfig::load(&write_config(dir.path(), "rlhf-run", &body)).unwrap();
    train::rl(&config, StartOptions::default()).unwrap();
    let rows = metrics(&config.run_dir());
    // Two rollouts (of 4 updates each) at either end.
    let (first, last) = (mean(&rows[..8], "reward"), mean(&rows[56..], "reward"));
    eprintln!(
        "PPO against the reward model: reward {first:.3} → {last:.3} \
         (the preferred texts score {preferred:.3})"
    );
    // Where the base policy starts depends on the seed (its random text may already
    // read as upbeat), so the bar is a share of the room left below the preferred
    // texts' score, not a fixed gain.
    assert!(
        last > first && last - first > (preferred - first) / 3.0,
        "the reward model's score went from {first:.3} to {last:.3} (preferred texts: {preferred:.3})"
    );
    for row in rows {
        let (proxy, gold) = (
            row["overoptimization/proxy"].as_f64().unwrap(),
            row["overoptimization/gold"].as_f64().unwrap(),
        );
        let flag = row["overoptimization/flag"].as_f64().unwrap();
        assert!(flag == 0.0 || flag == 1.0);
        assert!(
            (row["reward"].as_f64().unwrap() - proxy).abs() < 1e-9,
            "gold is not trained on: {row}"
        );
        assert_eq!(row["rewards/short/mean"].as_f64(), Some(gold));
    }
}
