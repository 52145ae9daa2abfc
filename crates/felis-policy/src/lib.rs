//! Policy resolution and verdicts: which tiers, policies and profiles apply to an endpoint.
