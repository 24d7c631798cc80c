//! Configuration and dataflow-spec text through their loaders.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wrongbook::fuzzing::config_and_spec(data));
