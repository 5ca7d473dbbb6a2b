//! The one line a failed command prints: the error and its causes, each said once.
//!
//! The library errors put their cause in their own message (`"{path}: {source}"`, so an error
//! shown alone — a server log line, an HTTP reply — still says what went wrong) and also expose
//! it as `source()`. anyhow's `{:#}` prints every link of the chain, so the cause came out
//! twice ("…/train.csv: No such file or directory (os error 2): No such file or directory (os
//! error 2)"). Here a cause is appended only when the text so far does not already end with it.

/// `error`'s context and causes joined by ": ", skipping a cause its parent already printed.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct FileError {
        path: String,
        source: std::io::Error,
    }

    fn not_found() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let error = Err::<(), _>(FileError {
            path: "/data/train.csv".into(),
            source: not_found(),
        })
        .context("training runs/a")
        .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "training runs/a: /data/train.csv: no such file: no such file"
        );
        assert_eq!(
            error_line(&error),
            "training runs/a: /data/train.csv: no such file"
        );
    }

    #[test]
    fn causes_not_in_the_message_are_kept() {
        let error = Err::<(), _>(not_found())
            .context("reading list.csv")
            .context("building the index")
            .unwrap_err();
        assert_eq!(
            error_line(&error),
            "building the index: reading list.csv: no such file"
        );
    }
}
