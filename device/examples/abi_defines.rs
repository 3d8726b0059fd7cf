//! Prints the `#define` block of `guest-tests/include/faultline_abi.h` from the Rust definitions.
//! `tests/abi_header.rs` checks the committed header against the same table.

fn main() {
    for (name, value) in faultline_device::abi::ABI_CONSTANTS {
        let suffix = if *value > u64::from(u32::MAX) {
            "ULL"
        } else {
            "U"
        };
        println!("#define {name:<32} 0x{value:x}{suffix}");
    }
}
