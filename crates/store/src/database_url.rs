//! Database URL parsing: picks the backend from the scheme and redacts passwords for messages.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where the store lives, chosen by the URL scheme.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An embedded SQLite file (`sqlite://path` or `sqlite:path`).
    Sqlite {
        /// The database file; created if missing.
        path: PathBuf,
    },
    /// A PostgreSQL server (`postgres://…` or `postgresql://…`).
    Postgres {
        /// The full URL, passed to the driver.
        url: String,
    },
}

impl DatabaseUrl {
    /// Parses a configured database URL.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid("the SQLite file path is empty"));
            }
            if path.contains('?') {
                return Err(invalid(
                    "query parameters are not supported for SQLite; the store sets WAL and \
                     foreign keys itself",
                ));
            }
            if path == ":memory:" || path.starts_with(":memory:") {
                return Err(invalid(
                    "an in-memory SQLite database would lose everything on restart; give a file \
                     path",
                ));
            }
            return Ok(Self::Sqlite {
                path: PathBuf::from(path),
            });
        }
        let scheme_ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if scheme_ok {
            if url
                .split_once("://")
                .is_some_and(|(_, rest)| rest.is_empty())
            {
                return Err(invalid("the PostgreSQL URL names no host"));
            }
            return Ok(Self::Postgres {
                url: url.to_owned(),
            });
        }
        Err(invalid("unknown scheme"))
    }

    /// The URL for messages and logs, without any password.
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite { path } => format!("sqlite://{}", path.display()),
            Self::Postgres { url } => redact(url),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Removes the password from `scheme://user:password@host…` and `password=…` parameters.
pub(crate) fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let rest_end = out[auth_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| auth_start + i);
        if let Some(at) = out[auth_start..rest_end].rfind('@') {
            let userinfo = &out[auth_start..auth_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = auth_start + colon + 1;
                out.replace_range(start..auth_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{base}{query}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_with_slashes_and_without() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/bridge.db").unwrap(),
            DatabaseUrl::Sqlite {
                path: "/var/lib/bridge.db".into()
            }
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/bridge.db").unwrap(),
            DatabaseUrl::Sqlite {
                path: "data/bridge.db".into()
            }
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:bridge.db").unwrap(),
            DatabaseUrl::Sqlite {
                path: "bridge.db".into()
            }
        );
    }

    #[test]
    fn postgres_both_schemes() {
        for url in [
            "postgres://u@h/db",
            "postgresql://u:pw@h:5432/db?sslmode=disable",
        ] {
            assert!(matches!(
                DatabaseUrl::parse(url).unwrap(),
                DatabaseUrl::Postgres { .. }
            ));
        }
    }

    #[test]
    fn unknown_scheme_and_empty_path_are_rejected() {
        for url in [
            "mysql://h/db",
            "sqlite:",
            "sqlite://",
            "sqlite::memory:",
            "postgres://",
            "",
        ] {
            assert!(
                matches!(DatabaseUrl::parse(url), Err(Error::InvalidUrl { .. })),
                "{url} should be rejected"
            );
        }
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(
            redact("postgres://bob:s3cret@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(redact("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(
            redact("postgres://db/x?user=bob&password=s3cret"),
            "postgres://db/x?user=bob&password=***"
        );
        let err = DatabaseUrl::parse("mysql://bob:s3cret@db/x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
