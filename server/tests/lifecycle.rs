//! Process lifecycle: signals, the socket file, the one-client policy, bad command lines.

mod common;

use std::os::unix::net::UnixListener;
use std::process::Command;

use common::*;

#[test]
fn sigterm_and_sigint_stop_cleanly_and_remove_the_socket() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut server = Server::start("stop");
        // With a client connected and set up.
        let mut c = server.connect();
        c.negotiate();
        let ram = memfd(1 << 20);
        c.dma_map(
            0x10_0000,
            1 << 20,
            Some(std::os::fd::AsRawFd::as_raw_fd(&ram)),
        )
        .unwrap();
        let st = server.stop(sig);
        assert!(st.success(), "exit status {st}:\n{}", server.log_text());
        assert!(!server.socket.exists(), "socket file removed");
        let log = server.log_text();
        assert!(log.contains("shutting down"), "{log}");
        assert!(
            log.contains("client session ended"),
            "device stats logged:\n{log}"
        );
        c.expect_closed();
    }
}

#[test]
fn sigusr1_logs_device_stats() {
    let mut server = Server::start("usr1");
    let mut c = server.connect();
    c.negotiate();
    server.signal(libc::SIGUSR1);
    assert!(
        wait_until(TIMEOUT, || server
            .log_text()
            .contains("device stats: commands=")),
        "no stats line:\n{}",
        server.log_text()
    );
    drop(c);
    server.assert_serves_new_client();
}

#[test]
fn stale_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let path = dir.0.join("gpu.sock");
    // A socket file nobody listens on.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut server = Server::start_at(dir, path, &[]);
    server.assert_serves_new_client();
    assert!(server.log_text().contains("removing stale socket"));
}

#[test]
fn live_socket_is_not_taken_over() {
    let mut server = Server::start("in-use");
    let log = server.dir.0.join("second.log");
    let mut second = spawn(&server.socket, &log, &[]);
    let st = wait_child(&mut second, TIMEOUT).expect("second server exits");
    assert!(!st.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("already in use"), "{text}");
    // The first server still owns the socket.
    server.assert_serves_new_client();
}

#[test]
fn non_socket_path_is_left_alone() {
    let dir = TempDir::new("file");
    let path = dir.0.join("not-a-socket");
    std::fs::write(&path, b"data").unwrap();
    let log = dir.0.join("log");
    let mut child = spawn(&path, &log, &[]);
    let st = wait_child(&mut child, TIMEOUT).expect("server exits");
    assert!(!st.success());
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("not a socket"));
}

#[test]
fn bad_device_configuration_is_refused_at_startup() {
    let dir = TempDir::new("config");
    let path = dir.0.join("gpu.sock");
    let log = dir.0.join("log");
    let mut child = spawn(&path, &log, &["--engines", "0"]);
    let st = wait_child(&mut child, TIMEOUT).expect("server exits");
    assert_eq!(
        st.code(),
        Some(2),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(!path.exists());
    let out = Command::new(env!("CARGO_BIN_EXE_faultline-server"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "--socket is required");
}

#[test]
fn configuration_is_checked_without_building_a_device() {
    let mut server = Server::start("config-check");
    // Listening, and no device exists until a client connects.
    assert!(
        !server.log_text().contains("faultline device created"),
        "a device was built before any client:\n{}",
        server.log_text()
    );
    server.assert_serves_new_client();
    assert!(server.log_text().contains("faultline device created"));
}

#[test]
fn one_client_at_a_time() {
    let mut server = Server::start("one-client");
    let mut first = server.connect();
    first.negotiate();
    // The second waits its turn: connected, but not served yet.
    let mut second = server.connect();
    let v = version_payload(0, 0, QEMU_CAPS);
    let id = second.send(VERSION, 0, &v, &[]);
    // A third is closed at once.
    let mut third = server.connect();
    third.expect_closed();
    assert!(server.log_text().contains("client rejected"));
    // The first still works; when it leaves, the second is served.
    first
        .call(DEVICE_GET_INFO, &info_req(16))
        .expect("first client served");
    drop(first);
    let r = second.recv();
    assert_eq!(r.id, id);
    assert_eq!(r.flags, REPLY, "second client's VERSION answered");
    drop(second);
    server.assert_serves_new_client();
}

#[test]
fn inherited_listening_socket() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("fd");
    let path = dir.0.join("inherited.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let log = dir.0.join("log");
    let logf = std::fs::File::create(&log).unwrap();
    let lfd = listener.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faultline-server"));
    cmd.args(["--fd", "3", "-v"])
        .stdin(std::process::Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
    // SAFETY: dup2 and fcntl are async-signal-safe; they give the child the listener as fd 3
    // without close-on-exec (dup2 onto itself would keep the flag, hence fcntl then).
    unsafe {
        cmd.pre_exec(move || {
            let rc = if lfd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(lfd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let mut c = Raw::connect(&path);
    c.negotiate();
    c.call(DEVICE_GET_INFO, &info_req(16))
        .expect("served over the inherited socket");
    drop(c);
    // SAFETY: kill() with our child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let st = wait_child(&mut child, TIMEOUT).expect("server exits");
    assert!(st.success(), "{}", std::fs::read_to_string(&log).unwrap());
    // The creator of an inherited socket owns its file.
    assert!(path.exists());

    // An fd that is not a listening socket is refused.
    let log2 = dir.0.join("log2");
    let out = Command::new(env!("CARGO_BIN_EXE_faultline-server"))
        .args(["--fd", "0"])
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log2).unwrap())
        .status()
        .unwrap();
    assert!(!out.success());
    assert!(std::fs::read_to_string(&log2)
        .unwrap()
        .contains("not a listening"));
}

#[test]
fn record_writes_every_received_message() {
    let dir = TempDir::new("record");
    let rec = dir.0.join("rec");
    let socket = dir.0.join("gpu.sock");
    let rec_arg = rec.to_str().unwrap().to_string();
    let mut server = Server::start_at(dir, socket, &["--record", &rec_arg]);
    let mut c = server.connect();
    let version = version_payload(0, 0, QEMU_CAPS);
    let id = c.next_id();
    let mut sent = message(id, VERSION, 0, &version);
    c.send_bytes(&sent.clone(), &[]);
    c.recv();
    for _ in 0..70 {
        let m = message(c.next_id(), DEVICE_GET_INFO, 0, &info_req(16));
        c.send_bytes(&m, &[]);
        c.recv();
        sent.extend_from_slice(&m);
    }
    drop(c);
    server.assert_serves_new_client();
    // 71 messages: a full part of 64 and a second one, concatenated they are the stream sent.
    let mut got = std::fs::read(rec.join("conn0-00000.bin")).expect("first part");
    got.extend(std::fs::read(rec.join("conn0-00001.bin")).expect("second part"));
    assert_eq!(got, sent);
    assert!(
        rec.join("conn1-00000.bin").exists(),
        "the next connection is recorded too"
    );
}
