//! `lifeboat serve`: the control plane (region health, incidents and SLA, the HTTP API and
//! metrics), on the configuration's embedded defaults unless it says otherwise.

use crate::cli::{GlobalOptions, ServeArguments};
use crate::output::print_json_line;
use crate::repository::required_config;

pub fn run(global: &GlobalOptions, arguments: &ServeArguments) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let json = global.json;
    let database = config.database.clone();
    lifeboat_control::serve(config, arguments.listen, |address| {
        if json {
            let _ = print_json_line(&serde_json::json!({
                "listen": address.to_string(),
                "database": database,
            }));
        } else {
            eprintln!("serving the API on http://{address} (state in {database})");
        }
    })?;
    Ok(0)
}
