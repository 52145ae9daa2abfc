//! BGP-4 speaker: wire codec, session FSM, RIBs, route reflection, graceful restart.
