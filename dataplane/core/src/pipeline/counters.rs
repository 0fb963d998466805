//! The counter table: every counter a worker keeps, declared once (as VPP's
//! `*_error.def` files do). The declaration below generates [`DropReason`]
//! (the enum, its `ALL` list and its API names) and [`Counters`] (a field per
//! event counter, the per-reason drop array, merging, and the names and
//! values the engine publishes and the API sends as `{name, value}` pairs).
//! Adding a counter is one line here plus the code that counts it.

/// Declares the drop reasons (`Variant => "api_name"`) and the event
/// counters (`field`, whose API name is the field's name).
macro_rules! counter_table {
    (
        drops { $( $(#[doc = $ddoc:literal])* $drop:ident => $dname:literal, )* }
        events { $( $(#[doc = $edoc:literal])* $event:ident, )* }
    ) => {
        /// Why a frame was dropped. Indexes the per-worker drop counters.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[doc = $ddoc])* $drop, )*
        }

        impl DropReason {
            pub const COUNT: usize = [$($dname),*].len();
            pub const ALL: [DropReason; DropReason::COUNT] = [$(DropReason::$drop),*];

            /// The snake_case name used in the API and metrics.
            pub fn name(self) -> &'static str {
                match self {
                    $( DropReason::$drop => $dname, )*
                }
            }
        }

        /// Per-worker counters: plain integers (one writer), merged off the
        /// hot path.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Counters {
            pub drops: [u64; DropReason::COUNT],
            $( $(#[doc = $edoc])* pub $event: u64, )*
        }

        impl Default for Counters {
            fn default() -> Self {
                Counters {
                    drops: [0; DropReason::COUNT],
                    $( $event: 0, )*
                }
            }
        }

        impl Counters {
            /// How many event counters there are (besides the drops).
            pub const EVENTS: usize = [$(stringify!($event)),*].len();
            /// The event counters' API names, in [`Counters::events`] order.
            pub const EVENT_NAMES: [&'static str; Counters::EVENTS] = [$(stringify!($event)),*];
            /// The event counters' doc comments ("" for none), for metrics' help.
            pub const EVENT_HELP: [&'static str; Counters::EVENTS] = [$(concat!("" $(, $edoc)*)),*];

            /// The event counters' values, in [`Counters::EVENT_NAMES`] order.
            pub fn events(&self) -> [u64; Counters::EVENTS] {
                [$(self.$event),*]
            }

            /// Sets the event counters from [`Counters::events`]' order.
            pub fn set_events(&mut self, values: [u64; Counters::EVENTS]) {
                let [$($event),*] = values;
                $( self.$event = $event; )*
            }

            /// Adds `other` into `self` (merging workers).
            pub fn merge(&mut self, other: &Counters) {
                for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
                    *a += b;
                }
                $( self.$event += other.$event; )*
            }
        }
    };
}

counter_table! {
    drops {
        /// No node config yet (before the first sync).
        NotConfigured => "not_configured",
        /// Received on a port the tables do not know (being detached).
        UnknownPort => "unknown_port",
        EthTruncated => "eth_truncated",
        /// Neither IPv4 nor ARP (IPv6, VLAN tags, ...).
        UnsupportedEthertype => "unsupported_ethertype",
        ArpMalformed => "arp_malformed",
        /// Not a request, or not for an address this node answers for.
        ArpIgnored => "arp_ignored",
        Ipv4Truncated => "ipv4_truncated",
        Ipv4BadVersion => "ipv4_bad_version",
        Ipv4BadIhl => "ipv4_bad_ihl",
        /// Total length shorter than the header.
        Ipv4BadLength => "ipv4_bad_length",
        Ipv4BadChecksum => "ipv4_bad_checksum",
        Ipv4Options => "ipv4_options",
        /// VXLAN in fragments (we send it with DF; never reassembled).
        Ipv4Fragment => "ipv4_fragment",
        /// Broadcast, multicast or unspecified addresses: not routed.
        Ipv4Martian => "ipv4_martian",
        /// A pod sent from an address that is not its own.
        SourceMismatch => "source_mismatch",
        TtlExceeded => "ttl_exceeded",
        NoRoute => "no_route",
        /// Addressed to the node itself: the host interface comes later.
        ToGateway => "to_gateway",
        /// Larger than the pod MTU (would not fit after encap).
        TooBig => "too_big",
        /// The underlay next hop's MAC is not resolved yet.
        NeighbourUnresolved => "neighbour_unresolved",
        /// A remote route but no uplink attached.
        NoUplink => "no_uplink",
        /// On the uplink but not VXLAN to this node (the XDP filter passed it).
        NotOurs => "not_ours",
        UdpMalformed => "udp_malformed",
        VxlanMalformed => "vxlan_malformed",
        VxlanBadVni => "vxlan_bad_vni",
        /// VXLAN from an underlay address that is no remote node's VTEP.
        VxlanUnknownVtep => "vxlan_unknown_vtep",
        /// VXLAN from a remote node's VTEP whose inner source is outside
        /// that node's pod CIDR.
        VxlanSpoofedSource => "vxlan_spoofed_source",
        /// Not enough headroom in the chunk to prepend headers.
        NoHeadroom => "no_headroom",
        /// A service with no ready endpoint (answered with a reset/unreachable).
        NoEndpoint => "no_endpoint",
        /// A tracked flow's backend is gone (TCP answered with a reset).
        BackendGone => "backend_gone",
        /// A non-SYN TCP segment to a service with no tracked flow.
        NoConntrack => "no_conntrack",
        /// The conntrack table is full and nothing could be evicted.
        ConntrackFull => "conntrack_full",
        /// A service packet for another worker's flow could not be handed over
        /// (that worker's queue full, or no free buffer on either side).
        HandoffFull => "handoff_full",
        /// A new service flow found every source port it tried taken on the
        /// reply side (SNAT, or a client port clash).
        NatPortsExhausted => "nat_ports_exhausted",
        /// A pod's packet to the outside that masquerade cannot translate
        /// (neither TCP, UDP nor an ICMP echo request, e.g. SCTP or an ICMP
        /// timestamp): never leaves with a pod address.
        EgressUntranslatable => "egress_untranslatable",
        /// A later fragment to a ClusterIP whose first fragment's
        /// translation this worker does not hold (out of order, expired).
        FragmentWithoutFirst => "fragment_without_first",
        /// A TCP/UDP first fragment without its whole transport header, a
        /// later one overlapping it, or one past 65,535 bytes (RFC 1858).
        FragmentMalformed => "fragment_malformed",
        /// A new flow without a local endpoint where the policy is Local:
        /// internalTrafficPolicy for anyone, externalTrafficPolicy for an
        /// outside client (as kube-proxy drops them).
        NoLocalEndpoint => "no_local_endpoint",
        /// A frame another worker handed here would be handed on again (the
        /// workers disagree on its owner, e.g. fragments of two datagrams
        /// sharing an IP id): dropped, never looped between workers.
        HandoffLoop => "handoff_loop",
        /// A new flow that the source pod's egress network policy does not
        /// allow.
        PolicyDeniedEgress => "policy_denied_egress",
        /// A new flow that the destination pod's ingress network policy does
        /// not allow.
        PolicyDeniedIngress => "policy_denied_ingress",
        /// A new flow that policy allowed but could not track: its reply key
        /// is a service flow's (the client reaches that flow's backend
        /// directly from the same port).
        PolicyFlowClash => "policy_flow_clash",
    }
    events {
        /// Frames encapsulated towards another node's VTEP.
        encapsulated,
        /// VXLAN frames from other nodes, decapsulated.
        decapsulated,
        /// Frames routed to a port of this node (pod or host).
        routed_local,
        arp_replies,
        icmp_errors_sent,
        /// ICMP errors not sent because their destination's budget was spent.
        icmp_rate_limited,
        /// ICMP errors not sent because the worker's budget for all
        /// destinations was spent.
        icmp_global_limited,
        /// TCP resets sent for services (no endpoint, backend gone).
        resets_sent,
        /// Service packets passed to the worker that owns their flow.
        handed_off,
        /// New pod flows to the outside, masqueraded (walk 7).
        egress_flows,
        /// Packets sent out the uplink to the outside (walk 7).
        egress_routed,
        /// Packets the flow cache forwarded without the full walk.
        flow_cache_hits,
        /// Frames the flow cache could have forwarded (TCP/UDP, no options,
        /// fragments, SYN, FIN or RST) but had no valid entry for: they
        /// took the walk.
        flow_cache_misses,
        /// New service flows given another source port because their reply
        /// key was taken (one client port to two frontends of one backend).
        source_ports_remapped,
        /// Later fragments given their first fragment's translation.
        fragments_translated,
        /// Fragment-table entries of live datagrams replaced (set full).
        fragments_evicted,
        /// Later fragments from the uplink with no entry, given to the
        /// node's kernel through the host port (its own datagrams).
        fragments_to_host,
        /// New flows given the reply key (an SNAT port) of a closed flow or
        /// of one unconfirmed for a second: a SYN flood that fills the SNAT
        /// ports cannot keep real clients out.
        snat_ports_reclaimed,
        /// New flows allowed by the network policy of an isolated local pod
        /// (tracked, so that their replies pass).
        policy_flows_allowed,
    }
}

impl Counters {
    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_in_order_with_a_distinct_name() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.extend(Counters::EVENT_NAMES);
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a counter name is used twice");
    }

    #[test]
    fn events_round_trip_and_merge() {
        let mut a = Counters::default();
        let values: [u64; Counters::EVENTS] = std::array::from_fn(|i| i as u64 + 1);
        a.set_events(values);
        assert_eq!(a.events(), values);
        assert_eq!(a.encapsulated, 1);
        assert_eq!(a.policy_flows_allowed, Counters::EVENTS as u64);
        let mut b = a.clone();
        b.drops[DropReason::NoRoute as usize] = 3;
        b.merge(&a);
        assert_eq!(b.events(), values.map(|v| 2 * v));
        assert_eq!(b.drop_count(DropReason::NoRoute), 3);
    }
}
