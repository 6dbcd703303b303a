use super::*;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

const STEP: Duration = Duration::from_millis(10);

fn joined(seed: u64, n: usize) -> Sim {
    let mut sim = Sim::new(seed, n, lan_config(), NetConfig::default(), secs(2.0));
    let t = sim.run_until_pred(secs(60.0), secs(0.1), Sim::converged);
    assert!(
        t.is_some(),
        "{n} nodes did not converge in 60 s (seed {seed})"
    );
    sim
}

#[test]
fn five_nodes_join_from_one_seed() {
    let sim = joined(1, 5);
    assert!(sim.elapsed() < secs(10.0), "took {:?}", sim.elapsed());
}

#[test]
fn hundred_nodes_join_from_one_seed() {
    let sim = joined(2, 100);
    eprintln!("100 nodes converged after {:?}", sim.elapsed());
}
