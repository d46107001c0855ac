//! `netman validate a.yaml b.yaml ...`: v1 manifests that name each other
//! (a peer with another manifest's `interface.public_key`) are checked
//! against each other: the peer's allowed IPs cover the other's
//! addresses, the other has a peer for this one, and a peer named like
//! another deployment has the key that deployment declares.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{TempDir, netman_bin};
use netman::cli::validate::{Severity, validate_all};

const K1: &str = "etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=";
const K2: &str = "mcnWOnyqUDAHqtjNjLoHAH0y3VNyMoVjfdi61FZWSUg=";
const K3: &str = "BBGyNT9AgFCC3V5qbBHWSOUfMse/tITORWaZ43Oq+XE=";

/// Site `name` (overlay 10.10.0.`n`) with its own key and one peer; the
/// peer's key is on line 9, its allowed_ips on line 10.
fn site(name: &str, n: u8, own: &str, peer: &str, peer_key: &str, allowed: &str) -> String {
    format!(
        "name: {name}\ninterface:\n  name: nm0\n  addresses: [10.10.0.{n}/24]\n  private_key_file: {name}.key\n  public_key: {own}\npeers:\n  - name: {peer}\n    public_key: {peer_key}\n    allowed_ips: [{allowed}]\n"
    )
}

/// Every finding of validating `a` and `b` together, as printed.
fn findings(dir: &TempDir, a: &str, b: &str) -> Vec<String> {
    let files: Vec<PathBuf> = vec![dir.write("a.yaml", a), dir.write("b.yaml", b)];
    let prefix = format!("{}/", dir.path.display());
    validate_all(&files)
        .iter()
        .flat_map(|r| r.findings.iter())
        .map(|f| {
            assert_eq!(f.severity, Severity::Error);
            f.text().replace(&prefix, "")
        })
        .collect()
}

#[test]
fn manifests_that_name_each_other_must_agree() {
    let dir = TempDir::new("cross");
    let a = site("site-a", 1, K1, "site-b", K2, "10.10.0.2/32");
    let b = site("site-b", 2, K2, "site-a", K1, "10.10.0.1/32");
    assert_eq!(findings(&dir, &a, &b), Vec::<String>::new());
    let reports = validate_all(&[dir.join("a.yaml"), dir.join("b.yaml")]);
    assert!(reports.iter().all(|r| r.valid.is_some()));

    let cases: &[(&str, String, String, &[&str])] = &[
        (
            "A's allowed IPs miss B's address",
            site("site-a", 1, K1, "site-b", K2, "10.10.0.3/32"),
            b.clone(),
            &[
                "a.yaml:10:18: peers[0].allowed_ips: 10.10.0.2, an address of b.yaml (deployment site-b), is not in this peer's allowed_ips: its packets would be dropped",
            ],
        ),
        (
            "B has no peer for A",
            a.clone(),
            site("site-b", 2, K2, "site-c", K3, "10.10.0.3/32"),
            &[
                "a.yaml:9:17: peers[0].public_key: b.yaml (deployment site-b) has no peer with this manifest's interface.public_key: the tunnel is one-sided",
            ],
        ),
        (
            "A's peer named site-b has another key than B declares",
            site("site-a", 1, K1, "site-b", K3, "10.10.0.2/32"),
            b.clone(),
            &[
                "a.yaml:9:17: peers[0].public_key: peer `site-b` has another key than b.yaml (deployment site-b) declares as its interface.public_key",
                "b.yaml:9:17: peers[0].public_key: a.yaml (deployment site-a) has no peer with this manifest's interface.public_key: the tunnel is one-sided",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (what, a, b, want) in cases {
        let got = findings(&dir, a, b);
        if got != *want {
            failures.push(format!("{what}:\n  got:  {got:#?}\n  want: {want:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn validate_exits_2_when_manifests_disagree() {
    let dir = TempDir::new("crossbin");
    let a = dir.write(
        "a.yaml",
        &site("site-a", 1, K1, "site-b", K2, "10.10.0.3/32"),
    );
    let b = dir.write(
        "b.yaml",
        &site("site-b", 2, K2, "site-a", K1, "10.10.0.1/32"),
    );
    let out = Command::new(netman_bin())
        .arg("validate")
        .arg(&a)
        .arg(&b)
        .output()
        .expect("run netman");
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout.trim(),
        format!("{}: valid (deployment site-b)", b.display())
    );
    assert!(
        stderr.contains(&format!(
            "{}:10:18: peers[0].allowed_ips: 10.10.0.2, an address of {}",
            a.display(),
            b.display()
        )),
        "{stderr}"
    );
    // Each alone is valid: the check needs both.
    let out = Command::new(netman_bin())
        .arg("validate")
        .arg(&a)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
}
