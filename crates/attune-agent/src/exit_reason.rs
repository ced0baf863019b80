//! The reason given for a non-zero exit code. Shells and `env` exit 127 when a command is not
//! found and 126 when it is found but cannot be executed, after saying which on stderr; the
//! agent reads that line to name the command, and the image it was looked for in.

/// How much of the end of stderr is searched for the shell's message.
const STDERR_TAIL_BYTES: usize = 64 * 1024;
/// Longest command name quoted in a message.
const COMMAND_LIMIT: usize = 200;

/// What the shell said about a command, read from one stderr line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandProblem {
    pub command: String,
    /// For 126: why it cannot be executed (`permission denied`, `exec format error`, ...).
    pub detail: Option<&'static str>,
}

/// Reasons a shell gives for 127, as they end a line (`sh: 1: jq: not found`, `x.sh: line 3:
/// jq: command not found`, `env: 'python9': No such file or directory`).
const NOT_FOUND: [&str; 3] = [
    "command not found",
    "not found",
    "No such file or directory",
];

/// Reasons a shell gives for 126, as they end a line, with how the message words them.
const NOT_EXECUTABLE: [(&str, &str); 4] = [
    ("Permission denied", "permission denied"),
    ("Exec format error", "exec format error"),
    ("cannot execute binary file", "exec format error"),
    ("Is a directory", "is a directory"),
];

fn clean_command(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let raw = raw.strip_prefix("can't execute ").unwrap_or(raw);
    let command = raw.trim_matches(|character| matches!(character, '\'' | '"' | '`' | '‘' | '’'));
    if command.is_empty() || command.chars().count() > COMMAND_LIMIT {
        return None;
    }
    Some(command.to_string())
}

/// The command named in a line ending in `: <command>: <reason>` for one of `reasons`.
fn command_before<'a>(line: &str, reasons: impl IntoIterator<Item = &'a str>) -> Option<String> {
    for reason in reasons {
        let Some(rest) = line.strip_suffix(reason) else {
            continue;
        };
        let Some(rest) = rest.strip_suffix(": ") else {
            continue;
        };
        let rest = rest
            .strip_suffix(": cannot execute binary file")
            .unwrap_or(rest);
        let command = rest.rsplit(": ").next().unwrap_or(rest);
        if command == rest && !rest.starts_with("can't execute ") {
            // No `<prefix>: ` before the command: not a shell's message.
            continue;
        }
        if let Some(command) = clean_command(command) {
            return Some(command);
        }
    }
    None
}

fn problem_in_line(code: i32, line: &str) -> Option<CommandProblem> {
    let line = line.trim_end();
    match code {
        127 => {
            if let Some((_, command)) = line.split_once(": command not found: ") {
                return clean_command(command).map(|command| CommandProblem {
                    command,
                    detail: None,
                });
            }
            command_before(line, NOT_FOUND).map(|command| CommandProblem {
                command,
                detail: None,
            })
        }
        126 => NOT_EXECUTABLE.iter().find_map(|(reason, detail)| {
            command_before(line, [*reason]).map(|command| CommandProblem {
                command,
                detail: Some(*detail),
            })
        }),
        _ => None,
    }
}

/// What the last line of stderr that explains `code` (126 or 127) says.
pub fn command_problem(code: i32, stderr: &[u8]) -> Option<CommandProblem> {
    let tail = &stderr[stderr.len().saturating_sub(STDERR_TAIL_BYTES)..];
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .find_map(|line| problem_in_line(code, line))
}

/// The error of a process that exited with `code` (not 0): `exited with code N`, and for 127
/// and 126 what that means, naming the command when stderr tells it and the image when known.
pub fn exit_error(code: i32, stderr: &[u8], image: Option<&str>) -> String {
    let image = match image {
        Some(image) => format!("image {image}"),
        None => "this image".to_string(),
    };
    match (code, command_problem(code, stderr)) {
        (127, Some(problem)) => format!(
            "exited with code 127: command not found: {:?} is not in {image} (or not on the action's PATH)",
            problem.command
        ),
        (127, None) => format!(
            "exited with code 127: command not found (the shell's code for a command that is not in {image} or not on the action's PATH)"
        ),
        (126, Some(problem)) => format!(
            "exited with code 126: not executable: {:?} was found in {image} but cannot be executed ({})",
            problem.command,
            problem.detail.unwrap_or("permission denied")
        ),
        (126, None) => format!(
            "exited with code 126: not executable (the shell's code for a command found in {image} that cannot be executed: no execute permission, a noexec mount, or not a program)"
        ),
        (code, _) => format!("exited with code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(code: i32, stderr: &str) -> Option<String> {
        command_problem(code, stderr.as_bytes()).map(|problem| problem.command)
    }

    #[test]
    fn shells_messages_for_a_missing_command_name_it() {
        for (stderr, expected) in [
            ("sh: 1: jq: not found\n", "jq"),
            (
                "/opt/attune/packs/p/actions/a.sh: line 3: jq: not found\n",
                "jq",
            ),
            (
                "/opt/attune/packs/p/actions/a.sh: line 3: jq: command not found\n",
                "jq",
            ),
            ("zsh:1: command not found: jq\n", "jq"),
            (
                "/usr/bin/env: 'python9': No such file or directory\n",
                "python9",
            ),
            (
                "env: can't execute 'python9': No such file or directory\n",
                "python9",
            ),
            (
                "a.sh: line 2: /opt/tool: No such file or directory\n",
                "/opt/tool",
            ),
            (
                "starting\nsh: 1: first: not found\nsh: 1: second: not found\n",
                "second",
            ),
        ] {
            assert_eq!(
                command(127, stderr).as_deref(),
                Some(expected),
                "{stderr:?}"
            );
        }
        assert_eq!(command(127, "all good\n"), None);
        assert_eq!(
            command(127, "not found\n"),
            None,
            "no command before the reason"
        );
        assert_eq!(command(1, "sh: 1: jq: not found\n"), None, "only for 127");
    }

    #[test]
    fn shells_messages_for_a_command_that_cannot_run_name_it_and_why() {
        for (stderr, expected, detail) in [
            (
                "sh: 1: ./tool: Permission denied\n",
                "./tool",
                "permission denied",
            ),
            (
                "a.sh: line 1: ./tool: Permission denied\n",
                "./tool",
                "permission denied",
            ),
            (
                "a.sh: line 1: ./arm: cannot execute binary file: Exec format error\n",
                "./arm",
                "exec format error",
            ),
            (
                "sh: ./arm: Exec format error\n",
                "./arm",
                "exec format error",
            ),
            (
                "a.sh: line 1: /tmp: Is a directory\n",
                "/tmp",
                "is a directory",
            ),
        ] {
            assert_eq!(
                command_problem(126, stderr.as_bytes()),
                Some(CommandProblem {
                    command: expected.to_string(),
                    detail: Some(detail)
                }),
                "{stderr:?}"
            );
        }
    }

    #[test]
    fn messages_name_the_command_and_the_image_and_keep_the_code() {
        let stderr = b"sh: 1: jq: not found\n";
        assert_eq!(
            exit_error(127, stderr, Some("busybox:1.36")),
            "exited with code 127: command not found: \"jq\" is not in image busybox:1.36 (or not on the action's PATH)"
        );
        assert!(exit_error(127, b"", None).starts_with(
            "exited with code 127: command not found (the shell's code for a command that is not in this image"
        ));
        assert_eq!(
            exit_error(126, b"sh: 1: ./tool: Permission denied\n", Some("busybox:1.36")),
            "exited with code 126: not executable: \"./tool\" was found in image busybox:1.36 but cannot be executed (permission denied)"
        );
        assert!(
            exit_error(126, b"", Some("x")).starts_with("exited with code 126: not executable (")
        );
        assert_eq!(
            exit_error(3, b"sh: 1: jq: not found\n", None),
            "exited with code 3"
        );
    }

    #[test]
    fn odd_bytes_in_the_command_are_quoted_not_copied() {
        let message = exit_error(127, b"sh: 1: j\x00q\x1b: not found\n", Some("img"));
        assert!(
            !message.contains('\0') && !message.contains('\u{1b}'),
            "{message}"
        );
        assert!(message.contains(r#""j\0q\u{1b}""#), "{message}");
    }
}
