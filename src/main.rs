fn main() -> std::process::ExitCode {
    adsproc::cli::main()
}
