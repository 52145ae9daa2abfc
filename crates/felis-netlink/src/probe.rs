//! Capability probes: which link kinds this kernel can create.

use crate::error::Error;
use crate::error::Result;
use crate::handle::Handle;
use crate::netns::Netns;
use crate::netns::run_in_new_netns;

/// True if the kernel can create links of `kind` (`ipip`, `wireguard`, `vxlan`, ...).
///
/// Probes by creating one in a fresh anonymous namespace that vanishes afterwards, so nothing
/// is ever created in a namespace that matters. `EOPNOTSUPP` means "no such kind"; any other
/// error (e.g. a missing mandatory attribute) means the kind exists. Blocking (a few ms):
/// call it once at start-up, not per packet or per reconcile.
pub fn supports_link_kind(kind: &str) -> Result<bool> {
    let kind = kind.to_string();
    run_in_new_netns(move || -> Result<bool> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Runtime {
                purpose: "the link kind probe",
                source,
            })?;
        runtime.block_on(async move {
            let handle = Handle::connect(Netns::current()?).await?;
            match handle.add_link_of_kind("probe0", &kind).await {
                Ok(()) => Ok(true),
                Err(e) if e.is_not_supported() => Ok(false),
                Err(_) => Ok(true),
            }
        })
    })?
}
