//! The bitsd binary; everything is in the library (`bitsd::main`), which tests start in process.

fn main() -> std::process::ExitCode {
    bitsd::main()
}
