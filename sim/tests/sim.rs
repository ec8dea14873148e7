//! The simulation itself under test: a seed replays exactly, clean runs hold
//! every invariant while the faults really happen, and each planted bug is
//! found.

use flex_sim::{run, Options, Plant};

fn opts(seed: u64, plant: Option<Plant>) -> Options {
    Options {
        seed,
        agents: 8,
        days: 8,
        plant,
        print_trace: false,
    }
}

#[test]
fn one_seed_replays_the_same_run() {
    let a = run(&opts(11, None));
    let b = run(&opts(11, None));
    let c = run(&opts(12, None));
    assert!(a.steps > 1000, "only {} steps", a.steps);
    assert_eq!((a.steps, &a.trace_hash), (b.steps, &b.trace_hash));
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn clean_runs_hold_every_invariant_under_every_fault() {
    let mut total = flex_sim::Stats::default();
    for seed in 0..4 {
        let out = run(&opts(seed, None));
        if let Some(v) = &out.violation {
            panic!(
                "seed {seed}: {} — {}\n{}",
                v.invariant,
                v.detail,
                v.trace.join("\n")
            );
        }
        total.add(&out.stats);
    }
    // The faults the invariants were checked under did happen.
    for (what, n) in [
        ("claims", total.claims),
        ("duplicated requests", total.duplicates),
        ("dropped messages", total.drops),
        ("tampered leases", total.tampered),
        ("server crashes", total.server_crashes),
        ("agent crashes", total.agent_crashes),
        ("reboots", total.reboots),
        ("suspends", total.suspends),
        ("wall clock jumps", total.wall_jumps),
        ("partitions", total.partitions),
        ("refunds", total.refunds),
    ] {
        assert!(n > 0, "no {what} in 4 seeds: {total:?}");
    }
}

/// Runs seeds from 0 until `plant` is found; returns how many it took.
fn seeds_to_find(plant: Plant, invariant: &str) -> u64 {
    for seed in 0..40 {
        if let Some(v) = run(&opts(seed, Some(plant))).violation {
            assert_eq!(v.invariant, invariant, "{plant:?}: {}", v.detail);
            eprintln!("{plant:?} found by seed {seed}: {}", v.detail);
            return seed + 1;
        }
    }
    panic!("{plant:?} not found in 40 seeds");
}

#[test]
fn a_double_charge_on_a_duplicated_claim_is_found() {
    let n = seeds_to_find(Plant::DoubleChargeOnDuplicate, "charged once");
    eprintln!("double-charge-on-duplicate: {n} seed(s)");
}

#[test]
fn an_offline_close_one_tick_early_is_found() {
    let n = seeds_to_find(Plant::OfflineCloseEarly, "offline close");
    eprintln!("offline-close-early: {n} seed(s)");
}

#[test]
fn a_refund_made_twice_is_found() {
    // The lots credited twice: the balance no longer adds up.
    let n = seeds_to_find(Plant::RefundTwice, "balance");
    eprintln!("refund-twice: {n} seed(s)");
}
