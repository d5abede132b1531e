//! The wmvl command line.

use std::process::ExitCode;

use wmvl::gpu::Gpu;

const USAGE: &str = "usage: wmvl <command>

commands:
  info    print the GPU adapter, backend, limits and features, and run a self-check
          (forward and double backward of a small MLP energy on the GPU vs the f64 CPU reference)

environment:
  WGPU_BACKEND       restrict backends (vulkan, metal, dx12, gl)
  WGPU_ADAPTER_NAME  pick the adapter whose name contains this text";

fn info() -> Result<(), wmvl::Error> {
    let gpu = Gpu::new()?;
    println!("{}", gpu.report());
    let t = std::time::Instant::now();
    let err = wmvl::selfcheck::run(&gpu)?;
    let ok = err < 1e-3;
    println!(
        "self-check: double backward of a score-net MLP energy (swish, tanh) vs f64 CPU: max relative error {err:.2e} [{}] ({:.0} ms)",
        if ok { "ok" } else { "FAILED" },
        t.elapsed().as_secs_f64() * 1e3
    );
    if ok {
        Ok(())
    } else {
        Err(wmvl::Error::Gpu(format!(
            "self-check error {err:.2e} exceeds 1e-3: this adapter computes wrong results"
        )))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("info") => info(),
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("wmvl: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wmvl: {e}");
            ExitCode::FAILURE
        }
    }
}
