#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pgteleport::fuzzing::config_parser(data));
