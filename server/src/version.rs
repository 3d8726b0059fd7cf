//! VERSION negotiation: parses the client's proposal and builds the reply.
//!
//! Rules (vfio-user spec, checked against QEMU 11.1's client):
//! - the reply's major equals the proposed one (only 0 exists; anything else closes the
//!   connection), its minor is 0 (never above the proposed minor);
//! - the JSON is UTF-8, NUL-terminated, an object; `capabilities`, if present, an object whose
//!   known members have the right types;
//! - the reply's capabilities are a subset of those proposed, and the whole reply is never larger
//!   than the request (QEMU receives it into the request's buffer): optional capabilities are
//!   dropped, least useful first, until it fits.

use serde_json::{Map, Value};

use crate::error::RequestError;
use crate::protocol::{Put, Reader, DMA_PGSIZE, MAX_DATA_XFER_SIZE, MAX_MSG_FDS};

/// Protocol major version the server speaks.
pub const MAJOR: u16 = 0;
/// Protocol minor version the server speaks.
pub const MINOR: u16 = 0;

/// What the client said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCaps {
    /// Proposed major version.
    pub major: u16,
    /// Proposed minor version.
    pub minor: u16,
    /// Most fds the client accepts per message (default 1).
    pub max_msg_fds: u64,
    /// Largest transfer the client accepts (default 1 MiB).
    pub max_data_xfer_size: u64,
    /// Whether the client can send REGION_WRITE_MULTI.
    pub write_multiple: bool,
    /// Names of the capabilities the client proposed (the reply may only use these).
    pub proposed: Vec<String>,
    /// Size of the JSON including its NUL, 0 if the client sent none.
    pub json_len: usize,
}

/// Parses a VERSION payload (major, minor, optional NUL-terminated JSON).
///
/// Errors are [`RequestError::Invalid`] (EINVAL); the major version is not checked here.
pub fn parse_request(payload: &[u8]) -> Result<ClientCaps, RequestError> {
    let mut r = Reader::new(payload);
    let (Some(major), Some(minor)) = (r.u16(), r.u16()) else {
        return Err(RequestError::BadSize {
            what: "VERSION",
            len: payload.len(),
            expected: "at least 4 bytes",
        });
    };
    let mut caps = ClientCaps {
        major,
        minor,
        max_msg_fds: 1,
        max_data_xfer_size: u64::from(MAX_DATA_XFER_SIZE),
        write_multiple: false,
        proposed: Vec::new(),
        json_len: 0,
    };
    let json = r.rest();
    if json.is_empty() {
        return Ok(caps);
    }
    caps.json_len = json.len();
    let Some((&0, text)) = json.split_last() else {
        return Err(RequestError::invalid("version data is not NUL-terminated"));
    };
    if text.contains(&0) {
        return Err(RequestError::invalid(
            "version data contains a NUL before its end",
        ));
    }
    let value: Value = serde_json::from_slice(text)
        .map_err(|e| RequestError::invalid(format!("version data is not valid JSON: {e}")))?;
    let Value::Object(top) = value else {
        return Err(RequestError::invalid("version data is not a JSON object"));
    };
    let Some(c) = top.get("capabilities") else {
        return Ok(caps);
    };
    let Value::Object(c) = c else {
        return Err(RequestError::invalid("\"capabilities\" is not an object"));
    };
    for (name, v) in c {
        match name.as_str() {
            "max_msg_fds" => caps.max_msg_fds = uint(name, v)?,
            "max_data_xfer_size" => caps.max_data_xfer_size = uint(name, v)?,
            "max_dma_maps" => {
                uint(name, v)?;
            }
            "pgsizes" => {
                let p = uint(name, v)?;
                if p & DMA_PGSIZE == 0 {
                    return Err(RequestError::invalid(format!(
                        "pgsizes {p:#x} does not include the server's 4 KiB pages"
                    )));
                }
            }
            "write_multiple" => {
                caps.write_multiple = v
                    .as_bool()
                    .ok_or_else(|| RequestError::invalid("\"write_multiple\" is not a boolean"))?
            }
            "migration" | "twin_socket" => {
                if !v.is_object() {
                    return Err(RequestError::invalid(format!(
                        "\"{name}\" is not an object"
                    )));
                }
            }
            other => log::debug!("VERSION: ignoring unknown capability {other:?}"),
        }
        caps.proposed.push(name.clone());
    }
    Ok(caps)
}

fn uint(name: &str, v: &Value) -> Result<u64, RequestError> {
    v.as_u64()
        .ok_or_else(|| RequestError::invalid(format!("\"{name}\" is not an unsigned integer")))
}

/// Builds the VERSION reply payload (major, minor, JSON with NUL) for a request whose payload
/// was `request_len` bytes, advertising `max_dma_maps`. The result is never longer than
/// `request_len`.
pub fn build_reply(client: &ClientCaps, request_len: usize, max_dma_maps: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_u16(MAJOR);
    out.put_u16(MINOR);
    if client.json_len == 0 {
        // No JSON in the request, none in the reply: same size as the request.
        return out;
    }
    let budget = request_len.saturating_sub(4);

    // Candidates in the order they are dropped when the reply would be too large: first those
    // equal to the protocol defaults, then the optional feature, then the limits.
    let ours: [(&str, Value); 5] = [
        ("max_data_xfer_size", Value::from(MAX_DATA_XFER_SIZE)),
        ("pgsizes", Value::from(DMA_PGSIZE)),
        ("write_multiple", Value::from(client.write_multiple)),
        ("max_msg_fds", Value::from(MAX_MSG_FDS as u64)),
        ("max_dma_maps", Value::from(max_dma_maps as u64)),
    ];
    let mut kept: Vec<&(&str, Value)> = ours
        .iter()
        .filter(|(n, _)| client.proposed.iter().any(|p| p == n))
        .collect();
    loop {
        let mut m = Map::new();
        for (n, v) in &kept {
            m.insert((*n).to_string(), v.clone());
        }
        let mut top = Map::new();
        top.insert("capabilities".to_string(), Value::Object(m));
        let text = Value::Object(top).to_string();
        if text.len() < budget {
            out.extend_from_slice(text.as_bytes());
            out.push(0);
            return out;
        }
        if kept.is_empty() {
            break;
        }
        kept.remove(0);
    }
    // A valid request object is at least "{}\0", so this always fits.
    out.extend_from_slice(b"{}\0");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(major: u16, minor: u16, json: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.put_u16(major);
        p.put_u16(minor);
        p.extend_from_slice(json);
        p
    }

    const QEMU: &[u8] = b"{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576,\"pgsizes\":4096,\"max_dma_maps\":65535,\"migration\":{\"pgsize\":4096,\"max_bitmap_size\":268435456},\"write_multiple\":true}}\0";

    #[test]
    fn qemu_proposal() {
        let p = payload(0, 0, QEMU);
        let c = parse_request(&p).unwrap();
        assert_eq!(c.max_msg_fds, 16);
        assert!(c.write_multiple);
        let r = build_reply(&c, p.len(), 1024);
        assert!(r.len() <= p.len());
        assert_eq!(*r.last().unwrap(), 0);
        let v: Value = serde_json::from_slice(&r[4..r.len() - 1]).unwrap();
        let caps = &v["capabilities"];
        assert_eq!(caps["max_msg_fds"], MAX_MSG_FDS as u64);
        assert_eq!(caps["write_multiple"], true);
        assert!(caps.get("migration").is_none());
    }

    #[test]
    fn reply_shrinks_to_fit() {
        let json = b"{\"capabilities\":{\"max_msg_fds\":1,\"pgsizes\":4096,\"max_dma_maps\":9,\"write_multiple\":true}}\0";
        let p = payload(0, 0, json);
        let c = parse_request(&p).unwrap();
        for len in [p.len(), 40, 30, 25, 7] {
            let r = build_reply(&c, len, 1024);
            assert!(r.len() <= len.max(7), "{len}: {}", r.len());
            assert_eq!(*r.last().unwrap(), 0);
            let _: Value = serde_json::from_slice(&r[4..r.len() - 1]).unwrap();
        }
    }

    #[test]
    fn only_proposed_capabilities() {
        let p = payload(0, 1, b"{\"capabilities\":{\"max_msg_fds\":1}}\0");
        let c = parse_request(&p).unwrap();
        let r = build_reply(&c, p.len(), 1024);
        let v: Value = serde_json::from_slice(&r[4..r.len() - 1]).unwrap();
        assert_eq!(v["capabilities"].as_object().unwrap().len(), 1);
    }

    #[test]
    fn no_json() {
        let p = payload(0, 0, b"");
        let c = parse_request(&p).unwrap();
        assert_eq!(build_reply(&c, p.len(), 1024).len(), 4);
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"{\"capabilities\":{}}"[..],
            b"not json\0",
            b"[1,2]\0",
            b"{\"capabilities\":3}\0",
            b"{\"capabilities\":{\"max_msg_fds\":-1}}\0",
            b"{\"capabilities\":{\"pgsizes\":8192}}\0",
            b"{\"capabilities\":{\"write_multiple\":1}}\0",
            b"{}\0{}\0",
            b"\xff\xfe\0",
            b"\0",
        ] {
            let p = payload(0, 0, bad);
            let e = parse_request(&p).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "{bad:?}");
        }
        assert!(parse_request(&[0, 0, 0]).is_err());
    }
}
