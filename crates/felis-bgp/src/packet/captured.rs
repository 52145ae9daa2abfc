//! Messages captured from BIRD 2.0.12 and decoded here.
//!
//! Captured with `tcpdump -i veth0 -w cap.pcap tcp port 179` between two `bird` processes in
//! network namespaces (AS 64512 at 192.0.2.1 active, AS 64513 at 192.0.2.2 passive), each with
//! `graceful restart on; ipv4 { export where source = RTS_STATIC; }; ipv6 { ... next hop
//! address 2001:db8::N; };` and one static IPv4 and IPv6 blackhole route. Bodies only (the
//! 19-octet header stripped).

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use crate::packet::Asn;
    use crate::packet::CodecOptions;
    use crate::packet::Family;
    use crate::packet::Message;
    use crate::packet::message_type;
    use crate::packet::open::Capability;
    use crate::packet::tests::hex;
    use crate::packet::update::AsPath;
    use crate::packet::update::MpReach;
    use crate::packet::update::Origin;
    use crate::packet::update::Update;
    use crate::packet::update::UpdateView;

    const OPTS: CodecOptions = CodecOptions::FOUR_OCTET;

    const OPEN_64512: &str = "04fc00005ac00002012602240104000100010104000200010200400a0078000101\
        000002010041040000fc0046004700";
    const UPDATE_V4: &str = "000000144001010040020602010000fc00400304c00002011a0a410000";
    const EOR_V4: &str = "00000000";
    const UPDATE_V6_LINK_LOCAL: &str = "0000003f900e002e0002012020010db800000000000000000000\
        0001fe8000000000000090f27ffffe0f7939004020010db8006500004001010040020602010000fc00";
    const UPDATE_V6_PASSIVE: &str = "0000002d900e001c0002011020010db80000000000000000000000\
        02003020010db802004001010040020602010000fc01";
    const EOR_V6: &str = "00000006800f03000201";

    fn decode(kind: u8, body: &str) -> Message {
        Message::decode_body(kind, &hex(body), &OPTS).unwrap()
    }

    fn body_of(message: &Message) -> Vec<u8> {
        message.to_bytes(&OPTS).unwrap()[19..].to_vec()
    }

    #[test]
    fn bird_open_decodes_and_re_encodes_identically() {
        let msg = decode(message_type::OPEN, OPEN_64512);
        let Message::Open(open) = &msg else {
            panic!("not an OPEN")
        };
        assert_eq!(open.asn(), Asn(64512));
        assert_eq!(open.hold_time, 90);
        assert_eq!(open.bgp_id, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(
            open.families(),
            vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST]
        );
        assert!(open.has_route_refresh());
        assert_eq!(open.graceful_restart().map(|g| g.restart_time), Some(120));
        // Enhanced route refresh (70) and long-lived GR (71) are kept, not interpreted.
        assert!(open.capabilities.contains(&Capability::Unknown {
            code: 70,
            value: vec![]
        }));
        assert!(open.capabilities.contains(&Capability::Unknown {
            code: 71,
            value: vec![]
        }));
        assert_eq!(body_of(&msg), hex(OPEN_64512));
    }

    #[test]
    fn bird_ipv4_update_decodes_and_re_encodes_identically() {
        let msg = decode(message_type::UPDATE, UPDATE_V4);
        let Message::Update(u) = &msg else {
            panic!("not an UPDATE")
        };
        assert_eq!(u.attrs.origin, Some(Origin::Igp));
        assert_eq!(u.attrs.as_path, Some(AsPath::sequence([64512])));
        assert_eq!(u.attrs.next_hop, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(u.nlri, vec!["10.65.0.0/26".parse().unwrap()]);
        assert_eq!(body_of(&msg), hex(UPDATE_V4));
    }

    #[test]
    fn bird_end_of_rib_markers_are_recognised() {
        for (body, family) in [
            (EOR_V4, Family::IPV4_UNICAST),
            (EOR_V6, Family::IPV6_UNICAST),
        ] {
            let Message::Update(u) = decode(message_type::UPDATE, body) else {
                panic!()
            };
            assert_eq!(u.end_of_rib_family(), Some(family));
            assert_eq!(body_of(&Message::Update(u)), hex(body));
        }
    }

    #[test]
    fn bird_ipv6_update_with_link_local_next_hop_decodes() {
        // BIRD puts MP_REACH_NLRI first with the extended-length flag (0x90); we re-encode in
        // type-code order, so only the decoded value is compared.
        let Message::Update(u) = decode(message_type::UPDATE, UPDATE_V6_LINK_LOCAL) else {
            panic!()
        };
        assert_eq!(
            u.mp_reach,
            Some(MpReach {
                family: Family::IPV6_UNICAST,
                next_hop: "2001:db8::1".parse().unwrap(),
                link_local: Some("fe80::90f2:7fff:fe0f:7939".parse().unwrap()),
                nlri: vec!["2001:db8:65::/64".parse().unwrap()],
            })
        );
        let again = Message::Update(u.clone());
        assert_eq!(
            Message::decode(&again.to_bytes(&OPTS).unwrap(), &OPTS),
            Ok(again)
        );
    }

    #[test]
    fn bird_ipv6_update_view_iterates_prefixes() {
        let body = hex(UPDATE_V6_PASSIVE);
        let view = UpdateView::parse(&body, &OPTS).unwrap();
        let reach = view.mp_reach.as_ref().unwrap();
        assert_eq!(
            reach.next_hop,
            "2001:db8::2".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(reach.link_local, None);
        let prefixes: Vec<_> = reach.prefixes().collect();
        assert_eq!(prefixes, vec!["2001:db8:200::/48".parse().unwrap()]);
        assert_eq!(view.attrs.as_path, Some(AsPath::sequence([64513])));
        let owned: Update = view.to_update();
        assert_eq!(owned.attrs.origin, Some(Origin::Igp));
    }
}
