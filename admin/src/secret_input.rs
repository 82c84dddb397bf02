//! Reading a secret from standard input, never from the command line (where `ps`, shell history
//! and audit logs would keep it). On a terminal: a prompt on stderr, echo off, one line. From a
//! pipe or a file: everything, less one trailing newline (`echo` adds one, `echo -n` does not).

use std::io::{IsTerminal, Read};

use kick_shared::exit::{Exit, ExitError};
use secrecy::SecretString;

/// The longest value `config set` stores.
pub const MAX_VALUE: usize = 64 * 1024;

/// Reads a secret for `key` from standard input. An empty secret is bad input (65); the
/// plaintext is never part of an error.
pub fn read(key: &str) -> anyhow::Result<SecretString> {
    let stdin = std::io::stdin();
    let mut text = if stdin.is_terminal() {
        tty::read_hidden_line(&format!("{key} (input hidden): "))?
    } else {
        let mut buf = Vec::new();
        stdin
            .lock()
            .take(MAX_VALUE as u64 + 2)
            .read_to_end(&mut buf)?;
        String::from_utf8(buf).map_err(|_| {
            ExitError::new(Exit::DataErr, "the secret on standard input is not UTF-8")
        })?
    };
    strip_one_newline(&mut text);
    if text.len() > MAX_VALUE {
        return Err(ExitError::new(Exit::DataErr, "value too long (64 KiB at most)").into());
    }
    if text.is_empty() {
        return Err(ExitError::new(
            Exit::DataErr,
            format!("empty secret for {key}: nothing was stored"),
        )
        .into());
    }
    Ok(SecretString::from(text))
}

/// Removes one trailing `\n` (or `\r\n`), no more: a secret may end in whitespace.
fn strip_one_newline(text: &mut String) {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
}

#[allow(unsafe_code)]
mod tty {
    //! Echo off while the secret is typed, through termios. If a signal (Ctrl-C) ends the
    //! process during the prompt, the terminal's settings are restored first: a shell left
    //! without echo is a bad way to end.

    use std::io::{BufRead, Write};
    use std::sync::OnceLock;

    /// The terminal's settings before the prompt, for the signal handler.
    static SAVED: OnceLock<libc::termios> = OnceLock::new();

    const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

    extern "C" fn restore_and_reraise(sig: libc::c_int) {
        // SAFETY: tcsetattr, signal and raise are async-signal-safe; SAVED is set before this
        // handler is installed and never changes afterwards.
        unsafe {
            if let Some(t) = SAVED.get() {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
            }
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }

    /// Restores the terminal and the signal dispositions when the read ends, however it ends.
    struct Restore {
        termios: libc::termios,
        handlers: Vec<(libc::c_int, libc::sighandler_t)>,
    }

    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: fd 0 is the terminal whose settings were read into `termios`; the saved
            // handlers are the dispositions `signal` returned.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.termios);
                for (sig, handler) in &self.handlers {
                    libc::signal(*sig, *handler);
                }
            }
        }
    }

    /// Prints `prompt` on stderr and reads one line from the terminal on stdin without echo.
    pub fn read_hidden_line(prompt: &str) -> std::io::Result<String> {
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0 or fails.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut termios) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let saved = *SAVED.get_or_init(|| termios);
        let handler = restore_and_reraise as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: installing a handler that only calls async-signal-safe functions.
        let handlers = SIGNALS
            .iter()
            .map(|&sig| (sig, unsafe { libc::signal(sig, handler) }))
            .collect();
        let _restore = Restore {
            termios: saved,
            handlers,
        };
        let mut hidden = saved;
        hidden.c_lflag &= !libc::ECHO;
        // The Enter key still moves to a new line.
        hidden.c_lflag |= libc::ECHONL;
        // SAFETY: fd 0 is a terminal (checked by the caller); `hidden` came from tcgetattr.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSAFLUSH, &hidden) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        eprint!("{prompt}");
        std::io::stderr().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_trailing_newline_is_removed() {
        for (input, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret\n\n", "s3cret\n"),
            ("  spaced  \n", "  spaced  "),
            ("\n", ""),
        ] {
            let mut text = input.to_owned();
            strip_one_newline(&mut text);
            assert_eq!(text, want, "{input:?}");
        }
    }
}
