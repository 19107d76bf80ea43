//! `lifeboat export`: serve a point over NBD until interrupted.

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Context;
use lifeboat_backup::point_server;
use serde_json::json;

use crate::cli::{ExportArguments, GlobalOptions};

pub fn run(global: &GlobalOptions, arguments: &ExportArguments) -> anyhow::Result<u8> {
    let repository = Arc::new(crate::repository::open(
        global,
        crate::repository::Access::Read,
    )?);
    let manifest = super::named_point(
        &repository,
        arguments.point.as_deref(),
        arguments.vm.as_deref(),
        arguments.at,
    )?;
    let server = Arc::new(point_server(Arc::clone(&repository), &manifest)?);
    let names = server.export_names();
    if let Some(path) = arguments.listen.strip_prefix("unix:") {
        let listener = lifeboat_nbd::server::listen_unix(std::path::Path::new(path))
            .with_context(|| format!("cannot listen on {path}"))?;
        announce(global, &manifest.point, &names, |name| {
            format!("nbd+unix:///{name}?socket={path}")
        })?;
        server.serve_unix(listener)?;
    } else {
        let listener = TcpListener::bind(&arguments.listen)
            .with_context(|| format!("cannot listen on {}", arguments.listen))?;
        let address = listener.local_addr()?;
        announce(global, &manifest.point, &names, |name| {
            format!("nbd://{address}/{name}")
        })?;
        server.serve_tcp(listener)?;
    }
    Ok(0)
}

/// Says where each disk is served, then keeps quiet; `--json` prints one line scripts can
/// wait for.
fn announce(
    global: &GlobalOptions,
    point: &str,
    names: &[String],
    uri: impl Fn(&str) -> String,
) -> anyhow::Result<()> {
    if global.json {
        let exports: Vec<_> = names
            .iter()
            .map(|n| json!({ "disk": n, "uri": uri(n) }))
            .collect();
        say!("{}", json!({ "point": point, "exports": exports }));
    } else {
        say!("serving point {point} read-only until interrupted:");
        for name in names {
            say!("  {name}: {}", uri(name));
        }
    }
    Ok(())
}
