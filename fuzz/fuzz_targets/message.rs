//! A message through parse, validation, routing, processing and wide-row encoding.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wrongbook::fuzzing::message(data));
