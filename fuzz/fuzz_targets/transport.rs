#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netman_proto::fuzzing::transport(
    std::time::Instant::now(),
    data
));
