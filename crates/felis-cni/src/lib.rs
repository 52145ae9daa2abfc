//! CNI plugin (spec 1.0.0; 0.3.1/0.4.0 configs) and CNI IPAM plugin.
