//! Where the logs go and how they read: stderr, filtered by `RUST_LOG` (default `info`),
//! as text or as JSON (`--log-format json`: one object a line, for journald, Loki or
//! anything that indexes fields).
//!
//! Text carries colour (ANSI escape codes) only when stderr is a terminal and
//! `NO_COLOR` is unset or empty (<https://no-color.org>): a log piped to a file, to
//! journald or to a collector holds plain text. JSON never carries escape codes.
//!
//! JSON lines are tracing-subscriber's own format (its `json` feature): `timestamp`,
//! `level`, `target`, and the event's fields at the top level (`message` among them).

use std::ffi::OsStr;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines (coloured on a terminal only).
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Whether text logs carry colour: only on a terminal, and never when `NO_COLOR` holds
/// a non-empty value.
pub(crate) fn colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Installs the process's subscriber: stderr, `RUST_LOG` (default `info`), in
/// `format`.
pub(crate) fn init(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Text => {
            let ansi = colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            layer.with_ansi(ansi).with_filter(filter).boxed()
        }
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new(""))));
    }
}
