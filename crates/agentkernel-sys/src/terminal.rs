//! The caller's terminal: its size, and raw mode for the life of a guard (`attach` on every
//! backend).

use rustix::termios::{OptionalActions, Termios};

/// The caller's terminal size as (rows, columns), if stdout or stdin is a terminal.
pub fn size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin()))
        .ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The caller's terminal (stdin) in raw mode for the life of the value; put back as it was
/// when dropped, even on error. Nothing happens when stdin is not a terminal.
pub struct RawTerminal(Option<Termios>);

impl RawTerminal {
    pub fn enter() -> RawTerminal {
        let Ok(original) = rustix::termios::tcgetattr(std::io::stdin()) else {
            return RawTerminal(None);
        };
        let mut raw = original.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &raw).is_err() {
            return RawTerminal(None);
        }
        RawTerminal(Some(original))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(original) = &self.0 {
            let _ = rustix::termios::tcsetattr(std::io::stdin(), OptionalActions::Now, original);
        }
    }
}
