//! Refuses requests a browser sends on behalf of another site.
//!
//! A broker on loopback without a token is reachable by every web page its user opens: a page
//! can POST to `http://127.0.0.1:5050` (form and `text/plain` bodies need no CORS preflight), and
//! a DNS-rebinding page reaches it under its own name. Two checks close both doors without
//! touching non-browser clients: the `Origin` a browser attaches to cross-origin requests must be
//! an allowed origin, and the `Host` must be a name this broker answers to. `curl` sends no
//! `Origin` and `Host: localhost:5050`, so it is unaffected.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::{ApiError, AppState};

/// Which `Host` and `Origin` values the broker accepts.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    bind: SocketAddr,
    /// Configured names, lowercase: `name` (any port) or `name:port`.
    hosts: Vec<(String, Option<u16>)>,
    /// Configured origins, lowercase, without a trailing slash.
    origins: Vec<String>,
}

impl AccessPolicy {
    /// `bind` is the address actually listened on (its port is the one `Host` must carry);
    /// `hosts` are extra names (`kokino.example.com` or `kokino.example.com:8443`) and `origins`
    /// extra origins (`https://dashboard.example.com`) the operator allows.
    pub fn new(bind: SocketAddr, hosts: &[String], origins: &[String]) -> Self {
        let hosts = hosts
            .iter()
            .filter_map(|h| split_authority(&h.to_ascii_lowercase()))
            .collect();
        let origins = origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        AccessPolicy {
            bind,
            hosts,
            origins,
        }
    }

    /// Whether a `Host` header (or an origin's authority, with the scheme's default port) names
    /// this broker: the bind address, a loopback name, or a configured name.
    fn authority_allowed(&self, authority: &str, default_port: u16) -> bool {
        let Some((name, port)) = split_authority(&authority.to_ascii_lowercase()) else {
            return false;
        };
        let port = port.unwrap_or(default_port);
        let configured = self
            .hosts
            .iter()
            .any(|(h, p)| *h == name && p.is_none_or(|p| p == port));
        if configured {
            return true;
        }
        if port != self.bind.port() {
            return false;
        }
        if name == "localhost" {
            return true;
        }
        match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            // An IP literal cannot be rebound by DNS; it must be one this broker listens on.
            Ok(ip) => ip.is_loopback() || ip == self.bind.ip() || self.bind.ip().is_unspecified(),
            Err(_) => false,
        }
    }

    pub fn host_allowed(&self, host: &str) -> bool {
        self.authority_allowed(host, 80)
    }

    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        let (authority, default_port) = if let Some(a) = origin.strip_prefix("http://") {
            (a, 80)
        } else if let Some(a) = origin.strip_prefix("https://") {
            (a, 443)
        } else {
            // `null` (sandboxed frames, files) and other schemes are never this broker.
            return false;
        };
        !authority.contains('/') && self.authority_allowed(authority, default_port)
    }
}

/// `name[:port]` or `[v6]:port` → (name, port). `None` when the port is not a number.
fn split_authority(raw: &str) -> Option<(String, Option<u16>)> {
    let raw = raw.trim();
    if raw.is_empty() || raw.contains('@') {
        return None;
    }
    let (name, port) = if raw.starts_with('[') {
        let end = raw.find(']')?;
        let rest = &raw[end + 1..];
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p),
            None if rest.is_empty() => None,
            None => return None,
        };
        (&raw[..=end], port)
    } else {
        match raw.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((name.trim_end_matches('.').to_owned(), port))
}

/// The middleware: 403 for a foreign `Origin` or `Host`, before authentication or any handler.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let policy = &state.access;
    let headers = req.headers();
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("<not text>").to_owned());
    if let Some(origin) = origin {
        if !policy.origin_allowed(&origin) {
            return forbidden(
                "FORBIDDEN_ORIGIN",
                format!(
                    "requests from origin {origin:?} are refused: the broker accepts browser \
                     requests only from its own origin and the configured `allowed_origins`"
                ),
                json!({"origin": origin}),
            );
        }
    } else if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        // A browser that sends no Origin (a GET from an <img> or a navigation) still says
        // whether another site started the request.
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return forbidden(
                "FORBIDDEN_ORIGIN",
                format!("requests started by another site are refused (Sec-Fetch-Site: {site})"),
                json!({"secFetchSite": site}),
            );
        }
    }
    let host = headers
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("<not text>").to_owned())
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    // No Host at all is an HTTP/1.0 client, never a browser: nothing to rebind.
    if let Some(host) = host {
        if !policy.host_allowed(&host) {
            return forbidden(
                "FORBIDDEN_HOST",
                format!(
                    "requests for host {host:?} are refused: the broker answers only to its bind \
                     address, loopback names (localhost, 127.0.0.1, [::1]) with its port, and the \
                     configured `allowed_hosts`"
                ),
                json!({"host": host}),
            );
        }
    }
    next.run(req).await
}

fn forbidden(code: &'static str, message: String, details: serde_json::Value) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
        .with_details(details)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AccessPolicy {
        AccessPolicy::new(
            "127.0.0.1:5050".parse().unwrap(),
            &["kokino.example.com".into(), "proxy.example:8443".into()],
            &["https://dash.example.com/".into()],
        )
    }

    #[test]
    fn hosts() {
        let p = policy();
        for ok in [
            "localhost:5050",
            "LOCALHOST:5050",
            "127.0.0.1:5050",
            "[::1]:5050",
            "kokino.example.com",
            "kokino.example.com:443",
            "proxy.example:8443",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:5050",
            "localhost",
            "localhost:5051",
            "10.0.0.1:5050",
            "proxy.example:5050",
            "localhost:x",
            "user@localhost:5050",
            "",
        ] {
            assert!(!p.host_allowed(bad), "{bad}");
        }
        let any = AccessPolicy::new("0.0.0.0:5050".parse().unwrap(), &[], &[]);
        assert!(any.host_allowed("10.0.0.1:5050"));
        assert!(!any.host_allowed("myhost:5050"), "names must be configured");
    }

    #[test]
    fn origins() {
        let p = policy();
        for ok in [
            "http://localhost:5050",
            "http://127.0.0.1:5050",
            "http://[::1]:5050",
            "https://dash.example.com",
            "https://kokino.example.com",
        ] {
            assert!(p.origin_allowed(ok), "{ok}");
        }
        for bad in [
            "null",
            "http://evil.example",
            "http://localhost:3000",
            "http://localhost",
            "file://",
            "https://dash.example.com.evil",
        ] {
            assert!(!p.origin_allowed(bad), "{bad}");
        }
    }
}
