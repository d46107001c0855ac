//! `netman graph`: the parts of drawing a network that sit above the
//! network layer — reading the file, finding which site this gateway is
//! (`--site`, or the state dir's deployments), asking its engine for its
//! peers and turning them into a [`Live`] view. The drawing itself is
//! `network::graph` (pure).

use std::path::{Path, PathBuf};

use crate::cli::GraphFormat;
use crate::cli::exit::{FAILED, INVALID};
use crate::cli::validate::{self, Finding};
use crate::engine::{
    self,
    control::{ControlError, PeerStatus, Request, Response},
};
use crate::manifest::{ManifestErrors, PublicKey};
use crate::network::graph::{self as draw, Live};
use crate::network::{Checked, Network, UnknownSite};
use crate::state::{StateDir, StateError};

/// Why `netman graph` drew nothing.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{0}")]
    Invalid(ManifestErrors),
    #[error("{0}: not a network file (no top-level `network:` key); graph draws a network file")]
    NotNetwork(String),
    #[error("{0}")]
    UnknownSite(#[from] UnknownSite),
    #[error(
        "--live: no site of network {network} is a deployment recorded in {} (recorded: {}); say which site this gateway is with --site NAME",
        state_dir.display(),
        if recorded.is_empty() { "none".to_owned() } else { recorded.join(", ") }
    )]
    NoLocalSite {
        network: String,
        state_dir: PathBuf,
        recorded: Vec<String>,
    },
    #[error(
        "--live: several sites of network {network} are deployments recorded in {}: {}; say which site this gateway is with --site NAME",
        state_dir.display(),
        sites.join(", ")
    )]
    SeveralLocalSites {
        network: String,
        state_dir: PathBuf,
        sites: Vec<String>,
    },
    #[error(
        "--live: the engine of deployment {deployment} is not running (no control socket at {}); start it with `netman apply`, or draw without --live",
        socket.display()
    )]
    NotRunning { deployment: String, socket: PathBuf },
    #[error("--live: ask the engine of deployment {deployment}: {source}")]
    Engine {
        deployment: String,
        #[source]
        source: ControlError,
    },
    #[error("--live: {0}")]
    State(#[from] StateError),
}

impl GraphError {
    /// The exit code: 2 for a file that cannot be drawn (invalid, not a
    /// network, no such site), 1 when `--live` cannot see the engine.
    pub fn code(&self) -> u8 {
        match self {
            GraphError::Invalid(_) | GraphError::NotNetwork(_) | GraphError::UnknownSite(_) => {
                INVALID
            }
            _ => FAILED,
        }
    }
}

/// The network file at `path` and its warnings.
pub fn load(path: &Path) -> Result<(Box<Checked>, Vec<Finding>), GraphError> {
    validate::load_network(path)
        .map_err(GraphError::Invalid)?
        .ok_or_else(|| GraphError::NotNetwork(path.display().to_string()))
}

/// The index of the local site: `site` if given, else the one site of
/// `net` whose name is among the deployments `recorded` in `state_dir`.
pub fn local_site<D>(
    net: &Network<D>,
    site: Option<&str>,
    recorded: &[String],
    state_dir: &Path,
) -> Result<usize, GraphError> {
    if let Some(name) = site {
        return net
            .sites
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| {
                GraphError::UnknownSite(UnknownSite {
                    network: net.name.clone(),
                    site: name.to_owned(),
                    known: net.sites.iter().map(|s| s.name.clone()).collect(),
                })
            });
    }
    let found: Vec<usize> = net
        .sites
        .iter()
        .enumerate()
        .filter(|(_, s)| recorded.contains(&s.name))
        .map(|(i, _)| i)
        .collect();
    match found[..] {
        [one] => Ok(one),
        [] => Err(GraphError::NoLocalSite {
            network: net.name.clone(),
            state_dir: state_dir.to_path_buf(),
            recorded: recorded.to_vec(),
        }),
        _ => Err(GraphError::SeveralLocalSites {
            network: net.name.clone(),
            state_dir: state_dir.to_path_buf(),
            sites: found.iter().map(|&i| net.sites[i].name.clone()).collect(),
        }),
    }
}

/// What the engine of the local site reports: its public key and peers.
pub struct EngineView {
    pub public_key: PublicKey,
    pub peers: Vec<PeerStatus>,
}

/// Ask the running engine of `deployment` for its peers.
pub fn engine_view(sd: &StateDir, deployment: &str) -> Result<EngineView, GraphError> {
    match engine::request(sd, deployment, &Request::Status) {
        Ok(Response::Status(s)) => Ok(EngineView {
            public_key: s.public_key,
            peers: s.peers,
        }),
        Ok(other) => Err(GraphError::Engine {
            deployment: deployment.to_owned(),
            source: ControlError::Engine(format!(
                "unexpected answer to a status request: {other:?}"
            )),
        }),
        Err(ControlError::NotRunning(socket)) => Err(GraphError::NotRunning {
            deployment: deployment.to_owned(),
            socket,
        }),
        Err(source) => Err(GraphError::Engine {
            deployment: deployment.to_owned(),
            source,
        }),
    }
}

/// The local site's tunnels as `engine` sees them at `now` (unix
/// seconds), matched to the network's sites by public key; and a warning
/// when the engine runs with another key than the network gives the site
/// (it is then not that site's engine, or the file is stale).
pub fn live<D>(
    net: &Network<D>,
    local: usize,
    engine: &EngineView,
    now: u64,
) -> (Live, Option<String>) {
    let handshakes: Vec<(PublicKey, Option<u64>)> = engine
        .peers
        .iter()
        .map(|p| (p.public_key, p.latest_handshake))
        .collect();
    let live = Live::from_handshakes(net, local, &handshakes, now);
    let warning = net.sites.get(local).and_then(|site| {
        (site.public_key != engine.public_key).then(|| {
            format!(
                "netman: warning: the engine of deployment {} runs with public key {}, but network {} gives site {} the key {}",
                site.name,
                engine.public_key.to_base64(),
                net.name,
                site.name,
                site.public_key.to_base64()
            )
        })
    });
    (live, warning)
}

/// The drawing in `format`.
pub fn draw<D>(net: &Network<D>, format: GraphFormat, live: Option<&Live>) -> String {
    match format {
        GraphFormat::Dot => draw::dot(net, live),
        GraphFormat::Mermaid => draw::mermaid(net, live),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::graph::TunnelState;

    const KEYS: [&str; 3] = [
        "etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
        "mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=",
        "BBGyNT9AgFCC3V5qbBHWSOUfMse/tITORWaZ43Oq+XE=",
    ];

    fn key(i: usize) -> PublicKey {
        PublicKey::from_base64(KEYS[i]).expect("key")
    }

    /// hq (hub) and two branches.
    fn net() -> Network {
        let text = format!(
            "network: corp\ndefaults:\n  private_key_file: k.key\n  listen_port: 51820\nsites:\n  - name: hq\n    public_key: \"{}\"\n    addresses: [10.0.0.1/24]\n    endpoint: 192.0.2.1:51820\n  - name: branch-1\n    public_key: \"{}\"\n    addresses: [10.0.0.2/24]\n  - name: branch-2\n    public_key: \"{}\"\n    addresses: [10.0.0.3/24]\ntopology:\n  hub_and_spoke: {{ hubs: [hq] }}\n",
            KEYS[0], KEYS[1], KEYS[2]
        );
        crate::network::parse(&text, Path::new("n.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn live_from_an_engines_peers_at_the_hub() {
        let n = net();
        let now = 1_000_000;
        let mut b1 = PeerStatus::example("branch-1", key(1));
        b1.latest_handshake = Some(now - 5);
        let view = EngineView {
            public_key: key(0),
            peers: vec![b1],
        };
        let (seen, warning) = live(&n, 0, &view, now);
        assert_eq!(warning, None);
        assert_eq!(
            seen.tunnels,
            vec![(1, TunnelState::Up), (2, TunnelState::Unknown)]
        );
        // The same peers, seen by an engine with another key.
        let view = EngineView {
            public_key: key(2),
            ..view
        };
        let (_, warning) = live(&n, 0, &view, now + 1000);
        let w = warning.expect("a key mismatch is reported");
        assert!(w.contains("deployment hq runs with public key BBGy"), "{w}");
    }

    #[test]
    fn the_local_site_is_named_or_the_one_recorded() {
        let n = net();
        let sd = Path::new("/run/x");
        assert_eq!(local_site(&n, Some("branch-2"), &[], sd).ok(), Some(2));
        let e = local_site(&n, Some("nope"), &[], sd).expect_err("no such site");
        assert_eq!(e.code(), INVALID);
        assert!(e.to_string().contains("no site named \"nope\""), "{e}");
        let recorded = ["other".to_owned(), "branch-1".to_owned()];
        assert_eq!(local_site(&n, None, &recorded, sd).ok(), Some(1));
        let e = local_site(&n, None, &recorded[..1], sd).expect_err("none");
        assert_eq!(e.code(), FAILED);
        assert_eq!(
            e.to_string(),
            "--live: no site of network corp is a deployment recorded in /run/x (recorded: other); say which site this gateway is with --site NAME"
        );
        let both = ["branch-1".to_owned(), "hq".to_owned()];
        let e = local_site(&n, None, &both, sd).expect_err("two");
        assert_eq!(
            e.to_string(),
            "--live: several sites of network corp are deployments recorded in /run/x: hq, branch-1; say which site this gateway is with --site NAME"
        );
    }
}
