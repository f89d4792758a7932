//! The monitor's state: every record seen, the analysis models fed from them, and what the
//! user is looking at. Views render from it; input changes it only through [`App::apply`].

use std::collections::HashMap;

use qmptap::analyse::{Analyser, Options};
use qmptap::audit;
use qmptap::capture::{Located, Record};
use qmptap::session::Role;
use qmptap::transcript::Filter;
use qmptap::wire::Kind;

use crate::input::Action;

/// The views, one per tab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// The message stream and the inspector.
    Stream,
    /// The migration dashboard.
    Migration,
    /// The jobs board.
    Jobs,
    /// Top commands, latencies and errors.
    Stats,
}

impl Tab {
    /// Every tab, in order (keys 1 to 4).
    pub const ALL: [Tab; 4] = [Tab::Stream, Tab::Migration, Tab::Jobs, Tab::Stats];

    /// Its title.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Stream => "Stream",
            Tab::Migration => "Migration",
            Tab::Jobs => "Jobs",
            Tab::Stats => "Stats",
        }
    }
}

/// One record, with its place in the conversation.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Capture line.
    pub line: u64,
    /// The record.
    pub record: Record,
    /// Its role (a reply knows its request and latency).
    pub role: Role,
    /// The entry it pairs with: a request's reply, a reply's request.
    pub pair: Option<usize>,
}

impl Entry {
    /// Whether this is an error reply or a frame QEMU could not parse.
    pub fn is_error(&self) -> bool {
        matches!(&self.record, Record::Msg(m) if matches!(m.kind, Kind::Error | Kind::Invalid))
    }
}

/// Where the records come from, for the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// Still coming.
    Live,
    /// All read.
    Ended,
    /// Stopped on an error.
    Failed(String),
}

/// The whole state.
// Independent switches (paused, help, dirty, quit) are bools by nature.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub struct App {
    /// What is being shown (a file name or an address).
    pub title: String,
    /// Every record but the header, in capture order.
    pub entries: Vec<Entry>,
    /// Indexes into `entries` that the filter keeps.
    pub visible: Vec<usize>,
    /// The filter in force, and its text.
    pub filter: Filter,
    /// The filter's text as typed (`conn:1 kind:error name:query-*`).
    pub filter_text: String,
    /// The filter being edited, if the prompt is open.
    pub editing: Option<String>,
    /// Why the last filter was refused.
    pub filter_error: Option<String>,
    /// Selected row (an index into `visible`); `None` follows the newest.
    pub selected: Option<usize>,
    /// Following is paused: new records are taken in, the view stays where it is.
    pub paused: bool,
    /// Records that arrived while paused.
    pub unseen: usize,
    /// The tab shown.
    pub tab: Tab,
    /// The help overlay is open.
    pub help: bool,
    /// The analysis models (stats, jobs, migration), fed with every record.
    pub analyser: Analyser,
    /// Schema findings by capture line.
    pub findings: HashMap<u64, Vec<audit::Located>>,
    /// Which schema the findings came from, if any.
    pub schema: Option<String>,
    /// State of the feed.
    pub feed: Feed,
    /// Requests awaiting their reply: `(conn, seq) -> entry`.
    requests: HashMap<(u64, u64), usize>,
    /// Set when something changed since the last draw.
    pub dirty: bool,
    /// Set when the user asked to quit.
    pub quit: bool,
}

impl App {
    /// An empty monitor.
    pub fn new(title: impl Into<String>) -> Self {
        App {
            title: title.into(),
            entries: Vec::new(),
            visible: Vec::new(),
            filter: Filter::default(),
            filter_text: String::new(),
            editing: None,
            filter_error: None,
            selected: None,
            paused: false,
            unseen: 0,
            tab: Tab::Stream,
            help: false,
            analyser: Analyser::new(&Options::default()),
            findings: HashMap::new(),
            schema: None,
            feed: Feed::Live,
            requests: HashMap::new(),
            dirty: true,
            quit: false,
        }
    }

    /// Attaches schema findings (from `qmptap check` on the same capture).
    pub fn set_findings(&mut self, report: audit::Report) {
        self.schema = Some(report.schema);
        for f in report.findings {
            self.findings.entry(f.line).or_default().push(f);
        }
        self.dirty = true;
    }

    /// Takes in one record: pairs it, feeds the models, shows it if the filter keeps it.
    pub fn ingest(&mut self, located: Located) {
        let Located { line, record } = located;
        if matches!(record, Record::Header(_)) {
            return;
        }
        let role = self.analyser.observe(line, &record);
        let index = self.entries.len();
        let mut pair = None;
        if let Record::Msg(m) = &record {
            match &role {
                Role::Request => {
                    self.requests.insert((m.conn, m.seq), index);
                }
                Role::Reply { request_seq, .. } => {
                    if let Some(req) = self.requests.remove(&(m.conn, *request_seq)) {
                        self.entries[req].pair = Some(index);
                        pair = Some(req);
                    }
                }
                _ => {}
            }
        }
        self.entries.push(Entry {
            line,
            record,
            role,
            pair,
        });
        if self.keeps(index) {
            self.visible.push(index);
            if self.paused {
                self.unseen += 1;
            }
        }
        self.dirty = true;
    }

    fn keeps(&self, index: usize) -> bool {
        let e = &self.entries[index];
        match &e.record {
            Record::Msg(m) => self.filter.keeps(m, &e.role),
            other => {
                !self.filter.is_message_level()
                    && other.conn().is_none_or(|c| self.filter.keeps_conn(c))
            }
        }
    }

    /// The entry under the cursor: the selected one, or the newest when following.
    pub fn current(&self) -> Option<usize> {
        match self.selected {
            Some(i) => self.visible.get(i).copied(),
            None => self.visible.last().copied(),
        }
    }

    /// The cursor's row in `visible`.
    pub fn cursor(&self) -> Option<usize> {
        self.selected.or_else(|| self.visible.len().checked_sub(1))
    }

    fn move_to(&mut self, row: usize) {
        let last = self.visible.len().saturating_sub(1);
        self.selected = Some(row.min(last));
    }

    /// Applies one user action.
    pub fn apply(&mut self, action: Action) {
        self.dirty = true;
        match action {
            Action::Quit => self.quit = true,
            Action::Help => self.help = !self.help,
            Action::CloseOverlay => {
                self.help = false;
                self.editing = None;
            }
            Action::Tab(i) => {
                if let Some(t) = Tab::ALL.get(i) {
                    self.tab = *t;
                }
            }
            Action::NextTab => {
                let i = Tab::ALL.iter().position(|t| *t == self.tab).unwrap_or(0);
                self.tab = Tab::ALL[(i + 1) % Tab::ALL.len()];
            }
            Action::Up(n) => {
                let row = self.cursor().unwrap_or(0).saturating_sub(n);
                self.move_to(row);
            }
            Action::Down(n) => {
                let row = self.cursor().map_or(0, |r| r + n);
                self.move_to(row);
            }
            Action::Top => self.move_to(0),
            Action::Bottom => {
                // The end, following again.
                self.selected = None;
                self.paused = false;
                self.unseen = 0;
            }
            Action::TogglePause => {
                self.paused = !self.paused;
                if self.paused {
                    self.selected = self.cursor();
                } else {
                    self.selected = None;
                    self.unseen = 0;
                }
            }
            Action::NextError => {
                let from = self.cursor().map_or(0, |r| r + 1);
                if let Some(row) =
                    (from..self.visible.len()).find(|&r| self.entries[self.visible[r]].is_error())
                {
                    self.paused = true;
                    self.selected = Some(row);
                }
            }
            Action::StartFilter => self.editing = Some(self.filter_text.clone()),
            Action::FilterChar(c) => {
                if let Some(text) = &mut self.editing {
                    text.push(c);
                }
            }
            Action::FilterBackspace => {
                if let Some(text) = &mut self.editing {
                    text.pop();
                }
            }
            Action::ApplyFilter => {
                if let Some(text) = self.editing.take() {
                    match parse_filter(&text) {
                        Ok(filter) => {
                            self.filter = filter;
                            self.filter_text = text;
                            self.filter_error = None;
                            self.refilter();
                        }
                        Err(e) => self.filter_error = Some(e),
                    }
                }
            }
        }
    }

    fn refilter(&mut self) {
        self.visible = (0..self.entries.len()).filter(|&i| self.keeps(i)).collect();
        self.selected = None;
        self.paused = false;
        self.unseen = 0;
    }

    /// Messages, errors and connections, for the status line.
    pub fn counts(&self) -> (usize, usize) {
        let messages = self
            .entries
            .iter()
            .filter(|e| matches!(e.record, Record::Msg(_)))
            .count();
        let errors = self.entries.iter().filter(|e| e.is_error()).count();
        (messages, errors)
    }
}

/// Parses the filter prompt: space-separated `conn:N`, `dir:c2s|s2c`, `kind:KIND` and
/// `name:GLOB` terms — the CLI's `--conn`, `--dir`, `--kind` and `--name`. A bare word is a
/// name glob.
pub fn parse_filter(text: &str) -> Result<Filter, String> {
    let mut filter = Filter::default();
    for term in text.split_whitespace() {
        let (key, value) = term.split_once(':').unwrap_or(("name", term));
        match key {
            "conn" => filter.conns.push(
                value
                    .parse()
                    .map_err(|_| format!("conn:{value}: expected a connection number"))?,
            ),
            "dir" => filter.dir = Some(Filter::parse_dir(value)?),
            "kind" => filter.kinds.push(Filter::parse_kind(value)?),
            "name" => filter.names.push(value.to_owned()),
            other => {
                return Err(format!(
                    "{other}: unknown filter term (conn:N dir:c2s|s2c kind:KIND name:GLOB)"
                ));
            }
        }
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmptap::capture::Dir;

    #[test]
    fn filter_terms_are_the_clis_flags() {
        let f = parse_filter("conn:2 dir:s2c kind:error name:query-* BLOCK_*").unwrap();
        assert_eq!(f.conns, vec![2]);
        assert_eq!(f.dir, Some(Dir::S2c));
        assert_eq!(f.kinds, vec![Kind::Error]);
        assert_eq!(f.names, vec!["query-*".to_owned(), "BLOCK_*".to_owned()]);
        assert!(
            parse_filter("conn:x")
                .unwrap_err()
                .contains("connection number")
        );
        assert!(
            parse_filter("kind:nope")
                .unwrap_err()
                .contains("expected greeting")
        );
        assert!(
            parse_filter("colour:red")
                .unwrap_err()
                .contains("unknown filter term")
        );
    }
}
