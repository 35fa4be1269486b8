//! The fuzz targets' bodies over their checked-in corpus, on the stable toolchain: every
//! input a fuzzer kept (and every seed) still goes through without a panic. The fuzzers
//! themselves (`fuzz/`, cargo fuzz on nightly) run from the same corpus in `./scripts/test`.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        f(&data);
        n += 1;
    }
    assert!(n > 0, "{} is empty", dir.display());
}

#[test]
fn client_frames() {
    replay("client_frame", jam_gateway::fuzzing::client_frame);
}

#[test]
fn envelopes() {
    replay("envelope", jam_gateway::fuzzing::envelope);
}

#[test]
fn rest_bodies() {
    replay("rest_bodies", jam_gateway::fuzzing::rest_bodies);
}
