// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// kxdp's XDP program: decides which frames go to the dataplane's AF_XDP
// sockets. One instance per attached interface; its `cfg` map is written by
// the dataplane when it attaches.
//
//   pod interface:  every frame is the dataplane's (the pod's only way out).
//   uplink:         only IPv4/UDP to this node's VTEP address and VXLAN port
//                   from a remote node's VTEP in `vteps` (the same to the
//                   port from any other source is dropped here, counted),
//                   non-first UDP fragments to that address (they have no
//                   ports to match: the dataplane gives those of its
//                   NodePort and egress flows their first fragment's
//                   translation and the rest, the node's own, to the kernel
//                   through the host interface), TCP/UDP to a frontend in
//                   `nodeports` (a NodePort on any of the node's NodePort
//                   addresses, an external or LoadBalancer IP the underlay
//                   routes here), and egress's way back: TCP/UDP to the
//                   address's SNAT ports (61000-65535, which the node's own
//                   connections never use), ICMP echo replies to those
//                   identifiers (pods' pings, masqueraded), ICMP errors
//                   quoting SNAT ports, non-first ICMP fragments (as UDP's), and
//                   anything to the node's pod CIDR (replies from
//                   non-masquerade destinations; the dataplane checks the
//                   source). Everything else (ARP, SSH, the node's own
//                   traffic) goes to the kernel.
//
// With no socket in `xsks` for the receive queue, bpf_redirect_map falls back
// to XDP_PASS, so an attached-but-idle interface still reaches the kernel.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MODE_OFF 0
#define MODE_POD 1
#define MODE_UPLINK 2

struct kxdp_cfg {
	__u32 mode;
	__be32 vtep_ip;
	__be16 vxlan_port;
	__u16 pad;
	__be32 pod_net;
	__be32 pod_mask;
};

// The dataplane's SNAT source ports (nat.rs SNAT_PORTS), host order.
#define SNAT_MIN 61000

// ICMP's fixed header (<linux/icmp.h> drags in libc headers).
struct icmp_head {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__be16 id; // echo's identifier; an error's unused word
	__be16 seq;
};
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kxdp_cfg);
} cfg SEC(".maps");

// Queue index -> AF_XDP socket.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// Outside frontends: NodePorts on each NodePort address, external and
// LoadBalancer IPs' ports. Value unused.
struct frontend_key {
	__be32 addr;
	__u32 proto_port; // protocol << 16 | port, host order
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct frontend_key);
	__type(value, __u8);
} nodeports SEC(".maps");

// Remote nodes' VTEP addresses (network order), value unused: the only
// senders of VXLAN the uplink takes. The dataplane checks the inner source
// against the sender's pod CIDR; this only sheds strangers' frames early.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __be32);
	__type(value, __u8);
} vteps SEC(".maps");

// 0: redirected, 1: passed to the kernel, 2: VXLAN from an unknown VTEP,
// dropped.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline int count(__u32 idx, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &idx);
	if (n)
		*n += 1;
	return verdict;
}

static __always_inline int to_xsk(struct xdp_md *ctx)
{
	count(0, 0);
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

#define NOT_OURS 0
#define OURS 1
#define STRANGER 2

// ICMP to this node's address that is the dataplane's: an echo reply to an
// SNAT identifier (a pod's ping, masqueraded; a large one's first fragment
// too), a later fragment (the dataplane hands the node's own to the
// kernel), or an error (unreachable, time exceeded) about a datagram this
// node's address sent from an SNAT port: an egress flow's.
static __always_inline int icmp_ours(struct iphdr *ip, void *end,
				     const struct kxdp_cfg *c)
{
	if (ip->ihl != 5)
		return NOT_OURS;
	if (ip->frag_off & bpf_htons(0x1fff))
		return OURS;
	struct icmp_head *icmp = (void *)(ip + 1);
	if ((void *)(icmp + 1) > end)
		return NOT_OURS;
	if (icmp->type == ICMP_ECHOREPLY)
		return bpf_ntohs(icmp->id) >= SNAT_MIN ? OURS : NOT_OURS;
	if ((ip->frag_off & bpf_htons(0x2000)) ||
	    (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED))
		return NOT_OURS;
	struct iphdr *q = (void *)(icmp + 1);
	if ((void *)(q + 1) > end || q->ihl != 5 || q->saddr != c->vtep_ip ||
	    (q->protocol != IPPROTO_UDP && q->protocol != IPPROTO_TCP))
		return NOT_OURS;
	struct udphdr *ql4 = (void *)(q + 1);
	if ((void *)(ql4 + 1) > end)
		return NOT_OURS;
	return bpf_ntohs(ql4->source) >= SNAT_MIN ? OURS : NOT_OURS;
}

// TCP/UDP (first fragment or whole) to a frontend in `nodeports`.
static __always_inline int to_frontend(struct iphdr *ip, void *end)
{
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP)
		return NOT_OURS;
	if ((ip->frag_off & bpf_htons(0x1fff)) || ip->ihl < 5)
		return NOT_OURS;
	struct udphdr *l4 = (void *)ip + ip->ihl * 4;
	if ((void *)(l4 + 1) > end)
		return NOT_OURS;
	struct frontend_key key = {
		.addr = ip->daddr,
		.proto_port = (__u32)ip->protocol << 16 | bpf_ntohs(l4->dest),
	};
	return bpf_map_lookup_elem(&nodeports, &key) ? OURS : NOT_OURS;
}

static __always_inline int uplink_owns(struct xdp_md *ctx, const struct kxdp_cfg *c)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return NOT_OURS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return NOT_OURS;
	if (c->pod_mask && (ip->daddr & c->pod_mask) == c->pod_net)
		return OURS;
	if (ip->daddr != c->vtep_ip)
		return to_frontend(ip, end);
	if (ip->protocol == IPPROTO_ICMP)
		return icmp_ours(ip, end, c);
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP)
		return NOT_OURS;
	// A non-first fragment has no ports. UDP ones may be a NodePort flow's
	// (the dataplane hands the node's own to the kernel); TCP never needs
	// fragments (PMTU discovery), so the kernel keeps its own.
	if (ip->frag_off & bpf_htons(0x1fff))
		return ip->protocol == IPPROTO_UDP;
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return ip->protocol == IPPROTO_UDP; // malformed, ours to count
	// UDP and TCP both start with source and destination port.
	struct udphdr *l4 = (void *)ip + ihl;
	if ((void *)(l4 + 1) > end)
		return NOT_OURS;
	if (ip->protocol == IPPROTO_UDP && l4->dest == c->vxlan_port) {
		__be32 src = ip->saddr;
		return bpf_map_lookup_elem(&vteps, &src) ? OURS : STRANGER;
	}
	if (bpf_ntohs(l4->dest) >= SNAT_MIN)
		return OURS;
	return to_frontend(ip, end);
}

SEC("xdp")
int kxdp_xdp(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct kxdp_cfg *c = bpf_map_lookup_elem(&cfg, &zero);
	if (!c)
		return XDP_PASS;
	if (c->mode == MODE_POD)
		return to_xsk(ctx);
	if (c->mode == MODE_UPLINK) {
		int own = uplink_owns(ctx, c);
		if (own == OURS)
			return to_xsk(ctx);
		if (own == STRANGER)
			return count(2, XDP_DROP);
	}
	return count(1, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
