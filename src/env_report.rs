//! `rlvr env`: what this machine provides (libtorch, threads, CUDA, the sandbox modules),
//! and which build of rlvr is running.

use anyhow::{Context, Result};

pub fn print() -> Result<()> {
    let probe = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let dot = probe.dot(&probe).double_value(&[]);
    println!("libtorch:      loaded (tch 0.26 / libtorch 2.13.0), 1·1+2·2+3·3 = {dot}");
    println!("cpu threads:   {}", tch::get_num_threads());
    println!(
        "cuda:          {}",
        if tch::Cuda::is_available() {
            format!("{} device(s)", tch::Cuda::device_count())
        } else {
            "not available".into()
        }
    );
    println!("rlvr:          {}", crate::build_info::fingerprint());
    println!("cache:         {}", crate::cache::cache_dir().display());
    for name in ["python-3.12.wasm", "micropython.wasm"] {
        let path = crate::cache::wasm_module(name);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("{} is missing: run scripts/setup.sh", path.display()))?
            .len();
        println!(
            "sandbox:       {} ({:.1} MB)",
            path.display(),
            size as f64 / 1e6
        );
    }
    Ok(())
}
