//! Keys to actions, and nothing else: a pure mapping, so it is tested without a terminal.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave.
    Quit,
    /// Open or close the help overlay.
    Help,
    /// Close the help overlay or the filter prompt.
    CloseOverlay,
    /// Show tab N (0-based).
    Tab(usize),
    /// Show the next tab.
    NextTab,
    /// Move the cursor up N rows.
    Up(usize),
    /// Move the cursor down N rows.
    Down(usize),
    /// The first row.
    Top,
    /// The newest row, following again.
    Bottom,
    /// Pause or resume following.
    TogglePause,
    /// Jump to the next error reply or unparsable frame.
    NextError,
    /// Open the filter prompt.
    StartFilter,
    /// A character typed into the filter prompt.
    FilterChar(char),
    /// Backspace in the filter prompt.
    FilterBackspace,
    /// Apply the filter typed.
    ApplyFilter,
}

/// What the keys mean at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Browsing.
    Normal,
    /// Typing a filter.
    Filter,
    /// The help overlay is open.
    Help,
}

/// The keys, for the help overlay: `(keys, what they do)`.
pub const KEYS: &[(&str, &str)] = &[
    ("q, Ctrl-C", "quit"),
    ("?", "this help (Esc closes)"),
    ("1 2 3 4, Tab", "stream, migration, jobs, stats"),
    ("j k, ↓ ↑", "next, previous message"),
    ("PgDn PgUp", "ten messages down, up"),
    ("g, Home", "first message"),
    ("G, End", "newest message, following again"),
    ("p, Space", "pause, resume following"),
    ("n, e", "next error"),
    (
        "/",
        "filter: conn:N dir:c2s|s2c kind:KIND name:GLOB (Enter applies, empty clears)",
    ),
];

/// The action a key stands for in a mode, if any.
pub fn action(key: KeyEvent, mode: Mode) -> Option<Action> {
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    match mode {
        Mode::Filter => match key.code {
            KeyCode::Enter => Some(Action::ApplyFilter),
            KeyCode::Esc => Some(Action::CloseOverlay),
            KeyCode::Backspace => Some(Action::FilterBackspace),
            KeyCode::Char(c) => Some(Action::FilterChar(c)),
            _ => None,
        },
        Mode::Help => match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            KeyCode::Esc | KeyCode::Char('?') => Some(Action::CloseOverlay),
            _ => None,
        },
        Mode::Normal => match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            KeyCode::Char('?') => Some(Action::Help),
            KeyCode::Esc => Some(Action::CloseOverlay),
            KeyCode::Char(c @ '1'..='4') => Some(Action::Tab(c as usize - '1' as usize)),
            KeyCode::Tab => Some(Action::NextTab),
            KeyCode::Char('k') | KeyCode::Up => Some(Action::Up(1)),
            KeyCode::Char('j') | KeyCode::Down => Some(Action::Down(1)),
            KeyCode::PageUp => Some(Action::Up(10)),
            KeyCode::PageDown => Some(Action::Down(10)),
            KeyCode::Char('g') | KeyCode::Home => Some(Action::Top),
            KeyCode::Char('G') | KeyCode::End => Some(Action::Bottom),
            KeyCode::Char('p' | ' ') => Some(Action::TogglePause),
            KeyCode::Char('n' | 'e') => Some(Action::NextError),
            KeyCode::Char('/') => Some(Action::StartFilter),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys_mean_what_the_help_says() {
        assert_eq!(
            action(key(KeyCode::Char('q')), Mode::Normal),
            Some(Action::Quit)
        );
        assert_eq!(
            action(key(KeyCode::Char('2')), Mode::Normal),
            Some(Action::Tab(1))
        );
        assert_eq!(
            action(key(KeyCode::Down), Mode::Normal),
            Some(Action::Down(1))
        );
        assert_eq!(
            action(key(KeyCode::PageUp), Mode::Normal),
            Some(Action::Up(10))
        );
        assert_eq!(
            action(key(KeyCode::Char('G')), Mode::Normal),
            Some(Action::Bottom)
        );
        assert_eq!(
            action(key(KeyCode::Char(' ')), Mode::Normal),
            Some(Action::TogglePause)
        );
        assert_eq!(
            action(key(KeyCode::Char('n')), Mode::Normal),
            Some(Action::NextError)
        );
        assert_eq!(
            action(key(KeyCode::Char('/')), Mode::Normal),
            Some(Action::StartFilter)
        );
        assert_eq!(action(key(KeyCode::Char('x')), Mode::Normal), None);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(action(ctrl_c, Mode::Filter), Some(Action::Quit));
    }

    #[test]
    fn the_filter_prompt_takes_every_character() {
        assert_eq!(
            action(key(KeyCode::Char('q')), Mode::Filter),
            Some(Action::FilterChar('q'))
        );
        assert_eq!(
            action(key(KeyCode::Enter), Mode::Filter),
            Some(Action::ApplyFilter)
        );
        assert_eq!(
            action(key(KeyCode::Esc), Mode::Filter),
            Some(Action::CloseOverlay)
        );
        assert_eq!(action(key(KeyCode::Char('j')), Mode::Help), None);
        assert_eq!(
            action(key(KeyCode::Char('?')), Mode::Help),
            Some(Action::CloseOverlay)
        );
    }
}
