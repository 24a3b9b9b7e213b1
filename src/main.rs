use std::process::ExitCode;

use clap::Parser;

// jemalloc, not the system's allocator: with glibc's, each idle HTTPS keep-alive connection
// left about 20 KiB resident (10,000 of them: 196 MiB); with jemalloc 18 KiB (177 MiB), and
// a request costs the proxy less CPU (scripts/bench/http). mimalloc held more (429 MiB).
// jemalloc fixes the page size when it is built: for arm64 kernels with 64 KiB pages, build
// with JEMALLOC_SYS_WITH_LG_PAGE=16.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = jitgate::cli::Cli::parse();
    match jitgate::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jitgate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
