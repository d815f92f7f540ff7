use std::process::ExitCode;

fn main() -> ExitCode {
    match heartbeat::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            ExitCode::FAILURE
        }
    }
}
