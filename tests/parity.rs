//! Logits parity with Hugging Face transformers on tiny random Qwen2, Llama and Qwen3
//! (tied and untied) models (fixtures written by `scripts/make_parity_fixtures.py`), in
//! f32 and bf16; greedy decoding parity through every sampling path, and
//! the round trip of a checkpoint we save through transformers when a Python with it
//! is available.

mod common;

use rlvr::config::run::Dtype;
use rlvr::model::Model;
use rlvr::sample::{self, Kernels, SamplingParams};
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

/// The libtorch forward's logits for one fixture case, `dtype` as loaded, on the CPU
/// whatever device the model is on.
fn our_logits(model: &Model, case: &Value) -> Tensor {
    let device = model.vs.device();
    let ids = int_tensor(&case["input_ids"]).to_device(device);
    let mask = int_tensor(&case["attention_mask"]).to_device(device);
    let positions = int_tensor(&case["position_ids"]).to_device(device);
    tch::no_grad(|| {
        model
            .transformer
            .forward(&ids, &positions, &mask, None)
            .unwrap()
            .to_device(Device::Cpu)
    })
}

/// Largest absolute difference where the case's compare mask is set.
fn max_difference(ours: Tensor, theirs: Tensor, case: &Value) -> f64 {
    assert_eq!(ours.size(), theirs.size());
    let compare = int_tensor(&case["compare_mask"])
        .to_kind(Kind::Bool)
        .unsqueeze(-1);
    let diff = (ours - theirs)
        .abs()
        .masked_fill(&compare.logical_not(), 0.0);
    diff.max().double_value(&[])
}

/// f32 logits to 1e-4. In bf16 both sides round differently (our attention is libtorch's
/// fused kernel, theirs eager), and bf16 itself moves these log-probs by 0.05–0.09 nats
/// from f32's (the fixtures' weights are large): ours must be within 0.1 of
/// transformers' bf16 and no more than 1.25× as far from the f32 log-probs as theirs.
fn check_logits(name: &str) {
    let f32_model = Model::load(&fixture(name), Device::Cpu, Dtype::F32).unwrap();
    let bf16_model = Model::load(&fixture(name), Device::Cpu, Dtype::Bf16).unwrap();
    let expected = expected(name);
    for case in ["single", "left_padded"] {
        let case_data = &expected["cases"][case];
        let ours = our_logits(&f32_model, case_data);
        let theirs = float_tensor(&case_data["logits"]);
        let max = max_difference(ours.shallow_clone(), theirs, case_data);
        assert!(max < 1e-4, "{name}/{case}: max abs logit difference {max}");

        let f32_logprobs = ours.log_softmax(-1, Kind::Float);
        let ours = our_logits(&bf16_model, case_data).log_softmax(-1, Kind::Float);
        let theirs = float_tensor(&case_data["bf16_logprobs"]);
        let max = max_difference(ours.shallow_clone(), theirs.shallow_clone(), case_data);
        assert!(
            max < 0.1,
            "{name}/{case} bf16: max abs log-prob difference {max}"
        );
        let our_error = max_difference(ours, f32_logprobs.shallow_clone(), case_data);
        let their_error = max_difference(theirs, f32_logprobs, case_data);
        assert!(
            our_error <= 1.25 * their_error,
            "{name}/{case} bf16: {our_error} from f32, transformers' bf16 {their_error}"
        );
    }
}

/// Greedy tokens equal to transformers' `generate`, and their log-probs to 1e-4,
/// through the AVX2 CPU decoder (where the CPU has it), the portable one and libtorch.
fn check_greedy(name: &str) {
    let model = Model::load(&fixture(name), Device::Cpu, Dtype::F32).unwrap();
    let case = &expected(name)["cases"]["greedy"];
    let prompt: Vec<Vec<i64>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
    let want: Vec<Vec<i64>> = serde_json::from_value(case["new_ids"].clone()).unwrap();
    let want_logprobs: Vec<Vec<f32>> =
        serde_json::from_value(case["new_logprobs"].clone()).unwrap();
    for kernels in [Kernels::Auto, Kernels::Portable, Kernels::Libtorch] {
        let params = SamplingParams {
            max_new_tokens: want[0].len(),
            temperature: 0.0,
            kernels,
            ..SamplingParams::default()
        };
        let got = sample::generate(&model.transformer, &prompt, &params, None).unwrap();
        assert_eq!(
            got[0].token_ids, want[0],
            "{name} {kernels:?}: greedy decoding differs from transformers"
        );
        for (step, (ours, theirs)) in got[0].logprobs.iter().zip(&want_logprobs[0]).enumerate() {
            assert!(
                (ours - theirs).abs() < 1e-4,
                "{name} {kernels:?}: log-prob of step {step} is {ours}, transformers {theirs}"
            );
        }
    }
}

const FIXTURES: [&str; 4] = [
    "tiny-qwen2",
    "tiny-llama",
    "tiny-qwen3",
    "tiny-qwen3-untied",
];

#[test]
fn logits_match_transformers_in_f32_and_bf16() {
    for name in FIXTURES {
        check_logits(name);
    }
}

/// The same fixtures on a GPU (cuBLAS and CUDA attention kernels): f32 logits to 1e-4,
/// bf16 log-probs within 0.1 of transformers'. Without CUDA it says so and passes,
/// unless `RLVR_REQUIRE_CUDA=1` (set by scripts/gpu-check.sh), which makes it fail.
#[test]
fn logits_match_transformers_on_cuda() {
    if !tch::Cuda::is_available() {
        assert!(
            std::env::var("RLVR_REQUIRE_CUDA").as_deref() != Ok("1"),
            "RLVR_REQUIRE_CUDA=1 but libtorch sees no CUDA device (built with --features cuda?)"
        );
        eprintln!("no CUDA device: the GPU parity check did not run");
        return;
    }
    for name in FIXTURES {
        let expected = expected(name);
        for (dtype, bound) in [(Dtype::F32, 1e-4), (Dtype::Bf16, 0.1)] {
            let model = Model::load(&fixture(name), Device::Cuda(0), dtype).unwrap();
            for case in ["single", "left_padded"] {
                let case_data = &expected["cases"][case];
                let ours = our_logits(&model, case_data);
                let (ours, theirs) = match dtype {
                    Dtype::F32 => (ours, float_tensor(&case_data["logits"])),
                    _ => (
                        ours.log_softmax(-1, Kind::Float),
                        float_tensor(&case_data["bf16_logprobs"]),
                    ),
                };
                let max = max_difference(ours, theirs, case_data);
                assert!(max < bound, "{name}/{case} {dtype:?} on CUDA: {max}");
            }
        }
    }
}

#[test]
fn greedy_decoding_matches_transformers_generate() {
    for name in FIXTURES {
        check_greedy(name);
    }
}

#[test]
fn qwen3_has_per_head_norms_and_its_own_head_dim() {
    let model = Model::load(&fixture("tiny-qwen3"), Device::Cpu, Dtype::F32).unwrap();
    let config = &model.transformer.config;
    assert_eq!(
        (config.model_type.as_str(), config.head_dim()),
        ("qwen3", 16)
    );
    assert_ne!(
        config.head_dim(),
        config.hidden_size / config.num_attention_heads
    );
    assert!(!config.qkv_bias() && config.qk_norm());
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
        ("tiny-qwen3", Dtype::F32),
        ("tiny-qwen3-untied", Dtype::F32),
        ("tiny-qwen2", Dtype::Bf16),
        ("tiny-qwen3", Dtype::Bf16),
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
