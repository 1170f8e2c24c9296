//! A string that must never be printed: passwords, secret keys.

use std::fmt;

/// A secret value; `Debug` and `Display` print a placeholder, never the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for handing to a client library; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `text` with the user and password of every URL in it replaced by `***`: whatever
/// stands between `://` and the last `@` of the URL (up to the next space or quote), so a
/// password holding `/`, `?` or `@` unencoded is hidden whole, never in part.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***@");
                rest = &tail[at + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "hunter2-secret");
    }

    #[test]
    fn urls_lose_their_user_and_password_whole() {
        assert_eq!(
            redact_urls("http://u:p@gw:9091/metrics: refused"),
            "http://***@gw:9091/metrics: refused"
        );
        assert_eq!(redact_urls("http://gw:9091/x"), "http://gw:9091/x");
        // A password holding '/', '?' or '@' unencoded is hidden whole.
        assert_eq!(
            redact_urls("push to http://u:Pw1/x?y@z@gw:9091/m failed"),
            "push to http://***@gw:9091/m failed"
        );
    }
}
