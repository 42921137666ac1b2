//! Every input kept under `fuzz/regressions/<target>/` (crashes the fuzzer found once,
//! and hand-made hostile inputs) replays through the same code the fuzz target runs.

#[test]
fn fuzz_regression_inputs_do_not_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (name, run) in keygate::fuzzing::TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 10, "only {replayed} regression inputs found");
}

#[test]
fn every_fuzz_target_is_registered() {
    let cargo = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"),
    )
    .unwrap();
    for (name, _) in keygate::fuzzing::TARGETS {
        assert!(
            cargo.contains(&format!("name = \"{name}\"")),
            "{name} missing from fuzz/Cargo.toml"
        );
    }
}
