//! The fuzz targets' checks (`src/fuzzing.rs`) as proptest properties, run by CI: arbitrary
//! bytes, and valid messages and configurations with bytes flipped, cut and spliced; plus every
//! seed and every input that once failed (`fuzz/seeds`, `fuzz/regressions`).

use std::path::Path;

use proptest::prelude::*;
use wrongbook::fuzzing::{config_and_spec, json_validity, message};

fn files(dir: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_file())
                .map(|e| std::fs::read(e.path()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let seeds = files(&format!("fuzz/seeds/{target}"));
    assert!(!seeds.is_empty(), "fuzz/seeds/{target} holds seeds");
    seeds
}

/// A seed with some of its bytes changed, cut or repeated.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    (
        0..count,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..8),
    )
        .prop_map(move |(pick, edits)| {
            let mut bytes = seeds[pick].clone();
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    2 => bytes.truncate(i),
                    _ => {
                        let tail = bytes[i..].to_vec();
                        bytes.extend_from_slice(&tail);
                    }
                }
            }
            bytes
        })
}

/// JSON texts, most of them valid, some with the mistakes a scanner could let through: leading
/// zeros, bare dots and exponents, bad escapes, lone surrogates, trailing commas, missing colons.
fn nearly_json() -> impl Strategy<Value = String> {
    let number = r"-?(0|[1-9][0-9]{0,3}|0[0-9])(\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?";
    let string = r#""([a-z é]|\\["\\/bfnrtux]|\\u[0-9a-fA-F]{4}|\\u[dD][89abAB][0-9a-f]{2}|\\u[dD][c-fC-F][0-9a-f]{2}){0,6}""#;
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("fals".to_owned()),
        number,
        string,
    ];
    let separator = prop_oneof![8 => Just(","), 1 => Just(" , "), 1 => Just(",,")];
    leaf.prop_recursive(4, 32, 4, move |inner| {
        let key = r#""[a-z]{0,3}""#;
        let colon = prop_oneof![10 => Just(":"), 1 => Just(""), 1 => Just(" :\n")];
        prop_oneof![
            (
                prop::collection::vec(inner.clone(), 0..4),
                separator.clone(),
                any::<bool>()
            )
                .prop_map(|(items, sep, trailing)| {
                    let comma = if trailing && !items.is_empty() {
                        ","
                    } else {
                        ""
                    };
                    format!("[{}{comma}]", items.join(sep))
                }),
            (
                prop::collection::vec((key, colon, inner), 0..4),
                separator.clone()
            )
                .prop_map(|(entries, sep)| {
                    let entries: Vec<String> = entries
                        .into_iter()
                        .map(|(k, c, v)| format!("{k}{c}{v}"))
                        .collect();
                    format!("{{{}}}", entries.join(sep))
                }),
        ]
    })
}

#[test]
fn seeds_and_regressions_pass() {
    for input in seeds("message")
        .into_iter()
        .chain(files("fuzz/regressions/message"))
    {
        message(&input);
    }
    for input in seeds("config")
        .into_iter()
        .chain(files("fuzz/regressions/config"))
    {
        config_and_spec(&input);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_as_a_message(data in prop::collection::vec(any::<u8>(), 0..512)) {
        message(&data);
    }

    #[test]
    fn mutated_messages(data in mutated(seeds("message"))) {
        message(&data);
    }

    #[test]
    fn json_made_of_json_tokens(text in r#"([\[\]{}",:. \\/a-fnrtu0-9eE+-]|\\u[dD][89aAbBcCdDeEfF]00|true|null){0,40}"#) {
        json_validity(text.as_bytes());
    }

    #[test]
    fn json_nearly_valid(text in nearly_json()) {
        json_validity(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configurations_and_specs(data in mutated(seeds("config"))) {
        config_and_spec(&data);
    }

    #[test]
    fn arbitrary_text_as_configuration(text in "[a-z_\\[\\]=\\.\"0-9 \n]{0,200}") {
        config_and_spec(text.as_bytes());
    }
}
