//! Creating the deployment's TUN device: a persistent, multi-queue layer-3
//! device without packet information. Persistent so that it (and its routes)
//! outlive any process: a crashed engine fails closed — traffic routed into
//! the dead device is dropped instead of leaking to the default route.
//! Multi-queue so that the engine can attach one queue per worker later.

use std::io;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TunError {
    #[error("create TUN device {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Create the persistent multi-queue TUN device `name` (left down, no
/// addresses). The queue used to create it is closed again at once.
pub fn create_persistent(name: &str) -> Result<(), TunError> {
    let err = |source| TunError::Create {
        name: name.to_string(),
        source,
    };
    let dev = tun_rs::DeviceBuilder::new()
        .name(name)
        .multi_queue(true)
        .build_sync()
        .map_err(err)?;
    dev.persist().map_err(err)?;
    Ok(())
}
