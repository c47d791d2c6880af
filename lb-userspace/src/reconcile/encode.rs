//! The domain in the data path's terms: the `lb_common` map keys and values the reconciler
//! writes for a [`DesiredBackend`] or a [`DesiredService`] (addresses as 16 bytes and a
//! family, ports in network order, flags).
use lb_common::{BackendAddr, BackendInfo, ServiceKey, BE_F_ACTIVE, BE_F_ESTABLISHED_OK};

use crate::{
    config::Protocol,
    dataplane::addr_bytes,
    state::{DesiredBackend, DesiredService},
};

/// How the replies of backend `b` carry it, for `protocol` (the `BACKEND_ADDRS` key).
pub fn backend_addr(b: &DesiredBackend, protocol: Protocol) -> BackendAddr {
    let (addr, family) = addr_bytes(b.key.addr);
    BackendAddr {
        addr,
        port: b.key.port.to_be_bytes(),
        proto: protocol.number(),
        family,
    }
}

/// Backend `b`'s `BACKENDS` entry: its address, port and flags.
pub fn backend_info(b: &DesiredBackend) -> BackendInfo {
    let (addr, family) = addr_bytes(b.key.addr);
    let mut flags = 0;
    if b.established_ok {
        flags |= BE_F_ESTABLISHED_OK;
    }
    if b.active {
        flags |= BE_F_ACTIVE | BE_F_ESTABLISHED_OK;
    }
    if b.shared {
        flags |= lb_common::BE_F_SHARED;
    }
    if b.redispatch {
        flags |= lb_common::BE_F_REDISPATCH;
    }
    BackendInfo {
        addr,
        port: b.key.port.to_be_bytes(),
        family,
        flags,
    }
}

/// Service `s`'s `SERVICES` key: VIP, port and protocol.
pub fn service_key(s: &DesiredService) -> ServiceKey {
    let (addr, family) = addr_bytes(s.vip);
    ServiceKey {
        addr,
        port: s.port.to_be_bytes(),
        proto: s.protocol.number(),
        family,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::BackendKey;

    fn backend(active: bool, established_ok: bool) -> DesiredBackend {
        DesiredBackend {
            id: 3,
            key: BackendKey {
                group: "g".into(),
                addr: "198.18.2.11".parse().unwrap(),
                port: 8080,
            },
            weight: 1,
            active,
            established_ok,
            member: 1,
            shared: false,
            redispatch: false,
            syn_timeout_ns: 0,
        }
    }

    #[test]
    fn backends_encode_address_port_and_flags() {
        let info = backend_info(&backend(true, false));
        assert_eq!(info.port, 8080u16.to_be_bytes());
        assert_eq!(info.addr, addr_bytes("198.18.2.11".parse().unwrap()).0);
        assert_eq!(
            info.flags,
            BE_F_ACTIVE | BE_F_ESTABLISHED_OK,
            "an active backend keeps its established flows"
        );
        assert_eq!(
            backend_info(&backend(false, true)).flags,
            BE_F_ESTABLISHED_OK
        );
        assert_eq!(backend_info(&backend(false, false)).flags, 0);
        let k = backend_addr(&backend(true, true), Protocol::Udp);
        assert_eq!((k.port, k.proto), (8080u16.to_be_bytes(), 17));
    }
}
