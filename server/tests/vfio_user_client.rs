//! The server against an independent implementation of the protocol: the rust-vmm `vfio_user`
//! crate's `Client`.

mod common;

use std::os::fd::AsRawFd;

use common::*;
use faultline_device::abi;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_REGIONS,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::Client;

#[test]
fn client_probes_the_device() {
    let mut server = Server::start("client-probe");
    // Client::new negotiates the version, reads the device info and every region's info.
    let mut client = Client::new(&server.socket).expect("vfio_user client connects");

    for index in 0..VFIO_PCI_NUM_REGIONS {
        let r = client.region(index).expect("region listed");
        let (size, rw) = match index {
            0 => (abi::BAR0_SIZE, true),
            1 => (abi::BAR1_SIZE, true),
            7 => (256, true),
            _ => (0, false),
        };
        if index == 7 {
            assert!(r.size >= 256, "config space size {}", r.size);
        } else {
            assert_eq!(r.size, size, "region {index} size");
        }
        let flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        assert_eq!(
            r.flags & flags,
            if rw { flags } else { 0 },
            "region {index} flags"
        );
        assert!(r.file_offset.is_none(), "no region is mappable");
    }
    assert!(client.region(VFIO_PCI_NUM_REGIONS).is_none());

    let msix = client
        .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
        .expect("irq info");
    assert_eq!(msix.count, u32::from(abi::MSIX_VECTORS));
    assert_ne!(msix.flags & VFIO_IRQ_INFO_EVENTFD, 0);
    for (index, count) in [(0, 0), (1, 0), (3, 1), (4, 0)] {
        let info = client.get_irq_info(index).expect("irq info");
        assert_eq!(info.index, index);
        assert_eq!(info.count, count, "irq index {index}");
    }

    // Vendor and device id from configuration space.
    let mut id = [0u8; 4];
    client
        .region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut id)
        .expect("config read");
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), abi::PCI_VENDOR_ID);
    assert_eq!(u16::from_le_bytes([id[2], id[3]]), abi::PCI_DEVICE_ID);

    // BAR0 identification register.
    let mut magic = [0u8; 4];
    client.region_read(0, abi::REG_ID, &mut magic).unwrap();
    assert_eq!(u32::from_le_bytes(magic), abi::ID_MAGIC);

    // A register write round trip.
    client
        .region_write(0, abi::REG_WB_LO, &0x4000u32.to_le_bytes())
        .unwrap();
    let mut wb = [0u8; 4];
    client.region_read(0, abi::REG_WB_LO, &mut wb).unwrap();
    assert_eq!(u32::from_le_bytes(wb), 0x4000);

    // DMA map of a memfd, an eventfd for MSI-X vector 0, unmap, reset.
    let ram = memfd(1 << 20);
    client
        .dma_map(0, 0x1_0000_0000, 1 << 20, ram.as_raw_fd())
        .expect("dma map");
    let ev = eventfd();
    client
        .set_irqs(
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &[ev.as_raw_fd()],
        )
        .expect("set irqs");
    client.dma_unmap(0x1_0000_0000, 1 << 20).expect("dma unmap");
    client.reset().expect("reset");
    client.shutdown().unwrap();
    drop(client);

    server.assert_serves_new_client();
}
