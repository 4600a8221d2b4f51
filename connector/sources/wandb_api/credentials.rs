//! The W&B API key: `WANDB_API_KEY`, else the `~/.netrc` entry for the API
//! host (as the official client does). Never from the command line; never
//! printed (`ApiKey`'s `Debug` hides it).

use std::fmt;
use std::path::{Path, PathBuf};

/// A secret that never shows in logs, errors or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Where the key was found (for messages; never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    Netrc(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => f.write_str("WANDB_API_KEY"),
            KeySource::Netrc(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Finds the key for `host`: `WANDB_API_KEY`, else the netrc file
/// (`NETRC` or `~/.netrc`).
pub fn find_api_key(host: &str) -> Option<(ApiKey, KeySource)> {
    if let Ok(k) = std::env::var("WANDB_API_KEY") {
        let k = k.trim().to_string();
        if !k.is_empty() {
            return Some((ApiKey(k), KeySource::Env));
        }
    }
    let netrc = std::env::var_os("NETRC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".netrc")))?;
    let text = std::fs::read_to_string(&netrc).ok()?;
    netrc_password(&text, host).map(|k| (ApiKey(k), KeySource::Netrc(netrc)))
}

/// The password of the `machine HOST` entry of a netrc file.
pub fn netrc_password(text: &str, host: &str) -> Option<String> {
    let mut tokens = text.split_whitespace();
    let mut in_machine = false;
    while let Some(t) = tokens.next() {
        match t {
            "machine" => in_machine = tokens.next() == Some(host),
            "default" => in_machine = false,
            "password" => {
                let p = tokens.next()?;
                if in_machine {
                    return Some(p.to_string());
                }
            }
            "login" | "account" => {
                tokens.next();
            }
            "macdef" => in_machine = false,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netrc_entries() {
        let text = "machine other.host login u password nope\nmachine api.wandb.ai\n  login user\n  password abc123\n";
        assert_eq!(netrc_password(text, "api.wandb.ai").as_deref(), Some("abc123"));
        assert_eq!(netrc_password(text, "other.host").as_deref(), Some("nope"));
        assert_eq!(netrc_password(text, "missing"), None);
        assert_eq!(netrc_password("machine h login x", "h"), None);
    }

    #[test]
    fn keys_are_redacted() {
        let k = ApiKey::new("super-secret-key");
        assert_eq!(format!("{k:?}"), "ApiKey(<redacted>)");
        assert!(!format!("{:?}", Some(k)).contains("secret"));
    }
}
