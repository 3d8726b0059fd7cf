//! Guest-written ring entries: 64-byte command-queue entries decoded as the device's worker does
//! (job rules of spec section 4, chunk orders), and 32-byte fault-ring entries.
#![no_main]

use arbitrary::Arbitrary;
use faultline_mmu::FaultEntry;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    contexts: u16,
    engines: u8,
    lanes: u16,
    command: [u8; 64],
    fault: [u8; 32],
}

fuzz_target!(|i: Input| {
    faultline_device::fuzzing::command_entry(&i.command, i.contexts, i.engines, i.lanes);
    if let Ok(Some(e)) = FaultEntry::decode(&i.fault) {
        assert_eq!(
            FaultEntry::decode(&e.encode()),
            Ok(Some(e)),
            "fault entry round trip"
        );
    }
});
