//! Feeds arbitrary UPDATE bodies to the zero-copy view and walks every iterator.
#![no_main]

use felis_bgp::packet::CodecOptions;
use felis_bgp::packet::update::UpdateView;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = UpdateView::parse(data, &CodecOptions::FOUR_OCTET) {
        let _ = view.withdrawn().count();
        let _ = view.nlri().count();
        if let Some(reach) = &view.mp_reach {
            let _ = reach.prefixes().count();
        }
        if let Some(unreach) = &view.mp_unreach {
            let _ = unreach.prefixes().count();
        }
        let _ = view.end_of_rib();
        let _ = view.to_update();
    }
});
