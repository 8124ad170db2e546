//! The WebSocket's `Origin` check, against cross-site WebSocket hijacking: a page on
//! another site must not open `/ws` in a visitor's browser and act as them.
//!
//! Allowed: requests without `Origin` (browsers always send it on a WebSocket upgrade;
//! other clients need not), the same origin as the `Host` the request was sent to, and
//! what `http.allowed_origins` lists: exact origins (`https://meet.example.org`), `"*"`
//! for any, and `"localhost"` for any port of `localhost`, `127.0.0.1` and `[::1]`.

/// The `allowed_origins` entry that matches pages on this machine, on any port.
pub const LOCALHOST: &str = "localhost";

/// The entry that matches every origin (the check is off).
pub const ANY: &str = "*";

/// Whether a WebSocket upgrade with this `Origin` and `Host` may proceed.
pub fn allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if allowed.iter().any(|a| a == ANY) {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        // `null` (a sandboxed frame, a file:// page) and anything unparsable.
        return false;
    };
    if scheme != "http" && scheme != "https" {
        return false;
    }
    let authority = without_default_port(scheme, authority);
    if host.is_some_and(|h| {
        let h = h.trim().to_ascii_lowercase();
        without_default_port(scheme, &h) == authority
    }) {
        return true;
    }
    allowed.iter().any(|entry| {
        if entry == LOCALHOST {
            is_local(authority)
        } else {
            let entry = entry.trim().trim_end_matches('/').to_ascii_lowercase();
            entry
                .split_once("://")
                .is_some_and(|(s, a)| s == scheme && without_default_port(s, a) == authority)
        }
    })
}

/// `host:port` with the scheme's default port dropped, so that `example.org` and
/// `example.org:443` compare equal under https.
fn without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = if scheme == "https" { ":443" } else { ":80" };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// Whether an origin's `host[:port]` is this machine's loopback.
fn is_local(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().map(|h| format!("[{h}]"))
    } else {
        authority.split(':').next().map(str::to_owned)
    };
    matches!(host.as_deref(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| (*e).to_owned()).collect()
    }

    #[test]
    fn same_origin_and_no_origin_pass() {
        let none = list(&[]);
        assert!(allowed(None, Some("meet.example.org"), &none));
        assert!(allowed(
            Some("https://meet.example.org"),
            Some("meet.example.org"),
            &none
        ));
        assert!(allowed(
            Some("https://Meet.Example.org:443"),
            Some("meet.example.org"),
            &none
        ));
        assert!(allowed(
            Some("http://10.0.0.5:8080"),
            Some("10.0.0.5:8080"),
            &none
        ));
        assert!(!allowed(
            Some("http://10.0.0.5:8081"),
            Some("10.0.0.5:8080"),
            &none
        ));
    }

    #[test]
    fn other_sites_are_refused_unless_listed() {
        let defaults = list(&[LOCALHOST]);
        let host = Some("meet.example.org");
        assert!(!allowed(Some("https://evil.example"), host, &defaults));
        assert!(!allowed(Some("null"), host, &defaults));
        assert!(!allowed(Some("file://"), host, &defaults));
        assert!(!allowed(
            Some("https://meet.example.org.evil"),
            host,
            &defaults
        ));
        assert!(allowed(Some("http://localhost:5173"), host, &defaults));
        assert!(allowed(Some("http://127.0.0.1:3000"), host, &defaults));
        assert!(allowed(Some("http://[::1]:3000"), host, &defaults));
        assert!(!allowed(
            Some("http://localhost.evil.example"),
            host,
            &defaults
        ));
        let app = list(&["https://app.example.org"]);
        assert!(allowed(Some("https://app.example.org"), host, &app));
        assert!(!allowed(Some("http://app.example.org"), host, &app));
        assert!(!allowed(Some("http://localhost:5173"), host, &app));
        assert!(allowed(Some("https://evil.example"), host, &list(&[ANY])));
    }
}
