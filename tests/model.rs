//! The transformer on tiny random models: incremental decoding with the KV cache and
//! left padding give the same logits as a plain forward; checkpoints round-trip; bad
//! checkpoints and inputs give errors that name the file, tensor or argument.

use rlvr::config::run::Dtype;
use rlvr::model::{Model, ModelConfig, position_ids_from_mask};
use tch::{Device, Kind, Tensor};

fn tiny(tied: bool) -> Model {
    let mut config = ModelConfig::tiny_qwen2(50, 32, 2, 4);
    config.tie_word_embeddings = tied;
    Model::random(&config, Device::Cpu, Dtype::F32, 0).unwrap()
}

fn ids(rows: &[&[i64]]) -> Tensor {
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).reshape([rows.len() as i64, -1])
}

fn full_logits(model: &Model, input: &Tensor, mask: &Tensor) -> Tensor {
    let positions = position_ids_from_mask(mask);
    tch::no_grad(|| {
        model
            .transformer
            .forward(input, &positions, mask, None)
            .unwrap()
    })
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn cached_decoding_matches_full_forward() {
    let model = tiny(true);
    let input = ids(&[&[3, 7, 11, 19, 23, 29, 31, 37]]);
    let mask = Tensor::ones([1, 8], (Kind::Int64, Device::Cpu));
    let full = full_logits(&model, &input, &mask);

    let mut cache = model.transformer.new_cache();
    let mut steps = Vec::new();
    tch::no_grad(|| {
        // Prefill 5 tokens, then one token at a time.
        let prefill = model
            .transformer
            .forward(
                &input.narrow(1, 0, 5),
                &Tensor::arange(5, (Kind::Int64, Device::Cpu)).unsqueeze(0),
                &mask.narrow(1, 0, 5),
                Some(&mut cache),
            )
            .unwrap();
        steps.push(prefill);
        for t in 5..8 {
            let pos = Tensor::from_slice(&[t]).unsqueeze(0);
            let step = model
                .transformer
                .forward(
                    &input.narrow(1, t, 1),
                    &pos,
                    &mask.narrow(1, 0, t + 1),
                    Some(&mut cache),
                )
                .unwrap();
            steps.push(step);
        }
    });
    let incremental = Tensor::cat(&steps, 1);
    assert!(
        max_diff(&full, &incremental) < 1e-5,
        "diff {}",
        max_diff(&full, &incremental)
    );
    assert_eq!(cache.len(), 8);
}

#[test]
fn left_padding_does_not_change_logits() {
    let model = tiny(false);
    let alone = full_logits(
        &model,
        &ids(&[&[5, 6, 7]]),
        &Tensor::ones([1, 3], (Kind::Int64, Device::Cpu)),
    );
    let batch = ids(&[&[0, 0, 5, 6, 7], &[9, 8, 7, 6, 5]]);
    let mask = ids(&[&[0, 0, 1, 1, 1], &[1, 1, 1, 1, 1]]);
    let padded = full_logits(&model, &batch, &mask);
    let diff = max_diff(&alone.get(0), &padded.get(0).narrow(0, 2, 3));
    assert!(diff < 1e-5, "diff {diff}");
    assert!(
        !bool::try_from(padded.isnan().any()).unwrap(),
        "padding rows produced NaN"
    );
}

#[test]
fn checkpoint_round_trip_keeps_logits() {
    for tied in [true, false] {
        let model = tiny(tied);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt");
        model.save(&path, None).unwrap();
        model.save(&path, None).unwrap(); // overwriting an existing checkpoint works
        let loaded = Model::load(&path, Device::Cpu, Dtype::F32).unwrap();
        let input = ids(&[&[1, 2, 3, 4]]);
        let mask = Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
        let diff = max_diff(
            &full_logits(&model, &input, &mask),
            &full_logits(&loaded, &input, &mask),
        );
        assert_eq!(diff, 0.0, "tied={tied}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("ckpt")],
            "no staging folders left"
        );
    }
}

#[test]
fn bf16_checkpoint_loads_into_f32_and_back() {
    let model = tiny(true);
    let dir = tempfile::tempdir().unwrap();
    let bf16 = Model::load(
        &{
            model.save(&dir.path().join("f32"), None).unwrap();
            dir.path().join("f32")
        },
        Device::Cpu,
        Dtype::Bf16,
    )
    .unwrap();
    bf16.save(&dir.path().join("bf16"), None).unwrap();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("bf16/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let back = Model::load(&dir.path().join("bf16"), Device::Cpu, Dtype::F32).unwrap();
    for (_, t) in back.vs.variables() {
        assert_eq!(t.kind(), Kind::Float);
    }
    let input = ids(&[&[1, 2, 3, 4]]);
    let mask = Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
    let diff = max_diff(
        &full_logits(&model, &input, &mask),
        &full_logits(&back, &input, &mask),
    );
    assert!(diff < 0.1, "bf16 rounding moved logits by {diff}");
}

fn load_error(dir: &std::path::Path) -> String {
    match Model::load(dir, Device::Cpu, Dtype::F32) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_checkpoints_name_file_and_tensor() {
    let model = tiny(true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    model.save(&path, None).unwrap();
    let weights = path.join("model.safetensors");
    let config_path = path.join("config.json");
    let original_config = std::fs::read_to_string(&config_path).unwrap();

    // Unsupported architecture.
    std::fs::write(
        &config_path,
        original_config.replace("\"qwen2\"", "\"gpt2\""),
    )
    .unwrap();
    let error = load_error(&path);
    assert!(
        error.contains("config.json") && error.contains("`gpt2` is not supported"),
        "{error}"
    );

    // Qwen2 weights under a Qwen3 config: Qwen3 has no q/k/v biases (and the per-head
    // norms are missing); nothing is silently dropped.
    std::fs::write(
        &config_path,
        original_config.replace("\"qwen2\"", "\"qwen3\""),
    )
    .unwrap();
    let error = load_error(&path);
    assert!(
        error.contains("does not have (is model_type right?)")
            && error.contains("self_attn.q_proj.bias"),
        "{error}"
    );

    // Sliding-window layers are refused rather than computed as full attention.
    std::fs::write(
        &config_path,
        original_config.replacen('{', "{\"use_sliding_window\": true,", 1),
    )
    .unwrap();
    let error = load_error(&path);
    assert!(error.contains("sliding-window attention"), "{error}");

    // A config that does not match the weights: misshapen tensor.
    std::fs::write(
        &config_path,
        original_config.replace("\"vocab_size\": 50", "\"vocab_size\": 60"),
    )
    .unwrap();
    let error = load_error(&path);
    assert!(
        error.contains("model.safetensors") && error.contains("model.embed_tokens.weight"),
        "{error}"
    );
    assert!(
        error.contains("[50, 32]") && error.contains("[60, 32]"),
        "{error}"
    );

    // Untied config against tied weights: lm_head missing.
    std::fs::write(
        &config_path,
        original_config.replace(
            "\"tie_word_embeddings\": true",
            "\"tie_word_embeddings\": false",
        ),
    )
    .unwrap();
    let error = load_error(&path);
    assert!(
        error.contains("missing") && error.contains("lm_head.weight"),
        "{error}"
    );
    std::fs::write(&config_path, &original_config).unwrap();

    // Truncated weights file.
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let error = load_error(&path);
    assert!(
        error.contains("model.safetensors") && error.contains("truncated"),
        "{error}"
    );

    // No weights at all.
    std::fs::remove_file(&weights).unwrap();
    let error = load_error(&path);
    assert!(error.contains("no model.safetensors"), "{error}");
}

#[test]
fn out_of_range_and_empty_ids_are_errors() {
    let model = tiny(true);
    let mask = Tensor::ones([1, 2], (Kind::Int64, Device::Cpu));
    let pos = position_ids_from_mask(&mask);
    let error = model
        .transformer
        .forward(&ids(&[&[1, 50]]), &pos, &mask, None)
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("token id 50 is outside the vocabulary (0..50)"),
        "{error}"
    );
    let error = model
        .transformer
        .forward(&ids(&[&[-1, 2]]), &pos, &mask, None)
        .err()
        .unwrap();
    assert!(error.to_string().contains("token id -1"), "{error}");
    let empty = Tensor::zeros([1, 0], (Kind::Int64, Device::Cpu));
    let error = model
        .transformer
        .forward(&empty, &empty, &empty, None)
        .err()
        .unwrap();
    assert!(error.to_string().contains("empty input"), "{error}");
}

/// Every weight of a new model with a value head, by name, as bits.
fn new_weights(seed: u64) -> std::collections::BTreeMap<String, Vec<u32>> {
    let mut config = ModelConfig::tiny_qwen2(50, 32, 2, 4);
    config.tie_word_embeddings = false;
    let mut model =
        Model::random(&config.as_reward_model(), Device::Cpu, Dtype::F32, seed).unwrap();
    model.add_value_head(seed);
    model
        .vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let values = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
            (name, values.iter().map(|v| v.to_bits()).collect())
        })
        .collect()
}

#[test]
fn new_weights_depend_on_the_seed_alone_not_on_libtorchs_generator() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (started, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    let builds = std::thread::scope(|scope| {
        // Another test in the same process, reseeding and drawing all the while.
        scope.spawn(|| {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tch::manual_seed(i);
                let _ = Tensor::randn([64, 64], (Kind::Float, Device::Cpu));
                started.store(true, Ordering::Relaxed);
            }
        });
        let builders: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    // Builds overlap the reseeding only once it runs; twenty of them
                    // made the old init (tch::manual_seed + libtorch's generator) fail
                    // every time.
                    while !started.load(Ordering::Relaxed) {
                        std::thread::yield_now();
                    }
                    (0..20).map(|_| new_weights(9)).collect::<Vec<_>>()
                })
            })
            .collect();
        let builds: Vec<_> = builders
            .into_iter()
            .flat_map(|b| b.join().unwrap())
            .collect();
        stop.store(true, Ordering::Relaxed);
        builds
    });
    assert!(builds[0].contains_key("v_head.weight") && builds[0].contains_key("score.weight"));
    for (i, build) in builds.iter().enumerate().skip(1) {
        for (name, bits) in &builds[0] {
            assert!(build[name] == *bits, "build {i}: {name} differs");
        }
    }
    // Another seed gives other values to every drawn matrix (norms and biases are fixed).
    let other = new_weights(10);
    for (name, bits) in &builds[0] {
        let drawn = !name.ends_with(".bias") && !name.ends_with("norm.weight");
        assert_eq!(other[name] != *bits, drawn, "{name}");
    }
}
