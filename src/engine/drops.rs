//! Packets the data plane itself loses (TUN and UDP I/O), counted by
//! reason next to the protocol core's `DropReason` counters: `status
//! --output json` and the metrics endpoint list every reason of both, zeros
//! included. The labels are stable snake_case names (documented in
//! docs/engine.md); none of them collides with a protocol-core label.

macro_rules! io_drop_reasons {
    ($($(#[$doc:meta])* $name:ident => $label:literal,)*) => {
        /// Why the data plane lost a packet outside the protocol core.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum IoDropReason {
            $($(#[$doc])* $name,)*
        }

        impl IoDropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [IoDropReason] = &[$(IoDropReason::$name,)*];

            /// Stable snake_case label (status JSON, metrics).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(IoDropReason::$name => $label,)*
                }
            }
        }
    };
}

io_drop_reasons! {
    /// A TUN read failed after the kernel had taken the packet off the
    /// queue (not "would block", not a detached device).
    TunReadError => "tun_read_error",
    /// A TUN read whose virtio-net header or packet headers do not allow
    /// it to be split (unknown GSO type, truncated headers, ...).
    TunBadPacket => "tun_bad_packet",
    /// Decrypted packets handed to a TUN write that failed.
    TunWriteError => "tun_write_error",
    /// Datagrams the kernel refused to send (unreachable, no buffer space
    /// after waiting, ...).
    UdpSendError => "udp_send_error",
    /// Datagrams for an IPv6 endpoint while the engine has no IPv6 socket.
    NoIpv6Socket => "no_ipv6_socket",
    /// TUN reads dropped by the engine's flow queue (CoDel, see
    /// `engine::fq`): their flow's packets kept waiting longer than the
    /// target for a whole interval (a super-packet counts once).
    QueueDelay => "tun_queue_delay",
    /// TUN reads dropped because the flow queue held its memory limit:
    /// from the flow holding the most bytes (a super-packet counts once).
    QueueFull => "tun_queue_full",
}

/// Counters of [`IoDropReason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoDrops([u64; IoDropReason::ALL.len()]);

impl IoDrops {
    pub fn add(&mut self, reason: IoDropReason, n: usize) {
        if let Some(c) = self.0.get_mut(reason as usize) {
            *c = c.saturating_add(n as u64);
        }
    }

    pub fn get(&self, reason: IoDropReason) -> u64 {
        self.0.get(reason as usize).copied().unwrap_or(0)
    }

    /// `(reason, count)` for every reason.
    pub fn iter(&self) -> impl Iterator<Item = (IoDropReason, u64)> + '_ {
        IoDropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netman_proto::DropReason;

    #[test]
    fn labels_are_unique_snake_case_and_distinct_from_the_core() {
        let mut seen = std::collections::BTreeSet::new();
        for r in IoDropReason::ALL {
            let l = r.as_str();
            assert!(
                l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{l}"
            );
            assert!(seen.insert(l), "duplicate label {l}");
        }
        for r in DropReason::ALL {
            assert!(
                !seen.contains(r.as_str()),
                "{} is also a core label",
                r.as_str()
            );
        }
    }

    #[test]
    fn counters_add_per_reason() {
        let mut d = IoDrops::default();
        d.add(IoDropReason::UdpSendError, 3);
        d.add(IoDropReason::UdpSendError, 2);
        d.add(IoDropReason::NoIpv6Socket, 1);
        assert_eq!(d.get(IoDropReason::UdpSendError), 5);
        assert_eq!(d.get(IoDropReason::NoIpv6Socket), 1);
        assert_eq!(d.get(IoDropReason::TunReadError), 0);
        assert_eq!(d.iter().count(), IoDropReason::ALL.len());
    }
}
