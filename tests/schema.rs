//! The manifest's JSON Schema: `schema/netman-manifest.schema.json` is what
//! `netman schema` prints (regenerate with `UPDATE_GOLDEN=1`), every example
//! manifest validates against it, and typical mistakes do not; the same
//! for the network file (`schema/netman-network.schema.json`).

use std::fs;
use std::path::Path;

use netman::manifest;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_to_json(text: &str) -> serde_json::Value {
    serde_saphyr::from_str(text).expect("YAML parses into a JSON value")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft7::new(&manifest::json_schema())
        .expect("the schema is a valid draft-07 schema")
}

fn errors(v: &jsonschema::Validator, text: &str) -> Vec<String> {
    let instance = yaml_to_json(text);
    v.iter_errors(&instance).map(|e| e.to_string()).collect()
}

#[test]
fn committed_schema_is_current() {
    let path = root().join("schema/netman-manifest.schema.json");
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&manifest::json_schema()).expect("json")
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&path, &generated).expect("write schema");
    }
    let committed = fs::read_to_string(&path).expect("schema file");
    assert_eq!(
        committed, generated,
        "schema/netman-manifest.schema.json is stale: run `netman schema > schema/netman-manifest.schema.json` (or UPDATE_GOLDEN=1 cargo test --test schema)"
    );
    let v: serde_json::Value = serde_json::from_str(&committed).expect("json");
    assert_eq!(v["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(v["additionalProperties"], false);
}

#[test]
fn every_example_manifest_validates_and_carries_the_modeline() {
    let v = validator();
    let mut checked = 0;
    let mut files: Vec<_> = fs::read_dir(root().join("manifests"))
        .expect("manifests/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.push(root().join("tests/fixtures/manifests/full.yaml"));
    for f in files {
        let text = fs::read_to_string(&f).expect("read");
        let errs = errors(&v, &text);
        assert!(errs.is_empty(), "{}: {errs:?}", f.display());
        // And netman itself accepts it.
        manifest::parse(&text, &f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if f.starts_with(root().join("manifests")) {
            assert!(
                text.starts_with(
                    "# yaml-language-server: $schema=../schema/netman-manifest.schema.json\n"
                ),
                "{} lacks the schema modeline",
                f.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 3, "no manifests found");
}

#[test]
fn typical_mistakes_do_not_validate() {
    let v = validator();
    let good = fs::read_to_string(root().join("manifests/site-a.yaml")).expect("read");
    assert!(errors(&v, &good).is_empty());
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown top-level key",
            "name: site-a\n",
            "name: site-a\ndns: 1.1.1.1\n",
        ),
        (
            "unknown interface key",
            "  mtu: 1420\n",
            "  mtu: 1420\n  mtus: 1\n",
        ),
        ("MTU as a string", "mtu: 1420", "mtu: \"1420\""),
        ("MTU too small", "mtu: 1420", "mtu: 100"),
        ("MTU too large", "mtu: 1420", "mtu: 70000"),
        ("port 0", "listen_port: 51820", "listen_port: 0"),
        ("bad deployment name", "name: site-a", "name: Site_A"),
        (
            "ifname too long",
            "name: nm0",
            "name: averyveryverylongname",
        ),
        (
            "public key not 32 bytes",
            "public_key: ydBt2HwE43VhIEkxJ6RM+WSbWRoxxYxm2/heF7UNJ0g=",
            "public_key: ydBt2HwE43VhIEkxJ6RM+WSbWRoxxYxm2/heF7UNJ0",
        ),
        (
            "keepalive 0",
            "persistent_keepalive: 25",
            "persistent_keepalive: 0",
        ),
        (
            "allowed_ips not a list",
            "allowed_ips: [10.10.0.2/32, fd10::2/128, 172.18.2.0/24]",
            "allowed_ips: 10.10.0.2/32",
        ),
        ("interface missing", "interface:\n", "iface:\n"),
    ];
    for (what, from, to) in cases {
        assert!(good.contains(from), "{what}: the example lacks {from:?}");
        let bad = good.replacen(from, to, 1);
        assert!(
            !errors(&v, &bad).is_empty(),
            "{what}: the schema accepts it:\n{bad}"
        );
        // netman rejects it too.
        assert!(
            manifest::parse(&bad, Path::new("bad.yaml")).is_err(),
            "{what}: netman accepts it"
        );
    }
    // A firewall section with an unknown hook.
    let fw = format!(
        "{good}firewall:\n  chains:\n    - name: fwd\n      hook: sideways\n      rules: [accept]\n"
    );
    assert!(!errors(&v, &fw).is_empty());
    let fw_ok = fw.replace("sideways", "forward");
    assert!(errors(&v, &fw_ok).is_empty(), "{:?}", errors(&v, &fw_ok));
}

/// `schema/netman-network.schema.json` is what `netman schema --kind
/// network` prints (regenerate with `UPDATE_GOLDEN=1`); the golden network
/// files validate against it, typical mistakes do not.
#[test]
fn committed_network_schema_is_current_and_checks_network_files() {
    let path = root().join("schema/netman-network.schema.json");
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&netman::network::json_schema()).expect("json")
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&path, &generated).expect("write schema");
    }
    let committed = fs::read_to_string(&path).expect("network schema file");
    assert_eq!(
        committed, generated,
        "schema/netman-network.schema.json is stale: run `netman schema --kind network > schema/netman-network.schema.json` (or UPDATE_GOLDEN=1 cargo test --test schema)"
    );
    let v = jsonschema::draft7::new(&netman::network::json_schema())
        .expect("the network schema is a valid draft-07 schema");
    let mut checked = 0;
    for case in fs::read_dir(root().join("tests/golden/network")).expect("golden dir") {
        let file = case.expect("entry").path().join("network.yaml");
        let text = fs::read_to_string(&file).expect("read");
        let errs = errors(&v, &text);
        assert!(errs.is_empty(), "{}: {errs:?}", file.display());
        assert!(
            text.starts_with(
                "# yaml-language-server: $schema=../../../../schema/netman-network.schema.json\n"
            ),
            "{} lacks the schema modeline",
            file.display()
        );
        checked += 1;
        // The manifest's schema does not accept a network file.
        assert!(!errors(&validator(), &text).is_empty());
    }
    assert!(checked >= 2);
    let good =
        fs::read_to_string(root().join("tests/golden/network/01-hub-and-spoke/network.yaml"))
            .expect("read");
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown top-level key",
            "network: corp\n",
            "network: corp\ndns: 1\n",
        ),
        (
            "unknown site key",
            "    subnets: [172.18.1.0/24",
            "    subnet: [172.18.1.0/24",
        ),
        ("bad network name", "network: corp", "network: Corp_1"),
        ("port 0", "listen_port: 51820", "listen_port: 0"),
        ("hubs not a list", "hubs: [hq]", "hubs: hq"),
        ("sites missing", "sites:\n", "site:\n"),
        (
            "key not 32 bytes",
            "public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0c=",
            "public_key: etlpqu+utNgmSVdTb1xY01+BOmtVKAVAg6Yt7YbOt0",
        ),
    ];
    for (what, from, to) in cases {
        assert!(good.contains(from), "{what}: the example lacks {from:?}");
        let bad = good.replacen(from, to, 1);
        assert!(
            !errors(&v, &bad).is_empty(),
            "{what}: the schema accepts it"
        );
        assert!(
            netman::network::parse(&bad, Path::new("bad.yaml")).is_err(),
            "{what}: netman accepts it"
        );
    }
}
