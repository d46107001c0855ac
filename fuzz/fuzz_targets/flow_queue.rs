#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    netman::fuzzing::flow_queue(data);
});
