#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| jam_gateway::fuzzing::rest_bodies(data));
