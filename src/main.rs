fn main() -> std::process::ExitCode {
    rlvr::cli::main()
}
