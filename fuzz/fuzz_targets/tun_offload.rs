#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    netman::fuzzing::tun_offload(data);
});
