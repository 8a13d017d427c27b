//! The batched sampler on a tiny random model: batching and left padding do not change
//! greedy output, stop tokens and strings end rows, log-probs are those of the
//! temperature-scaled distribution, and a seed reproduces a run.

use rlvr::config::run::Dtype;
use rlvr::model::{Model, ModelConfig, position_ids_from_mask};
use rlvr::sample::{FinishReason, Kernels, SamplingParams, generate};
use tch::{Device, Kind, Tensor};

fn tiny() -> Model {
    let config = ModelConfig::tiny_qwen2(40, 32, 2, 4);
    let model = Model::random(&config, Device::Cpu, Dtype::F32, 3).unwrap();
    // Sharpen the random model so that greedy choices are far from ties.
    tch::no_grad(|| {
        for (_, mut v) in model.vs.variables() {
            let scaled = &v * 8.0;
            v.copy_(&scaled);
        }
    });
    model
}

/// New models start with zero biases and unit norm scales; the decoder comparisons
/// give them other values, so that they check how each side applies them.
fn vary_biases_and_norms(model: &Model) {
    tch::no_grad(|| {
        for (name, mut v) in model.vs.variables() {
            if v.dim() != 1 {
                continue;
            }
            let offset = name.len() as f64;
            let wave =
                (Tensor::arange(v.numel() as i64, (Kind::Float, Device::Cpu)) * 0.7 + offset).sin();
            let values = match name.ends_with(".bias") {
                true => wave * 0.1,
                false => wave * 0.3 + 1.0,
            };
            v.copy_(&values);
        }
    });
}

fn greedy(max_new_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens,
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

#[test]
fn batching_and_padding_do_not_change_greedy_output() {
    let model = tiny();
    let prompts = vec![vec![1, 2, 3, 4, 5, 6], vec![7, 8], vec![9, 10, 11]];
    let batched = generate(&model.transformer, &prompts, &greedy(8), None).unwrap();
    for (prompt, together) in prompts.iter().zip(&batched) {
        let alone = generate(
            &model.transformer,
            std::slice::from_ref(prompt),
            &greedy(8),
            None,
        )
        .unwrap();
        assert_eq!(alone[0].token_ids, together.token_ids, "prompt {prompt:?}");
        assert_eq!(together.token_ids.len(), 8);
        assert_eq!(together.finish_reason, FinishReason::Length);
    }
}

#[test]
fn stop_tokens_end_rows_and_finished_rows_leave_the_batch() {
    let model = tiny();
    let prompts = vec![vec![1, 2, 3], vec![7, 8, 9, 10]];
    let free = generate(&model.transformer, &prompts, &greedy(8), None).unwrap();
    // Stop row 0 at its third token; row 1 must be unaffected (unless it emits it too).
    let stop = free[0].token_ids[2];
    let params = SamplingParams {
        stop_token_ids: vec![stop],
        ..greedy(8)
    };
    let stopped = generate(&model.transformer, &prompts, &params, None).unwrap();
    let first_stop = free[0].token_ids.iter().position(|&t| t == stop).unwrap();
    assert_eq!(stopped[0].token_ids, free[0].token_ids[..=first_stop]);
    assert_eq!(stopped[0].finish_reason, FinishReason::Stop);
    let row1_cut = free[1]
        .token_ids
        .iter()
        .position(|&t| t == stop)
        .map_or(8, |p| p + 1);
    assert_eq!(stopped[1].token_ids, free[1].token_ids[..row1_cut]);
}

#[test]
fn stop_strings_use_the_decoder() {
    let model = tiny();
    let prompts = vec![vec![1, 2, 3]];
    let free = generate(&model.transformer, &prompts, &greedy(6), None).unwrap();
    let decode = |ids: &[i64]| ids.iter().map(|i| format!("<{i}>")).collect::<String>();
    let target = format!("<{}>", free[0].token_ids[1]);
    let params = SamplingParams {
        stop_strings: vec![target.clone()],
        ..greedy(6)
    };
    let stopped = generate(&model.transformer, &prompts, &params, Some(&decode)).unwrap();
    assert!(decode(&stopped[0].token_ids).ends_with(&target));
    assert_eq!(stopped[0].finish_reason, FinishReason::Stop);
    // Stop strings without a decoder are a clear error.
    assert!(generate(&model.transformer, &prompts, &params, None).is_err());
}

#[test]
fn logprobs_are_those_of_the_temperature_scaled_distribution() {
    let model = tiny();
    let prompt = vec![4i64, 5, 6];
    let params = SamplingParams {
        max_new_tokens: 6,
        temperature: 0.7,
        top_k: 5,
        seed: 9,
        ..SamplingParams::default()
    };
    let completion = &generate(
        &model.transformer,
        std::slice::from_ref(&prompt),
        &params,
        None,
    )
    .unwrap()[0];
    let all: Vec<i64> = prompt
        .iter()
        .chain(&completion.token_ids)
        .copied()
        .collect();
    let ids = Tensor::from_slice(&all).unsqueeze(0);
    let mask = ids.ones_like();
    let logits = tch::no_grad(|| {
        model
            .transformer
            .forward(&ids, &position_ids_from_mask(&mask), &mask, None)
            .unwrap()
    });
    let logprobs = (logits / 0.7).log_softmax(-1, Kind::Float).squeeze_dim(0);
    for (i, (&token, &got)) in completion
        .token_ids
        .iter()
        .zip(&completion.logprobs)
        .enumerate()
    {
        let want = logprobs.double_value(&[(prompt.len() + i - 1) as i64, token]);
        assert!(
            (want - got as f64).abs() < 1e-4,
            "token {i}: {want} vs {got}"
        );
    }
}

#[test]
fn seeds_reproduce_and_differ() {
    let model = tiny();
    let prompts = vec![vec![1, 2, 3]; 4];
    let run = |seed| {
        let params = SamplingParams {
            max_new_tokens: 10,
            seed,
            ..SamplingParams::default()
        };
        generate(&model.transformer, &prompts, &params, None)
            .unwrap()
            .into_iter()
            .map(|c| c.token_ids)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn bad_arguments_are_errors() {
    let model = tiny();
    let params = SamplingParams::default();
    let error = generate(&model.transformer, &[vec![1], vec![]], &params, None).unwrap_err();
    assert!(error.to_string().contains("prompt 1 is empty"), "{error}");
    let error = generate(&model.transformer, &[vec![1, 99]], &params, None).unwrap_err();
    assert!(error.to_string().contains("token id 99"), "{error}");
    let bad_top_p = SamplingParams {
        top_p: 0.0,
        ..SamplingParams::default()
    };
    assert!(generate(&model.transformer, &[vec![1]], &bad_top_p, None).is_err());
}

#[test]
fn the_cpu_decoder_matches_libtorch_steps() {
    // Grouped-query attention, qkv bias, an untied head, prompts of different lengths,
    // rows that stop early and enough rows to be split across sampling threads.
    let mut config = ModelConfig::tiny_qwen2(48, 32, 2, 4);
    config.num_key_value_heads = Some(2);
    config.tie_word_embeddings = false;
    let model = Model::random(&config, Device::Cpu, Dtype::F32, 5).unwrap();
    vary_biases_and_norms(&model);
    let prompts: Vec<Vec<i64>> = (0..20)
        .map(|row| {
            (0..1 + row % 7)
                .map(|t| ((row * 5 + t * 3) % 45 + 1) as i64)
                .collect()
        })
        .collect();
    for temperature in [0.0, 1.3] {
        let mut params = SamplingParams {
            max_new_tokens: 12,
            temperature,
            seed: 11,
            ..SamplingParams::default()
        };
        // Stop at the token the model emits most, so that rows finish at different steps.
        let free = generate(&model.transformer, &prompts, &params, None).unwrap();
        let mut counts = [0usize; 48];
        free.iter()
            .flat_map(|c| &c.token_ids)
            .for_each(|&t| counts[t as usize] += 1);
        let most = (0..48).max_by_key(|&t| counts[t]).unwrap();
        params.stop_token_ids = vec![most as i64];
        let fast = same_as_libtorch(&model, &prompts, &params);
        assert!(fast.iter().any(|c| c.finish_reason == FinishReason::Stop));
    }
}

#[test]
fn the_portable_decoder_refuses_a_model_it_cannot_run() {
    tch::manual_seed(4);
    let config = ModelConfig::tiny_qwen2(40, 32, 2, 4);
    let model = Model::random(&config, Device::Cpu, Dtype::F16, 0).unwrap();
    let params = SamplingParams {
        kernels: Kernels::Portable,
        ..greedy(2)
    };
    let error = generate(&model.transformer, &[vec![1, 2]], &params, None).unwrap_err();
    assert!(error.to_string().contains("f32 or bf16 model"), "{error}");
}

/// The CPU decoder reads bf16 weights in place and computes in f32: the same tokens
/// and log-probs as an f32 model holding the same (bf16-rounded) weights, sampled as
/// well as greedy. (Portable kernels: `Auto` hands bf16 to libtorch on CPUs with
/// AVX512_BF16; the AVX2 set's bf16 product has its own test in `cpu_kernels`.)
#[test]
fn bf16_weights_decode_as_their_f32_values() {
    let config = ModelConfig::tiny_qwen2(48, 32, 2, 4);
    let bf16 = Model::random(&config, Device::Cpu, Dtype::Bf16, 5).unwrap();
    let mut f32 = Model::random(&config, Device::Cpu, Dtype::F32, 0).unwrap();
    f32.vs.copy(&bf16.vs).unwrap();
    let prompts = vec![vec![1, 2, 3, 4], vec![7, 8], vec![9, 10, 11, 12, 13]];
    for temperature in [0.0, 1.0] {
        let params = SamplingParams {
            kernels: Kernels::Portable,
            temperature,
            seed: 3,
            ..greedy(10)
        };
        let ours = generate(&bf16.transformer, &prompts, &params, None).unwrap();
        let reference = generate(&f32.transformer, &prompts, &params, None).unwrap();
        assert_same(&ours, &reference, "bf16 weights", temperature);
    }
}

/// Past 32 MB of weights one decoder serves the whole batch and splits every matrix
/// product over the threads: still the tokens and log-probs of libtorch's steps.
#[test]
fn a_large_model_decodes_with_its_products_split_over_threads() {
    // 8192 × 1024 embeddings and head alone are 64 MB in f32.
    let config = ModelConfig::tiny_qwen2(8192, 1024, 1, 8);
    let model = Model::random(&config, Device::Cpu, Dtype::F32, 2).unwrap();
    let prompts = vec![vec![1, 2, 3], vec![4, 5, 6, 7, 8], vec![9]];
    same_as_libtorch(&model, &prompts, &greedy(4));
}

#[test]
fn long_prompts_fed_in_pieces_match_libtorch_steps() {
    // 1000 + 1000 + 2500 prompt tokens exceed what the CPU decoder feeds at once
    // (4096): the third prompt goes in pieces over two feeds.
    let model = Model::random(
        &ModelConfig::tiny_qwen2(48, 32, 2, 4),
        Device::Cpu,
        Dtype::F32,
        6,
    )
    .unwrap();
    vary_biases_and_norms(&model);
    let prompts: Vec<Vec<i64>> = [1000, 1000, 2500]
        .into_iter()
        .enumerate()
        .map(|(row, len)| {
            (0..len)
                .map(|t| ((row * 7 + t * 3) % 45 + 1) as i64)
                .collect()
        })
        .collect();
    same_as_libtorch(&model, &prompts, &greedy(4));
}

#[test]
fn the_cpu_decoder_matches_libtorch_steps_at_real_model_shapes() {
    // Head sizes of real models (64; 68 is not a multiple of 8), one KV head for
    // several query heads, and layer and vocabulary sizes that do not fill the
    // kernels' 16-output panels.
    for (heads, kv_heads, head_dim) in [(4, 1, 64), (2, 1, 68)] {
        let mut config = ModelConfig::tiny_qwen2(50, heads * head_dim, 2, heads);
        config.num_key_value_heads = Some(kv_heads);
        config.intermediate_size = 100;
        config.tie_word_embeddings = false;
        let model = Model::random(&config, Device::Cpu, Dtype::F32, 7).unwrap();
        vary_biases_and_norms(&model);
        let prompts: Vec<Vec<i64>> = (0..17)
            .map(|row| {
                (0..3 + row % 5)
                    .map(|t| ((row * 3 + t * 7) % 49 + 1) as i64)
                    .collect()
            })
            .collect();
        for temperature in [0.0, 0.9] {
            let params = SamplingParams {
                max_new_tokens: 9,
                temperature,
                seed: 2,
                ..SamplingParams::default()
            };
            same_as_libtorch(&model, &prompts, &params);
        }
    }
}

/// Samples with the CPU decoder's kernels, AVX2 (`Auto`) and portable, and with
/// libtorch's steps; asserts the same tokens, finish reasons and log-probs to 1e-4.
/// Returns the `Auto` completions.
fn same_as_libtorch(
    model: &Model,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
) -> Vec<rlvr::sample::Completion> {
    let with = |kernels| {
        let params = SamplingParams {
            kernels,
            ..params.clone()
        };
        generate(&model.transformer, prompts, &params, None).unwrap()
    };
    let reference = with(Kernels::Libtorch);
    let portable = with(Kernels::Portable);
    assert_same(&portable, &reference, "portable", params.temperature);
    if !avx2_here() {
        assert!(
            std::env::var("RLVR_REQUIRE_ALL").as_deref() != Ok("1"),
            "RLVR_REQUIRE_ALL=1, but this CPU lacks AVX2/FMA: Kernels::Auto runs libtorch"
        );
        println!("AVX2 decoder not compared: this CPU lacks AVX2/FMA");
    }
    let auto = with(Kernels::Auto);
    assert_same(&auto, &reference, "auto", params.temperature);
    auto
}

fn assert_same(
    fast: &[rlvr::sample::Completion],
    reference: &[rlvr::sample::Completion],
    kernels: &str,
    temperature: f64,
) {
    assert_eq!(fast.len(), reference.len());
    for (row, (a, b)) in fast.iter().zip(reference).enumerate() {
        let at = format!("{kernels} kernels, row {row} at temperature {temperature}");
        assert_eq!(a.token_ids, b.token_ids, "{at}");
        assert_eq!(a.finish_reason, b.finish_reason, "{at}");
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4, "{at}: log-prob {x} vs {y}");
        }
    }
}

/// Whether `Kernels::Auto` runs the AVX2 decoder on this CPU (else libtorch).
fn avx2_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
