//! The sandbox's first use on a machine with no compiled module: the compile runs on
//! rayon's pool while every rayon worker asks for the same sandbox. Holding a lock
//! across that compile deadlocked a newcomer's first `make test`.
//!
//! One test in its own binary: it points RLVR_CACHE at a fresh folder, which must
//! happen before any other thread of the process reads the environment.

use rlvr::reward::sandbox::{Limits, Runtime, Sandbox};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn a_cold_compile_with_every_rayon_worker_waiting_does_not_deadlock() {
    let runtime = Runtime::MicroPython;
    let module = rlvr::cache::wasm_module(runtime.module_file());
    assert!(
        module.exists(),
        "{} is missing: run scripts/setup.sh",
        module.display()
    );
    let cache = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cache.path().join("wasm")).unwrap();
    std::fs::copy(
        &module,
        cache.path().join("wasm").join(runtime.module_file()),
    )
    .unwrap();
    // SAFETY: no other thread exists yet that could read the environment.
    unsafe { std::env::set_var("RLVR_CACHE", cache.path()) };

    let (done, results) = mpsc::channel::<Result<String, String>>();
    static GO: AtomicBool = AtomicBool::new(false);
    // Every rayon worker is busy (held until GO), then asks for the sandbox.
    let workers = {
        let done = done.clone();
        std::thread::spawn(move || {
            rayon::broadcast(|_| {
                while !GO.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let outcome = run_once(runtime);
                done.send(outcome).unwrap();
            })
        })
    };
    // A thread outside the pool gets there first and starts the compile, whose jobs
    // wait in the pool's queue while the workers are held.
    let first = std::thread::spawn(move || done.send(run_once(runtime)).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    GO.store(true, Ordering::Release);

    let expected = rayon::current_num_threads() + 1;
    for i in 0..expected {
        match results.recv_timeout(Duration::from_secs(180)) {
            Ok(outcome) => assert_eq!(outcome, Ok("4\n".to_string())),
            Err(_) => panic!(
                "deadlock: {i} of {expected} callers of Sandbox::shared returned within \
                 180 s on a cold compiled-module cache"
            ),
        }
    }
    first.join().unwrap();
    workers.join().unwrap();
    let compiled = std::fs::read_dir(cache.path().join("wasm"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .count();
    assert_eq!(
        compiled, 1,
        "the compiled module is cached for the next process"
    );
}

fn run_once(runtime: Runtime) -> Result<String, String> {
    let sandbox = Sandbox::shared(runtime).map_err(|e| e.to_string())?;
    let run = sandbox
        .run("print(2 + 2)", b"", &Limits::default())
        .map_err(|e| e.to_string())?;
    Ok(run.stdout)
}
