//! The config file (`config/chorus.toml`): TOML into `chorus::config::Config`, then its
//! validation and the values derived from it. A self-hoster's typo must be an error, never
//! a panic.
#![no_main]

use chorus::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = toml::from_str::<Config>(text) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    let _ = config.media.stun_discovery_url();
    let _ = config.auth.auth();
    for server in &config.ice.servers {
        let _ = server.parsed_urls();
        let _ = server.auth(std::time::Duration::from_secs(
            config.ice.credential_ttl_secs,
        ));
    }
    let _ = format!("{config:?}");
});
