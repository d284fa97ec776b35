#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tern_disk::fuzzing::delta(data);
});
