//! Makes every binary, test and example find libtorch at run time without
//! LD_LIBRARY_PATH: torch-sys exports its library folder to crates that depend on
//! it directly, and we bake that folder into the executables' RPATH.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    // The default `--as-needed` link drops libtorch_cuda because no symbol of it is
    // referenced directly; CUDA kernels register themselves when it is loaded.
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
