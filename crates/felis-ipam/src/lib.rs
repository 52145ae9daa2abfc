//! Block IPAM as Calico does it: pools, affine blocks, borrowing, handles, reservations, leak checks.
