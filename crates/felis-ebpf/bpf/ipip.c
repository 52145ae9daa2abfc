// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only)
//
// Felis IPIP on tc, for kernels without the ipip module. Wire-compatible with the kernel's
// tunl0 (RFC 2003 IP in IP): a 20-byte outer IPv4 header, protocol 4, no options.
//
//   egress (host interface)                      ingress (host interface)
//   ┌──────┬──────────────┐                      ┌──────┬──────────┬──────────────┐
//   │ eth  │ inner IPv4 … │  ── encapsulate ──►  │ eth  │ outer IP │ inner IPv4 … │
//   └──────┴──────────────┘  ◄── decapsulate ──  └──────┴──────────┴──────────────┘
//
// Egress: an IPv4 packet whose destination matches the `tunnels` LPM trie (inner prefix →
// remote node address) gets an outer header: source = config.local, destination = the trie's
// value, TTL 64, DF copied from the inner header, ECN encapsulated as RFC 6040 (the kernel's
// INET_ECN_encapsulate), DSCP 0 (tunl0's default `tos 0`). The L2 header is kept: the route's
// next hop already chose the right MAC.
//
// Ingress: a protocol-4 packet to config.local from an address in `peers` loses its outer
// header and continues up the stack as the inner packet. Protocol-4 packets to config.local
// from anyone else are dropped (as Calico's "only IPIP from known hosts" rule does); outer
// fragments are passed untouched (the stack has no ipip handler and will drop them).
//
// Built by build.rs with `clang -O2 -g -target bpf`; loaded by aya (felis-ebpf's src/tc.rs).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// Linux 6.3+ (include/uapi/linux/bpf.h); absent from older userspace headers.
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif

#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define OUTER_TTL 64
#define ECN_MASK 0x3
#define ECN_ECT_0 0x2
#define ECN_CE 0x3

// Keys of the `config` array.
#define CONFIG_LOCAL 0

// Indexes of the `stats` array (kept in step with src/tc.rs `Stat`).
#define STAT_ENCAP 0
#define STAT_ENCAP_FAILED 1
#define STAT_DECAP 2
#define STAT_DECAP_FAILED 3
#define STAT_UNKNOWN_PEER 4
#define STAT_FRAGMENT 5
#define STAT_MALFORMED 6
#define STAT_COUNT 8

struct lpm_v4_key {
	__u32 prefixlen;
	__u32 addr; // network byte order
};

// Inner destination prefix → outer destination (the remote node's address), network order;
// 0 means "do not encapsulate" (a more specific direct route inside a tunnelled prefix).
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v4_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} tunnels SEC(".maps");

// Node addresses IPIP is accepted from (network order) → 1.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 16384);
} peers SEC(".maps");

// [CONFIG_LOCAL] = this host's address (network order); 0 = not configured, pass everything.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 4);
} config SEC(".maps");

// Packet counters, per CPU.
#include "stats.h"

static __always_inline __u32 local_address(void)
{
	__u32 key = CONFIG_LOCAL;
	__u32 *value = bpf_map_lookup_elem(&config, &key);
	return value ? *value : 0;
}

// RFC 1071 checksum of a 20-byte header whose check field is zero.
static __always_inline __u16 header_checksum(const struct iphdr *iph)
{
	const __u16 *words = (const __u16 *)iph;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*iph) / 2); i++)
		sum += words[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

SEC("classifier")
int felis_ipip_egress(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *inner = (void *)(eth + 1);
	if ((void *)(inner + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || inner->version != 4)
		return TC_ACT_OK;
	struct lpm_v4_key key = { .prefixlen = 32, .addr = inner->daddr };
	__u32 *remote = bpf_map_lookup_elem(&tunnels, &key);
	// 0.0.0.0: a more specific prefix routed without encapsulation.
	if (!remote || !*remote)
		return TC_ACT_OK;
	__u32 local = local_address();
	if (!local)
		return TC_ACT_OK;

	__u8 inner_ecn = inner->tos & ECN_MASK;
	struct iphdr outer = {
		.version = 4,
		.ihl = 5,
		.tos = inner_ecn == ECN_CE ? ECN_ECT_0 : inner_ecn,
		.frag_off = inner->frag_off & bpf_htons(IP_DF),
		.ttl = OUTER_TTL,
		.protocol = IPPROTO_IPIP,
		.saddr = local,
		.daddr = *remote,
	};
	__u32 inner_len = bpf_ntohs(inner->tot_len);
	__u32 outer_len = inner_len + sizeof(outer);
	outer.tot_len = bpf_htons(outer_len > 0xffff ? 0xffff : outer_len);
	if (!outer.frag_off)
		outer.id = (__u16)bpf_get_prandom_u32();
	outer.check = header_checksum(&outer);

	// Room for the outer header right after the MAC header; ENCAP_L3_IPV4 marks the skb as
	// IPIP so GSO segments it with both headers (SKB_GSO_IPXIP4); FIXED_GSO keeps the
	// segment size, which the route's MTU (host MTU - 20) already accounts for.
	if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(STAT_ENCAP_FAILED);
		// Never leak the inner packet onto the underlay unencapsulated.
		return TC_ACT_SHOT;
	}
	if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &outer, sizeof(outer), 0)) {
		count(STAT_ENCAP_FAILED);
		return TC_ACT_SHOT;
	}
	count(STAT_ENCAP);
	return TC_ACT_OK;
}

SEC("classifier")
int felis_ipip_ingress(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || outer->protocol != IPPROTO_IPIP)
		return TC_ACT_OK;
	__u32 local = local_address();
	if (!local || outer->daddr != local)
		return TC_ACT_OK;
	__u32 source = outer->saddr;
	if (!bpf_map_lookup_elem(&peers, &source)) {
		count(STAT_UNKNOWN_PEER);
		return TC_ACT_SHOT;
	}
	if (outer->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		count(STAT_FRAGMENT);
		return TC_ACT_OK;
	}
	__u32 outer_len = outer->ihl * 4;
	if (outer_len < sizeof(struct iphdr) || outer_len > 60) {
		count(STAT_MALFORMED);
		return TC_ACT_SHOT;
	}
	// The inner header must be an IPv4 header (RFC 2003 §3).
	__u8 inner_first;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + outer_len, &inner_first, 1) ||
	    (inner_first >> 4) != 4) {
		count(STAT_MALFORMED);
		return TC_ACT_SHOT;
	}
	__s32 diff = -(__s32)outer_len;
	if (bpf_skb_adjust_room(skb, diff, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4) &&
	    bpf_skb_adjust_room(skb, diff, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO)) {
		// Kernels before 6.3 lack the DECAP flag: the second call is their path.
		count(STAT_DECAP_FAILED);
		return TC_ACT_SHOT;
	}
	count(STAT_DECAP);
	return TC_ACT_OK;
}

// The kernel reads this: "GPL" lets the program use every helper it calls.
char LICENSE[] SEC("license") = "GPL";
