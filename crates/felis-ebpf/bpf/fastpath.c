// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only)
//
// Felis routed fast path on tc: established TCP flows between workloads skip the host's IP
// forwarding path (routing decision, netfilter hooks, one veth backlog pass), while every new
// flow, every flow direction not yet seen, and every SYN, FIN and RST still go through the
// stack and its nftables policy.
//
//   record (egress of the uplink and of workload veths, after netfilter):
//     a forwarded TCP packet that got here was accepted by policy → flows[tuple] = generation
//   forward (ingress of workload veths and of the uplink):
//     TCP, no SYN/FIN/RST, flows[tuple] of the current generation, and the FIB's next hop is a
//     device in `devices` → TTL − 1, MACs from the FIB, then
//       to a workload: bpf_redirect_peer (straight into the pod's namespace)
//       to the uplink:  bpf_redirect (its egress; tc egress programs such as IPIP still run)
//   anything else → TC_ACT_UNSPEC: the next tc filter, then the stack, as without us.
//
// Soundness: a direction of a flow is only forwarded here after a packet of that exact tuple
// was accepted by the whole netfilter path on this host; for such packets nftables' own first
// rule is `ct state established,related accept`, so skipping it changes no verdict. A tuple
// rewritten by NAT (natOutgoing, DNAT) is recorded after the rewrite and never matches the
// packets before it, so NATed flows always take the stack. The agent bumps `config[GEN]`
// whenever it programs policy, which makes every recorded flow stale at once. Conntrack is
// refreshed by sending one packet of each flow through the stack every REFRESH_NS.
//
// Built by build.rs with `clang -O2 -g -target bpf`; loaded by aya (felis-ebpf's src/fastpath.rs).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef AF_INET
#define AF_INET 2
#endif

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

// How often one packet of a forwarded flow goes through the stack anyway (conntrack refresh).
#define REFRESH_NS (10ULL * 1000 * 1000 * 1000)

// `devices` values.
#define DEVICE_WORKLOAD 1
#define DEVICE_UPLINK 2

// Keys of the `config` array.
#define CONFIG_GEN 0

// Indexes of the `stats` array (kept in step with src/fastpath.rs).
#define STAT_FORWARDED 0
#define STAT_REDIRECT_FAILED 1
#define STAT_RECORDED 2
#define STAT_REFRESH 3
#define STAT_COUNT 4

struct flow_key {
	__u32 saddr; // network order
	__u32 daddr;
	__u16 sport;
	__u16 dport;
};

struct flow {
	__u32 gen;
	__u32 pad;
	__u64 refreshed_ns; // when a packet of it last went through the stack
};

// Accepted flow directions (TCP, IPv4).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow);
	__uint(max_entries, 262144);
} flows SEC(".maps");

// Devices the fast path may send to: ifindex → DEVICE_*.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 65536);
} devices SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} config SEC(".maps");

// Packet counters, per CPU.
#include "stats.h"

static __always_inline __u32 generation(void)
{
	__u32 key = CONFIG_GEN;
	__u32 *gen = bpf_map_lookup_elem(&config, &key);
	return gen ? *gen : 0;
}

// The IPv4 TCP headers of an unfragmented packet without IP options, or NULL.
static __always_inline struct iphdr *tcp_ipv4(struct __sk_buff *skb, struct tcphdr **tcp)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return NULL;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_TCP)
		return NULL;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return NULL;
	struct tcphdr *t = (void *)(ip + 1);
	if ((void *)(t + 1) > end)
		return NULL;
	*tcp = t;
	return ip;
}

// The direction a packet belongs to.
static __always_inline struct flow_key key_of(const struct iphdr *ip, const struct tcphdr *tcp)
{
	struct flow_key key = {
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.sport = tcp->source,
		.dport = tcp->dest,
	};
	return key;
}

static __always_inline int forward(struct __sk_buff *skb)
{
	struct tcphdr *tcp;
	struct iphdr *ip = tcp_ipv4(skb, &tcp);
	if (!ip || tcp->syn || tcp->fin || tcp->rst || ip->ttl <= 1)
		return TC_ACT_UNSPEC;
	struct flow_key key = key_of(ip, tcp);
	struct flow *flow = bpf_map_lookup_elem(&flows, &key);
	if (!flow || flow->gen != generation())
		return TC_ACT_UNSPEC;
	__u64 now = bpf_ktime_get_ns();
	if (now - flow->refreshed_ns > REFRESH_NS) {
		// This one goes through the stack and refreshes the conntrack entry.
		flow->refreshed_ns = now;
		count(STAT_REFRESH);
		return TC_ACT_UNSPEC;
	}
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = IPPROTO_TCP;
	fib.tot_len = 0; // the kernel checks the MTU against the skb itself, GSO-aware
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = skb->ingress_ifindex;
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_UNSPEC;
	__u32 out = fib.ifindex;
	__u32 *kind = bpf_map_lookup_elem(&devices, &out);
	if (!kind)
		return TC_ACT_UNSPEC;
	// As ip_forward: TTL − 1 with the checksum updated incrementally (RFC 1624).
	__u32 check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
	struct ethhdr *eth = (void *)(long)skb->data;
	if ((void *)(eth + 1) > (void *)(long)skb->data_end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	long verdict = *kind == DEVICE_WORKLOAD ? bpf_redirect_peer(out, 0) : bpf_redirect(out, 0);
	if (verdict == TC_ACT_REDIRECT)
		count(STAT_FORWARDED);
	else
		count(STAT_REDIRECT_FAILED);
	return verdict;
}

SEC("classifier")
int felis_fast_forward(struct __sk_buff *skb)
{
	return forward(skb);
}

SEC("classifier")
int felis_fast_record(struct __sk_buff *skb)
{
	// Only forwarded packets: they crossed the forward hook (locally sent ones have no input
	// interface).
	if (skb->ingress_ifindex == 0)
		return TC_ACT_UNSPEC;
	struct tcphdr *tcp;
	struct iphdr *ip = tcp_ipv4(skb, &tcp);
	if (!ip || tcp->fin || tcp->rst)
		return TC_ACT_UNSPEC;
	struct flow_key key = key_of(ip, tcp);
	__u32 gen = generation();
	struct flow *flow = bpf_map_lookup_elem(&flows, &key);
	if (flow && flow->gen == gen)
		return TC_ACT_UNSPEC;
	struct flow fresh = {.gen = gen, .refreshed_ns = bpf_ktime_get_ns()};
	bpf_map_update_elem(&flows, &key, &fresh, BPF_ANY);
	count(STAT_RECORDED);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";
