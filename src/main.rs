use std::process::ExitCode;

const USAGE: &str = "usage: heartbeat [--version | healthcheck]
  (no argument)  run the service, configured by the environment and .env
  --version      print the version
  healthcheck    exit 0 if the instance on LISTEN answers /healthz with 200, else 1";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => heartbeat::run().map_err(|e| e.to_string()),
        ["--version" | "-V"] => {
            println!("heartbeat {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        ["healthcheck"] => heartbeat::healthcheck(),
        ["--help" | "-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            ExitCode::FAILURE
        }
    }
}
