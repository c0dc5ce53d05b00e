fn main() -> std::process::ExitCode {
    tillwatch::run_cli()
}
