//! Credentials never leave their request: sources and URLs as they may be
//! shown or stored (plan, errors, logs, manifest, Parquet metadata, `--json`).
//!
//! A URL's user info (`user:password@`) becomes `***@`, and the values of
//! query parameters that look like tokens (`token`, `access_token`,
//! `api_key`, `key`, `sig`, `signature`, `password`, `secret`, any
//! `X-Amz-*`) become `***`. Everything else is kept as the user wrote it, so
//! a redacted source still says which server and path were read. The text is
//! scanned, not parsed as a URL: a source that is not a valid URL is
//! redacted too.

/// Query parameters whose values are replaced (compared case-insensitively).
const SECRET_PARAMS: [&str; 10] =
    ["token", "access_token", "api_key", "apikey", "key", "sig", "signature", "password", "secret", "auth"];

/// `text` with credentials replaced by `***`: user info of every `scheme://`
/// authority and the values of token-like query parameters.
pub fn redact(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let (head, rest) = text.split_at(scheme_end + 3);
    // The authority ends at the first `/`, `?` or `#`.
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let mut out = String::with_capacity(text.len());
    out.push_str(head);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str("***");
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.find('#') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query.split('&').map(redact_param).collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    out
}

fn redact_param(param: &str) -> String {
    match param.split_once('=') {
        Some((name, value)) if !value.is_empty() && is_secret_param(name) => format!("{name}=***"),
        _ => param.to_string(),
    }
}

fn is_secret_param(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("x-amz-") || SECRET_PARAMS.contains(&lower.as_str())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn user_info_and_token_parameters_are_replaced() {
        assert_eq!(redact("mlflow+http://alice:s3cretPW@127.0.0.1:9"), "mlflow+http://***@127.0.0.1:9");
        assert_eq!(
            redact("https://tok@host/x?a=1&token=abc&X-Amz-Signature=zz#f"),
            "https://***@host/x?a=1&token=***&X-Amz-Signature=***#f"
        );
        assert_eq!(redact("http://u:p@w@host"), "http://***@host", "the last @ ends the user info");
        assert_eq!(redact("https://h/p?Key=v&keys=1&sig="), "https://h/p?Key=***&keys=1&sig=");
        assert_eq!(redact("http://user:pw@[::1:9/"), "http://***@[::1:9/", "not a valid URL, still redacted");
    }

    #[test]
    fn sources_without_credentials_are_unchanged() {
        for s in [
            "wandb://team/proj",
            "sqlite:////data/mlflow.db",
            "mlruns/",
            "./wandb/run-1/run-1.wandb",
            "http://127.0.0.1:5000/",
            "https://host/a?b=c",
            "a@b/c",
        ] {
            assert_eq!(redact(s), s);
        }
    }
}
