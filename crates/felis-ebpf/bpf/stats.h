// Per-CPU packet counters shared by the programs: the including file defines STAT_COUNT (the
// number of counters) first; userspace reads the map `stats`.
#ifndef FELIS_STATS_H
#define FELIS_STATS_H

#ifndef STAT_COUNT
#error "define STAT_COUNT before including stats.h"
#endif

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_COUNT);
} stats SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&stats, &index);
	if (value)
		*value += 1;
}

#endif
