#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pgteleport::fuzzing::batch_decoder(data));
