//! `flex-sim`: runs seeds of the deterministic simulation and reports each
//! seed that broke an invariant.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use flex_sim::{run, Options, Plant};

#[derive(Parser)]
#[command(
    name = "flex-sim",
    about = "Deterministic simulation of agents and server under faults"
)]
struct Cli {
    /// How many seeds to run (seeds first, first+1, …).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Workstations per run.
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Simulated days per run.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Plant a known bug: double-charge-on-duplicate, refund-twice or offline-close-early.
    #[arg(long)]
    plant: Option<Plant>,
    /// Print one line per seed, with its trace hash and what it went through.
    #[arg(long)]
    verbose: bool,
    /// Print every step of every seed to stderr (with --first and --seeds 1
    /// to study one run).
    #[arg(long)]
    trace: bool,
    /// Seeds run at once, on threads of their own (default: one per core;
    /// 1 with --trace, so the steps of runs do not interleave). Each seed is
    /// a world of its own, so the result of a seed does not depend on it.
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.agents < 2 {
        eprintln!(
            "error: --agents {} is too few: use at least 2 (users share machines)",
            cli.agents
        );
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let jobs = match (cli.trace, cli.jobs) {
        (true, _) => 1,
        (false, Some(n)) => n.max(1),
        (false, None) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let seeds: Vec<u64> = (cli.first..cli.first + cli.seeds).collect();
    let outcomes = run_all(&seeds, jobs, |seed| {
        run(&Options {
            seed,
            agents: cli.agents,
            days: cli.days,
            plant: cli.plant,
            print_trace: cli.trace,
        })
    });
    let mut violations = 0u64;
    // In seed order, whatever order they finished in.
    for (seed, out) in seeds.iter().zip(outcomes) {
        if cli.verbose {
            println!(
                "seed {seed}: {} steps, trace {} {:?}",
                out.steps,
                &out.trace_hash[..16],
                out.stats
            );
        }
        if let Some(v) = out.violation {
            violations += 1;
            println!(
                "seed {seed}: {} violated at {} (step {}): {} | trace: {}",
                v.invariant,
                v.at.format("%Y-%m-%d %H:%M:%S"),
                v.step,
                v.detail,
                v.trace.join(" ; ")
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{:.1} s, {:.2} seeds/s ({} agents, {} days, {jobs} at once)",
        secs,
        cli.seeds as f64 / secs,
        cli.agents,
        cli.days
    );
    println!("{} seeds, {violations} violations", cli.seeds);
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `f` for every seed on `jobs` threads, each taking the next seed not yet
/// taken; the outcomes in the order of `seeds`.
fn run_all<T: Send>(seeds: &[u64], jobs: usize, f: impl Fn(u64) -> T + Sync) -> Vec<T> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<T>>> = Mutex::new(seeds.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(seeds.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { return };
                let out = f(seed);
                done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(out);
            });
        }
    });
    done.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|o| o.expect("every seed ran"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_come_in_seed_order_however_many_run_at_once() {
        let seeds: Vec<u64> = (10..30).collect();
        // Later seeds finish first: the order is the seeds', not the finish's.
        let slow_first = |seed: u64| {
            std::thread::sleep(std::time::Duration::from_millis(30 - seed));
            seed * 2
        };
        let want: Vec<u64> = seeds.iter().map(|s| s * 2).collect();
        for jobs in [1, 3, 64] {
            assert_eq!(run_all(&seeds, jobs, slow_first), want, "{jobs} jobs");
        }
        // A real seed gives the same outcome alone and beside others.
        let opts = |seed| Options {
            seed,
            agents: 2,
            days: 1,
            plant: None,
            print_trace: false,
        };
        let alone = run(&opts(7)).trace_hash;
        let beside = run_all(&[6, 7, 8], 3, |s| run(&opts(s)).trace_hash);
        assert_eq!(beside[1], alone);
    }
}
