//! The `externalsource-controller` binary: everything lives in the library so a third party can
//! ship its own distribution with more backends linked in.

fn main() -> std::process::ExitCode {
    externalsource_controller::main()
}
