use std::fmt::Display;
use std::process::ExitCode;

const USAGE: &str = "usage: heartbeat [--version | healthcheck | acl-rule]
  (no argument)  run the service, configured by the environment and .env
  --version      print the version
  healthcheck    exit 0 if the instance on LISTEN answers /healthz with 200, else 1
  acl-rule       print the least Redis ACL rule the configured REDIS and KEY_PREFIX need";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => exit(heartbeat::run()),
        ["healthcheck"] => exit(heartbeat::healthcheck::check()),
        ["acl-rule"] => exit(heartbeat::store::redis::acl::print()),
        ["--version" | "-V"] => {
            println!("heartbeat {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The exit code for `result`, printing the error, the one place it is reported.
fn exit(result: Result<(), impl Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            ExitCode::FAILURE
        }
    }
}
