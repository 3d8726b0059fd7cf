//! Keeps `guest-tests/include/faultline_abi.h` and `device/src/abi.rs` in agreement.

use std::collections::BTreeMap;

use faultline_device::abi::ABI_CONSTANTS;

fn header_defines() -> BTreeMap<String, u64> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guest-tests/include/faultline_abi.h"
    );
    let text = std::fs::read_to_string(path).expect("read faultline_abi.h");
    let mut defines = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#define") {
            continue;
        }
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        if !name.starts_with("FL_") || name.contains('(') {
            continue;
        }
        let digits = value.trim_end_matches(['U', 'L', 'u', 'l']);
        let parsed = match digits.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => digits.parse(),
        };
        let parsed = parsed.unwrap_or_else(|_| panic!("{name}: cannot parse value {value:?}"));
        assert!(
            defines.insert(name.to_string(), parsed).is_none(),
            "{name} defined twice"
        );
    }
    defines
}

#[test]
fn every_rust_constant_is_in_the_header_with_the_same_value() {
    let header = header_defines();
    for (name, value) in ABI_CONSTANTS {
        match header.get(*name) {
            Some(h) => assert_eq!(h, value, "{name}: header has {h:#x}, Rust has {value:#x}"),
            None => panic!("{name} = {value:#x} is missing from faultline_abi.h"),
        }
    }
}

#[test]
fn every_header_constant_is_defined_in_rust() {
    let rust: BTreeMap<_, _> = ABI_CONSTANTS.iter().map(|(n, v)| (*n, *v)).collect();
    for name in header_defines().keys() {
        assert!(
            rust.contains_key(name.as_str()),
            "{name} is in faultline_abi.h but not in abi.rs"
        );
    }
}

#[test]
fn names_are_unique() {
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in ABI_CONSTANTS {
        assert!(seen.insert(*name), "{name} listed twice in ABI_CONSTANTS");
    }
}
