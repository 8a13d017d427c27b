//! HF `generate()` on the same weights and batch, in a Python process (the venv of
//! `scripts/python-env.sh`) that times one run each time it is asked, so that the
//! benchmark can alternate it with rlvr's runs.

use super::{tail, tempfile_dir};
use crate::model::Model;
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

const SCRIPT: &str = r#"
import sys, time, torch
from transformers import AutoModelForCausalLM
model_dir, dtype, device = sys.argv[1], getattr(torch, sys.argv[2]), sys.argv[3]
rows, prompt_tokens, new_tokens, threads = map(int, sys.argv[4:])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
ids = torch.tensor([[(r * 31 + t * 7) % 500 + 3 for t in range(prompt_tokens)] for r in range(rows)],
                   device=device)
def run():
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, top_k=0,
                       pad_token_id=0, eos_token_id=None)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
run()  # warm-up
print("ready", flush=True)
for _ in sys.stdin:
    start = time.perf_counter(); run(); print(time.perf_counter() - start, flush=True)
"#;

/// torch's name for a dtype.
pub(super) fn torch_dtype(dtype: crate::types::Dtype) -> &'static str {
    match dtype {
        crate::types::Dtype::F32 => "float32",
        crate::types::Dtype::Bf16 => "bfloat16",
        crate::types::Dtype::F16 => "float16",
    }
}

/// torch's name for a device.
pub(super) fn torch_device(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(index) => format!("cuda:{index}"),
        _ => "cpu".into(),
    }
}

/// A Python process holding the model, ready to time `generate()`.
pub(super) struct HfGenerate {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    dir: PathBuf,
}

impl HfGenerate {
    /// Saves the model, starts Python and waits until it has loaded the model and run
    /// `generate()` once.
    pub(super) fn start(model: &Model, bench: &super::SampleBench) -> Result<Self> {
        let python = crate::cache::cache_dir().join("pyenv/bin/python");
        if !python.exists() {
            bail!("no {} (run scripts/python-env.sh)", python.display());
        }
        let dir = tempfile_dir()?;
        model.save(&dir.join("model"), None)?;
        let sizes = [
            bench.rows,
            bench.prompt_tokens,
            bench.new_tokens,
            bench.threads,
        ];
        let mut child = Command::new(&python)
            .arg("-c")
            .arg(SCRIPT)
            .arg(dir.join("model"))
            .arg(torch_dtype(bench.dtype))
            .arg(torch_device(model.vs.device()))
            .args(sizes.map(|n| n.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // A file, not a pipe: warnings could fill a pipe that nobody reads.
            .stderr(std::fs::File::create(dir.join("stderr"))?)
            .spawn()
            .context("cannot run the transformers script")?;
        let input = child.stdin.take().context("no stdin")?;
        let output = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut hf = Self {
            child,
            input,
            output,
            dir,
        };
        match hf.line()?.trim() {
            "ready" => Ok(hf),
            other => bail!("the transformers script said {other:?}"),
        }
    }

    /// Seconds of one `generate()` run.
    pub(super) fn time_one(&mut self) -> Result<f64> {
        // Let the OpenMP workers of either process go idle before the other side runs.
        std::thread::sleep(Duration::from_millis(50));
        writeln!(self.input, "run").context("the transformers script is gone")?;
        let line = self.line()?;
        let seconds = line
            .trim()
            .parse()
            .with_context(|| format!("the transformers script printed {line:?}"))?;
        std::thread::sleep(Duration::from_millis(50));
        Ok(seconds)
    }

    pub(super) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The script's next line, or its error output when it ended.
    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            let _ = self.child.wait();
            let errors = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
            bail!("transformers failed: {}", tail(&errors));
        }
        Ok(line)
    }
}

impl Drop for HfGenerate {
    fn drop(&mut self) {
        self.stop();
    }
}
