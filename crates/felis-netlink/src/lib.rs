//! Links, addresses, routes, neighbours, sysctls and network namespaces over rtnetlink.
