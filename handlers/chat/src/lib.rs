//! The classic chat server, one connection per instance: every client picks a
//! nickname, joins the room `lobby`, and each line it types goes to everyone
//! else in the room as `<NICK> text`.
//!
//! The instances share no memory: the host keeps the room (who is in it, and
//! writing what is published to each member), and a key-value bucket keeps
//! the nicknames, so `/who` can name the others. The bucket is `chat`, given
//! by the operator with `hotsock serve --keyvalue chat`; without it the chat
//! works the same, but `/who` can only count the members, and two clients
//! may pick the same nickname.
//!
//! | the client types | what happens                                                  |
//! |------------------|---------------------------------------------------------------|
//! | a line           | the others get `<NICK> line`; the sender sees nothing back    |
//! | `/who`           | `N online: nick1, nick2` (with the bucket), else `N online`   |
//! | `/nick NEW`      | renames; the others get `* OLD is now NEW`                    |
//! | `/quit`          | `bye`, the others get `* NICK left`; closing does the same    |
//!
//! Lines over 1 KiB are not sent (the client is told); nicknames are 1 to 32
//! letters, digits, `-` or `_`. Control characters are removed from what is
//! passed on, so no client can send terminal escapes to the others.

wit_bindgen::generate!({ path: "../../wit", world: "plugin", generate_all });

use exports::hotsock::plugin::handler::Guest;
use hotsock::plugin::rooms;
use hotsock::plugin::types::{Connection, ErrorCode};
use wasi::keyvalue::store::{self, Bucket};

/// The one room everybody talks in.
const ROOM: &str = "lobby";
/// The key-value bucket that maps connection ids to nicknames, if granted.
const BUCKET: &str = "chat";
/// The longest line passed on, newline excluded.
const MAX_LINE: usize = 1024;
/// The longest nickname.
const MAX_NICK: usize = 32;

struct Chat;

impl Guest for Chat {
    fn handle(conn: &Connection) -> Result<(), String> {
        let mut lines = Lines::default();
        // Without the bucket, nicknames are known only to their own instance.
        let names = Names::open(conn.id());
        let Some(mut nick) = ask_nickname(conn, &mut lines, &names) else {
            return Ok(());
        };
        names.set(&nick);
        if let Err(code) = rooms::join(conn, ROOM) {
            names.remove();
            let _ = say(conn, "sorry, the chat is closed right now\n");
            return Err(format!("cannot join {ROOM}: {code:?}"));
        }
        let _ = rooms::publish(conn, ROOM, format!("* {nick} joined\n").as_bytes());
        let online = rooms::members(ROOM).len();
        let you = if online <= 1 { " (you)" } else { "" };
        let greeting = format!(
            "welcome, {nick}: {online} online{you}. Type to talk; /who, /nick NEW, /quit\n"
        );

        let mut quit = false;
        if say(conn, &greeting).is_ok() {
            loop {
                let line = match lines.next(conn) {
                    Line::Text(line) => line,
                    Line::TooLong => {
                        let refusal = format!("not sent: lines are {MAX_LINE} bytes at most\n");
                        if say(conn, &refusal).is_err() {
                            break;
                        }
                        continue;
                    }
                    Line::End => break,
                };
                let answer = match command(&line) {
                    Command::Empty => continue,
                    Command::Quit => {
                        quit = true;
                        break;
                    }
                    Command::Who => who(&names),
                    Command::Nick(new) => rename(conn, &names, &mut nick, new),
                    Command::Unknown => "commands: /who, /nick NEW, /quit\n".to_string(),
                    Command::Say(text) => {
                        match rooms::publish(conn, ROOM, format!("<{nick}> {text}\n").as_bytes()) {
                            Ok(_) => continue,
                            Err(ErrorCode::Closed) => break,
                            Err(_) => "not sent: the server refused it\n".to_string(),
                        }
                    }
                };
                if say(conn, &answer).is_err() {
                    break;
                }
            }
        }

        let _ = rooms::publish(conn, ROOM, format!("* {nick} left\n").as_bytes());
        rooms::leave(conn, ROOM);
        names.remove();
        if quit {
            let _ = say(conn, "bye\n");
        }
        Ok(())
    }
}

/// Asks until the client gives a valid nickname that nobody online has, or
/// leaves (`None`).
fn ask_nickname(conn: &Connection, lines: &mut Lines, names: &Names) -> Option<String> {
    loop {
        say(conn, "nickname? ").ok()?;
        let line = match lines.next(conn) {
            Line::Text(line) => line,
            Line::TooLong => String::new(),
            Line::End => return None,
        };
        let nick = line.trim();
        let problem = if !valid_nick(nick) {
            format!("a nickname is 1 to {MAX_NICK} letters, digits, '-' or '_'\n")
        } else if names.taken(nick) {
            format!("{nick} is taken, choose another\n")
        } else {
            return Some(nick.to_string());
        };
        say(conn, &problem).ok()?;
    }
}

/// `/who`: how many are online, and their nicknames when the bucket knows them.
fn who(names: &Names) -> String {
    let mut ids = rooms::members(ROOM);
    ids.sort_unstable();
    if names.bucket.is_none() {
        return format!(
            "{} online (the server keeps no nicknames: serve with --keyvalue {BUCKET})\n",
            ids.len()
        );
    }
    let nicks: Vec<String> = ids.iter().map(|&id| names.get(id)).collect();
    format!("{} online: {}\n", ids.len(), nicks.join(", "))
}

/// `/nick NEW`: the answer to give the client.
fn rename(conn: &Connection, names: &Names, nick: &mut String, new: &str) -> String {
    if !valid_nick(new) {
        return format!("a nickname is 1 to {MAX_NICK} letters, digits, '-' or '_'\n");
    }
    if new != nick.as_str() && names.taken(new) {
        return format!("{new} is taken, choose another\n");
    }
    let notice = format!("* {nick} is now {new}\n");
    let _ = rooms::publish(conn, ROOM, notice.as_bytes());
    *nick = new.to_string();
    names.set(nick);
    format!("you are now {nick}\n")
}

fn valid_nick(nick: &str) -> bool {
    (1..=MAX_NICK).contains(&nick.len())
        && nick
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

enum Command<'a> {
    Empty,
    Who,
    Nick(&'a str),
    Quit,
    Unknown,
    Say(&'a str),
}

fn command(line: &str) -> Command<'_> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Command::Empty;
    }
    if !trimmed.starts_with('/') {
        return Command::Say(line.trim_end());
    }
    let (name, arg) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
    match name {
        "/who" => Command::Who,
        "/nick" => Command::Nick(arg.trim()),
        "/quit" => Command::Quit,
        _ => Command::Unknown,
    }
}

/// Writes `text` to this client.
fn say(conn: &Connection, text: &str) -> Result<(), ErrorCode> {
    conn.write(text.as_bytes())
}

/// The nicknames of everyone online, in the `chat` bucket under their
/// connection ids (unique in the server process, or across a fleet sharing a
/// rooms store), when the operator granted it.
struct Names {
    bucket: Option<Bucket>,
    id: u64,
}

impl Names {
    fn open(id: u64) -> Self {
        Names {
            bucket: store::open(BUCKET).ok(),
            id,
        }
    }

    fn key(id: u64) -> String {
        format!("nick/{id}")
    }

    fn set(&self, nick: &str) {
        if let Some(bucket) = &self.bucket {
            let _ = bucket.set(&Self::key(self.id), nick.as_bytes());
        }
    }

    fn remove(&self) {
        if let Some(bucket) = &self.bucket {
            let _ = bucket.delete(&Self::key(self.id));
        }
    }

    /// The nickname of connection `id`, or `#ID` if it has none stored.
    fn get(&self, id: u64) -> String {
        self.bucket
            .as_ref()
            .and_then(|bucket| bucket.get(&Self::key(id)).ok().flatten())
            .map(|nick| String::from_utf8_lossy(&nick).into_owned())
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// Whether someone else online goes by `nick` (any case). Always false
    /// without the bucket: then nobody can know.
    fn taken(&self, nick: &str) -> bool {
        self.bucket.is_some()
            && rooms::members(ROOM)
                .into_iter()
                .filter(|&id| id != self.id)
                .any(|id| self.get(id).eq_ignore_ascii_case(nick))
    }
}

/// What the client sent next.
enum Line {
    /// A line, without its line ending and control characters.
    Text(String),
    /// A line over [`MAX_LINE`] bytes, skipped whole.
    TooLong,
    /// The client closed, or the connection failed.
    End,
}

/// The client's bytes, cut into lines.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
    /// Inside a line that is too long: drop bytes until its end.
    skipping: bool,
}

impl Lines {
    fn next(&mut self, conn: &Connection) -> Line {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if std::mem::take(&mut self.skipping) || line.len() - 1 > MAX_LINE {
                    return Line::TooLong;
                }
                let text = String::from_utf8_lossy(&line);
                return Line::Text(text.chars().filter(|c| !c.is_control()).collect());
            }
            if self.pending.len() > MAX_LINE {
                self.pending.clear();
                self.skipping = true;
            }
            match conn.read(4096) {
                Ok(bytes) if !bytes.is_empty() => self.pending.extend_from_slice(&bytes),
                _ => return Line::End,
            }
        }
    }
}

export!(Chat);
