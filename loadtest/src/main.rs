//! `loadtest`: parses the command line, runs one load test, prints the summary, writes the JSON
//! report, and exits 1 when any answer was lost or duplicated (2 when the run could not be made).

use std::process::ExitCode;

use clap::Parser;
use loadtest::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let json = args.json.clone();
    let report = match runtime.block_on(loadtest::run(args)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.text());
    if let Some(path) = json {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&path, bytes));
        if let Err(e) = written {
            eprintln!("loadtest: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("  report          {}", path.display());
    }
    if report.accepted == 0 {
        eprintln!("loadtest: no webhook was accepted; nothing was measured");
        return ExitCode::from(2);
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
