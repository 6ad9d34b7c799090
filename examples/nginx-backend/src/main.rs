//! The controller with the nginx backend linked in, next to the stock backends.

use nginx_backend as _;

fn main() -> std::process::ExitCode {
    externalsource_controller::main()
}
