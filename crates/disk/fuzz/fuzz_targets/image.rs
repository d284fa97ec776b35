//! Every image parser and the inspector on arbitrary bytes. The first byte picks the stated
//! format (0 = detect), the rest is the image.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tern_disk::fuzzing::image(data);
});
