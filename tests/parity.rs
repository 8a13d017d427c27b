//! Logits parity with Hugging Face transformers on tiny random Qwen2 and Llama models
//! (fixtures written by `scripts/make_parity_fixtures.py`), greedy decoding parity, and
//! the round trip of a checkpoint we save through transformers when a Python with it
//! is available.

mod common;

use rlvr::config::run::Dtype;
use rlvr::model::Model;
use rlvr::sample::{self, SamplingParams};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("expected_logits.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn int_tensor(value: &Value) -> Tensor {
    let rows: Vec<Vec<i64>> = serde_json::from_value(value.clone()).unwrap();
    let width = rows[0].len() as i64;
    let flat: Vec<i64> = rows.into_iter().flatten().collect();
    Tensor::from_slice(&flat).reshape([-1, width])
}

fn float_tensor(value: &Value) -> Tensor {
    let rows: Vec<Vec<Vec<f32>>> = serde_json::from_value(value.clone()).unwrap();
    let (batch, seq) = (rows.len() as i64, rows[0].len() as i64);
    let flat: Vec<f32> = rows.into_iter().flatten().flatten().collect();
    Tensor::from_slice(&flat).reshape([batch, seq, -1])
}

fn check_logits(name: &str) {
    let model = Model::load(&fixture(name), Device::Cpu, Dtype::F32).unwrap();
    let expected = expected(name);
    for case in ["single", "left_padded"] {
        let case_data = &expected["cases"][case];
        let ids = int_tensor(&case_data["input_ids"]);
        let mask = int_tensor(&case_data["attention_mask"]);
        let positions = int_tensor(&case_data["position_ids"]);
        let compare = int_tensor(&case_data["compare_mask"])
            .to_kind(Kind::Bool)
            .unsqueeze(-1);
        let ours = tch::no_grad(|| {
            model
                .transformer
                .forward(&ids, &positions, &mask, None)
                .unwrap()
        });
        let theirs = float_tensor(&case_data["logits"]);
        assert_eq!(ours.size(), theirs.size(), "{name}/{case}");
        let diff = (ours - theirs)
            .abs()
            .masked_fill(&compare.logical_not(), 0.0);
        let max = diff.max().double_value(&[]);
        assert!(max < 1e-4, "{name}/{case}: max abs logit difference {max}");
    }
}

fn check_greedy(name: &str) {
    let model = Model::load(&fixture(name), Device::Cpu, Dtype::F32).unwrap();
    let case = &expected(name)["cases"]["greedy"];
    let prompt: Vec<Vec<i64>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
    let want: Vec<Vec<i64>> = serde_json::from_value(case["new_ids"].clone()).unwrap();
    let params = SamplingParams {
        max_new_tokens: want[0].len(),
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let got = sample::generate(&model.transformer, &prompt, &params, None).unwrap();
    assert_eq!(
        got[0].token_ids, want[0],
        "{name}: greedy decoding differs from transformers"
    );
}

#[test]
fn qwen2_logits_match_transformers() {
    check_logits("tiny-qwen2");
}

#[test]
fn llama_logits_match_transformers() {
    check_logits("tiny-llama");
}

#[test]
fn greedy_decoding_matches_transformers_generate() {
    check_greedy("tiny-qwen2");
    check_greedy("tiny-llama");
}

/// The Python of `scripts/python-env.sh`, if it has transformers.
fn transformers_python() -> Option<PathBuf> {
    let cache = rlvr::cache::cache_dir();
    let python = cache.join("pyenv/bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

const HF_LOGITS: &str = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    print(json.dumps(model(input_ids=ids).logits.tolist()))
"#;

#[test]
fn saved_checkpoint_loads_in_transformers() {
    let Some(python) = transformers_python() else {
        common::skip_unless_required(
            "saved_checkpoint_loads_in_transformers: no Python with transformers (run scripts/python-env.sh)",
        );
        return;
    };
    for (name, dtype) in [
        ("tiny-qwen2", Dtype::F32),
        ("tiny-llama", Dtype::F32),
        ("tiny-qwen2", Dtype::Bf16),
    ] {
        let model = Model::load(&fixture(name), Device::Cpu, dtype).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("saved");
        model.save(&saved, None).unwrap();
        let ids = vec![vec![5i64, 17, 33, 2, 90, 41]];
        let output = std::process::Command::new(&python)
            .args([
                "-c",
                HF_LOGITS,
                saved.to_str().unwrap(),
                &serde_json::to_string(&ids).unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: transformers failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let theirs = float_tensor(&serde_json::from_slice(&output.stdout).unwrap());
        let input = Tensor::from_slice(&ids[0]).unsqueeze(0);
        let mask = input.ones_like();
        let positions = rlvr::model::position_ids_from_mask(&mask);
        // Both sides compute in f32 on the weights as saved (bf16-rounded for bf16).
        let reloaded = Model::load(&saved, Device::Cpu, Dtype::F32).unwrap();
        let ours = tch::no_grad(|| {
            reloaded
                .transformer
                .forward(&input, &positions, &mask, None)
                .unwrap()
        });
        let max = (ours - theirs).abs().max().double_value(&[]);
        assert!(
            max < 1e-4,
            "{name} {dtype:?}: transformers' logits differ by {max}"
        );
    }
}
