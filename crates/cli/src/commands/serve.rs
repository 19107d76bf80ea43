//! `lifeboat serve`: the control plane (region health, incidents and SLA, the HTTP API and
//! metrics), on the configuration's embedded defaults unless it says otherwise.

use crate::cli::{GlobalOptions, ServeArguments, UserAddArguments};
use crate::output::{print_json, print_json_line};
use crate::repository::{read_password_file, required_config};

pub fn run(global: &GlobalOptions, arguments: &ServeArguments) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let json = global.json;
    let database = config.database.clone();
    let mut job_arguments = vec!["--config".to_string(), config.path.display().to_string()];
    if let Some(file) = &global.password_file {
        job_arguments.push("--password-file".to_string());
        job_arguments.push(file.display().to_string());
    }
    let mut node = [0u8; 4];
    lifeboat_repository::crypto::fill_random(&mut node);
    let runner = lifeboat_control::scheduler::JobRunner {
        node: format!(
            "{}-{}",
            lifeboat_orchestration::audit::actor()
                .rsplit('@')
                .next()
                .unwrap_or("node"),
            node.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        executable: std::env::current_exe()?,
        arguments: job_arguments,
    };
    let node_name = runner.node.clone();
    lifeboat_control::serve(config, arguments.listen, runner, |address, tls| {
        let scheme = if tls { "https" } else { "http" };
        if json {
            let _ = print_json_line(&serde_json::json!({
                "listen": address.to_string(),
                "url": format!("{scheme}://{address}"),
                "database": database,
                "node": node_name,
            }));
        } else {
            tell!("serving the API on {scheme}://{address} (state in {database})");
        }
    })?;
    Ok(0)
}

/// `lifeboat user add NAME --role ROLE`: prints the new token once; only its hash is kept.
pub fn add_user(global: &GlobalOptions, arguments: &UserAddArguments) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let role = arguments.role;
    let now = chrono::Utc::now().timestamp_millis();
    let password = match &arguments.login_password_file {
        Some(file) => Some(
            String::from_utf8(read_password_file(file)?)
                .map_err(|_| anyhow::anyhow!("the password in {} is not UTF-8", file.display()))?,
        ),
        None => None,
    };
    let token = lifeboat_control::with_store(&config, async |store| {
        let token = store.add_user(&arguments.name, role, now).await?;
        if let Some(password) = &password {
            store.set_password(&arguments.name, password).await?;
        }
        Ok(token)
    })?;
    if global.json {
        print_json(&serde_json::json!({
            "user": arguments.name,
            "role": role.as_str(),
            "token": token,
        }))?;
    } else {
        say!(
            "user '{}' ({}); its token, shown once:\n{token}",
            arguments.name,
            role.as_str()
        );
    }
    Ok(0)
}
