//! Rooms: named groups of connections whose handlers talk to each other,
//! the host side of `hotsock:plugin/rooms` (contract 0.2.0).
//!
//! A handler instance lives for one connection and shares no memory with any
//! other, so what the classic thread server kept in a global (the list of
//! chat clients) lives here, in the host, one [`Rooms`] per listener: it
//! outlasts every connection and every swap, so members served by an old
//! version and a new one hear each other.
//!
//! Delivery never waits for a slow member. Each member has a [`Mailbox`]: a
//! queue of whole messages and the right to write to its socket. A publisher
//! queues the message, then, if no one else is writing to that socket,
//! sends what the socket takes right away, without blocking; what it does
//! not take is finished by the member's own thread while its handler waits
//! in `read` or `write`, or by the next publisher. A member whose queue grows
//! past the room backlog is disconnected instead. Whoever writes holds the
//! mailbox's writer lock until a message is out whole, so a message never
//! lands inside one of the handler's own writes, nor they inside it.
//!
//! A listener's rooms may span other processes ([`Elsewhere`]): every process
//! on one Redis (`--rooms-store`, `fleet`), or the old and new processes of
//! a binary upgrade while both serve (`bridge`). Joins, leaves and messages
//! are then also handed over there, members there count in `members`, and
//! what they publish arrives through [`Local::deliver`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};

use log::warn;

use crate::sys::{self, Wakeup};
use crate::wire::Wire;

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 128;

/// Most rooms one connection may be in at once.
pub const MAX_ROOMS_PER_CONNECTION: usize = 32;

/// Default most bytes queued for one member before it is disconnected:
/// `--room-backlog`.
pub const DEFAULT_ROOM_BACKLOG: usize = 1 << 20;

/// Why a room operation was refused: the contract's `refused`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// The rooms of one listener.
#[derive(Debug)]
pub struct Rooms {
    rooms: Mutex<HashMap<String, Vec<Arc<Mailbox>>>>,
    /// Most bytes queued for one member: `--room-backlog`, changed on reload.
    backlog: AtomicUsize,
    /// Members disconnected for falling behind, for metrics.
    disconnected: AtomicU64,
    /// The other processes they span, if any, and the listener's name there.
    elsewhere: Option<(Arc<dyn Elsewhere>, String)>,
}

/// Other processes a listener's rooms span: what this process tells them.
pub(crate) trait Elsewhere: Send + Sync + std::fmt::Debug {
    /// `data`, published by `from` to `room` of `listener`, for their members.
    fn publish(&self, listener: &str, from: u64, room: &str, data: &[u8]);
    /// `id` joined (`joined`) or left `room` of `listener`.
    fn presence(&self, listener: &str, room: &str, id: u64, joined: bool);
    /// Their members of `room` of `listener`, or `None` if they cannot say
    /// in time.
    fn members(&self, listener: &str, room: &str) -> Option<Vec<u64>>;
}

/// What a listener's rooms do for other processes.
pub(crate) trait Local: Send + Sync {
    /// Queues for the members here what another process published to `room`.
    fn deliver(&self, room: &str, data: &[u8]);
    /// Every room with members here, and their ids.
    fn memberships(&self) -> Vec<(String, Vec<u64>)>;
}

impl Default for Rooms {
    fn default() -> Self {
        Rooms::new(DEFAULT_ROOM_BACKLOG)
    }
}

impl Rooms {
    /// No rooms yet; a member with more than `backlog` bytes waiting for it is
    /// disconnected.
    pub fn new(backlog: usize) -> Self {
        Rooms {
            rooms: Mutex::new(HashMap::new()),
            backlog: AtomicUsize::new(backlog),
            disconnected: AtomicU64::new(0),
            elsewhere: None,
        }
    }

    /// The rooms of the listener called `listener`, spanning `elsewhere`:
    /// their members hear each other. `elsewhere` is to deliver what is
    /// published there through [`Local`].
    pub(crate) fn spanning(
        backlog: usize,
        elsewhere: Arc<dyn Elsewhere>,
        listener: &str,
    ) -> Arc<Self> {
        Arc::new(Rooms {
            elsewhere: Some((elsewhere, listener.to_string())),
            ..Rooms::new(backlog)
        })
    }

    /// Changes the backlog limit, for messages published from now on.
    pub fn set_backlog(&self, backlog: usize) {
        self.backlog.store(backlog, Ordering::Relaxed);
    }

    /// Members disconnected so far because their backlog was over the limit.
    pub fn disconnected(&self) -> u64 {
        self.disconnected.load(Ordering::Relaxed)
    }

    /// How many rooms have members, and how many memberships there are.
    pub fn size(&self) -> (usize, usize) {
        let rooms = sys::lock(&self.rooms);
        (rooms.len(), rooms.values().map(Vec::len).sum())
    }

    /// Adds `member` to `room`; joining a room twice is joining it once.
    pub fn join(&self, room: &str, member: &Arc<Mailbox>) -> Result<(), Refused> {
        check_name(room)?;
        let mut rooms = sys::lock(&self.rooms);
        let members = rooms.entry(room.to_string()).or_default();
        if members.iter().any(|m| m.id == member.id) {
            return Ok(());
        }
        members.push(Arc::clone(member));
        drop(rooms);
        self.tell_fleet(room, member.id, true);
        Ok(())
    }

    /// What other processes deliver to, through [`Local`].
    pub(crate) fn local(self: &Arc<Self>) -> Weak<dyn Local> {
        let local: Arc<dyn Local> = self.clone();
        Arc::downgrade(&local)
    }

    /// Hands a join or leave to the other processes, if any.
    fn tell_fleet(&self, room: &str, id: u64, joined: bool) {
        if let Some((elsewhere, listener)) = &self.elsewhere {
            elsewhere.presence(listener, room, id, joined);
        }
    }

    /// Takes the connection `id` out of `room`, if it is there.
    pub fn leave(&self, room: &str, id: u64) {
        let mut rooms = sys::lock(&self.rooms);
        let Some(members) = rooms.get_mut(room) else {
            return;
        };
        let before = members.len();
        members.retain(|m| m.id != id);
        let left = members.len() < before;
        if members.is_empty() {
            rooms.remove(room);
        }
        drop(rooms);
        if left {
            self.tell_fleet(room, id, false);
        }
    }

    /// The ids of `room`'s members now: this process's in the order they
    /// joined, then (in a fleet) the other processes', by id. A fleet
    /// store that does not answer within its timeout leaves only this
    /// process's.
    pub fn members(&self, room: &str) -> Vec<u64> {
        let mut ids: Vec<u64> = sys::lock(&self.rooms)
            .get(room)
            .map(|members| members.iter().map(|m| m.id).collect())
            .unwrap_or_default();
        if let Some((elsewhere, listener)) = &self.elsewhere
            && check_name(room).is_ok()
            && let Some(mut others) = elsewhere.members(listener, room)
        {
            others.sort_unstable();
            ids.extend(others);
        }
        ids
    }

    /// Queues `data` for every member of `room` but `from`, and returns for how
    /// many on this process; in a fleet, hands it to the store for the
    /// others. Never waits on a member: one that would have more than the
    /// backlog waiting is disconnected instead.
    pub fn publish(&self, from: u64, room: &str, data: &[u8]) -> Result<u32, Refused> {
        check_name(room)?;
        let backlog = self.backlog.load(Ordering::Relaxed);
        if data.len() > backlog {
            return Err(Refused(format!(
                "a message of {} bytes is more than the room backlog ({backlog} bytes) any member may have waiting",
                data.len()
            )));
        }
        let queued = self.post(from, room, data, backlog);
        if let Some((elsewhere, listener)) = &self.elsewhere {
            elsewhere.publish(listener, from, room, data);
        }
        Ok(queued)
    }

    /// Queues `data` for every member of `room` here but `from`; returns
    /// for how many.
    fn post(&self, from: u64, room: &str, data: &[u8], backlog: usize) -> u32 {
        // The members are copied out so that no member's socket is ever
        // touched with the rooms locked.
        let members: Vec<Arc<Mailbox>> = match sys::lock(&self.rooms).get(room) {
            Some(members) => members.iter().filter(|m| m.id != from).cloned().collect(),
            None => return 0,
        };
        if members.is_empty() {
            return 0;
        }
        let message: Arc<[u8]> = Arc::from(data);
        let mut queued = 0;
        for member in members {
            match member.post(&message, backlog) {
                Posted::Queued => queued += 1,
                Posted::Gone => {}
                Posted::OverBacklog(waiting) => self.cut_off(&member, room, waiting, backlog),
            }
        }
        queued
    }

    /// Disconnects a member that fell too far behind, and takes it out of
    /// every room at once so that no one publishes to it any more.
    fn cut_off(&self, member: &Mailbox, room: &str, waiting: usize, backlog: usize) {
        member.close();
        self.disconnected.fetch_add(1, Ordering::Relaxed);
        let mut rooms = sys::lock(&self.rooms);
        let mut was_in = Vec::new();
        rooms.retain(|name, members| {
            let before = members.len();
            members.retain(|m| m.id != member.id);
            if members.len() < before {
                was_in.push(name.clone());
            }
            !members.is_empty()
        });
        drop(rooms);
        for name in was_in {
            self.tell_fleet(&name, member.id, false);
        }
        warn!(
            "conn {}: disconnected: {waiting} bytes of room `{room}` messages would be waiting for \
             it, more than --room-backlog ({backlog} bytes); its client reads too slowly",
            member.id
        );
    }
}

impl Local for Rooms {
    /// Queues for this process's members what another process in the fleet
    /// published to `room`.
    fn deliver(&self, room: &str, data: &[u8]) {
        let backlog = self.backlog.load(Ordering::Relaxed);
        // Its publisher's backlog may be larger: no member here may take it.
        if check_name(room).is_ok() && data.len() <= backlog {
            self.post(NO_ONE, room, data, backlog);
        }
    }

    /// Every room with members here, and their ids: what this process
    /// tells another that lost track of it, or has just started.
    fn memberships(&self) -> Vec<(String, Vec<u64>)> {
        let rooms = sys::lock(&self.rooms);
        rooms
            .iter()
            .map(|(room, members)| (room.clone(), members.iter().map(|m| m.id).collect()))
            .collect()
    }
}

/// The publisher of a message from another process: no connection here.
const NO_ONE: u64 = 0;

/// Checks a room name against the limits.
fn check_name(room: &str) -> Result<(), Refused> {
    if room.is_empty() {
        return Err(Refused("a room needs a name".into()));
    }
    if room.len() > MAX_ROOM_NAME {
        return Err(Refused(format!(
            "a room name is at most {MAX_ROOM_NAME} bytes, not {}",
            room.len()
        )));
    }
    Ok(())
}

/// What became of a message posted to a mailbox.
enum Posted {
    /// Queued, and maybe sent already.
    Queued,
    /// The member is gone or cut off already.
    Gone,
    /// Not queued: the member would have this many bytes waiting.
    OverBacklog(usize),
}

/// One member's messages on their way to its client, and the right to write
/// to its socket.
#[derive(Debug)]
pub struct Mailbox {
    id: u64,
    /// The member's socket, or TLS over it: messages are encrypted as they go.
    wire: Arc<Wire>,
    outbox: Mutex<Outbox>,
    /// Held by whoever writes to the socket (a publisher, or the member's own
    /// thread), until what it writes is out whole.
    writer: Mutex<()>,
    /// Woken when messages are left waiting for the socket to take them, so
    /// that the member's thread, waiting for its client, finishes the job.
    wakeup: Wakeup,
}

#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Arc<[u8]>>,
    /// How much of the front message is already sent.
    sent: usize,
    /// Bytes queued and not yet sent.
    waiting: usize,
    /// Cut off or gone: take nothing more.
    closed: bool,
}

impl Outbox {
    /// Takes nothing more, and drops what nobody will ever read.
    fn close(&mut self) {
        self.closed = true;
        self.queue.clear();
        self.waiting = 0;
    }
}

impl Mailbox {
    /// A mailbox for the connection `id` on `wire`.
    pub fn new(id: u64, wire: Arc<Wire>) -> io::Result<Self> {
        Ok(Mailbox {
            id,
            wire,
            outbox: Mutex::new(Outbox::default()),
            writer: Mutex::new(()),
            wakeup: Wakeup::new()?,
        })
    }

    /// The connection it belongs to.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What the member's thread polls to learn that messages wait.
    pub fn wakeup(&self) -> &Wakeup {
        &self.wakeup
    }

    /// Whether messages (or the TLS records of sent ones) are waiting for
    /// the socket.
    pub fn has_waiting(&self) -> bool {
        sys::lock(&self.outbox).waiting > 0 || self.wire.has_output()
    }

    /// Whether it was cut off or its client is gone.
    pub fn is_closed(&self) -> bool {
        sys::lock(&self.outbox).closed
    }

    /// Takes nothing more and shuts the socket down, which ends whatever its
    /// own thread is waiting for.
    pub fn close(&self) {
        sys::lock(&self.outbox).close();
        self.wire.shutdown();
    }

    /// Queues `message` unless that would leave more than `backlog` bytes
    /// waiting, then sends what the socket takes now.
    fn post(&self, message: &Arc<[u8]>, backlog: usize) -> Posted {
        {
            let mut outbox = sys::lock(&self.outbox);
            if outbox.closed {
                return Posted::Gone;
            }
            let waiting = outbox.waiting + message.len();
            if waiting > backlog {
                return Posted::OverBacklog(waiting);
            }
            outbox.queue.push_back(Arc::clone(message));
            outbox.waiting = waiting;
        }
        self.pump();
        Posted::Queued
    }

    /// Sends what is waiting, without blocking, unless someone else is
    /// writing: then that writer sends it, since it looks again after letting
    /// go (see [`Mailbox::write`]). What the socket does not take now is left
    /// to the member's thread, which is woken.
    pub fn pump(&self) {
        loop {
            let guard = match self.writer.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            let stuck = self.flush(&guard, false);
            drop(guard);
            if stuck {
                self.wakeup.wake();
                return;
            }
            // A message queued while this thread held the lock was left to it.
            if !self.has_waiting() {
                return;
            }
        }
    }

    /// Sends what is waiting, from the member's own thread once its socket
    /// can take more.
    pub fn send_waiting(&self) {
        let guard = sys::lock(&self.writer);
        self.flush(&guard, false);
    }

    /// Writes `data` for the member's own handler: first whatever messages
    /// are waiting, whole, then `data`, all blocking, with the writer lock
    /// held throughout so nothing lands in between.
    pub fn write(&self, data: &[u8]) -> io::Result<()> {
        let guard = sys::lock(&self.writer);
        self.flush(&guard, true);
        let written = self.wire.write_all(data);
        drop(guard);
        // Messages queued while the lock was held were left to this thread.
        if self.has_waiting() {
            self.pump();
        }
        written
    }

    /// Sends waiting messages, in order, with the writer lock held. Blocking,
    /// it waits for the socket; otherwise it stops where the socket is full
    /// and returns true if anything is left.
    fn flush(&self, _writer: &MutexGuard<'_, ()>, blocking: bool) -> bool {
        loop {
            let front = {
                let outbox = sys::lock(&self.outbox);
                let front = outbox.queue.front();
                front.map(|message| (Arc::clone(message), outbox.sent))
            };
            // Over TLS, sending a message is encrypting it: its records may
            // still wait for the socket once the queue is empty.
            let sending = match &front {
                Some((message, sent)) => self.wire.send_now(&message[*sent..]),
                None => self.wire.drain().map(|()| 0),
            };
            match sending {
                Ok(n) => {
                    let Some((message, _)) = front else {
                        return false;
                    };
                    let mut outbox = sys::lock(&self.outbox);
                    // `close` may have emptied the queue meanwhile.
                    if outbox.closed {
                        return false;
                    }
                    outbox.sent += n;
                    outbox.waiting -= n;
                    if outbox.sent == message.len() {
                        outbox.queue.pop_front();
                        outbox.sent = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !blocking {
                        return true;
                    }
                    let mut fds = [libc::pollfd {
                        fd: self.wire.fd().as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    }];
                    // Woken by space, or by the watchdog's or a publisher's shutdown.
                    if sys::poll(&mut fds, None).is_err() {
                        return false;
                    }
                }
                // The client is gone: nothing queued will ever reach it.
                Err(_) => {
                    sys::lock(&self.outbox).close();
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::net::{TcpListener, TcpStream};

    fn pair(id: u64) -> (Arc<Mailbox>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (
            Arc::new(Mailbox::new(id, Arc::new(Wire::plain(Arc::new(server)))).unwrap()),
            client,
        )
    }

    #[test]
    fn a_message_reaches_every_member_but_its_publisher() {
        let rooms = Rooms::default();
        let (a, mut a_client) = pair(1);
        let (b, mut b_client) = pair(2);
        rooms.join("lobby", &a).unwrap();
        rooms.join("lobby", &b).unwrap();
        rooms.join("lobby", &b).unwrap();
        assert_eq!(rooms.members("lobby"), vec![1, 2]);
        assert_eq!(rooms.publish(1, "lobby", b"hi\n"), Ok(1));
        let mut got = [0; 3];
        b_client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi\n");
        a_client.set_nonblocking(true).unwrap();
        assert!(
            a_client.read(&mut got).is_err(),
            "the publisher hears nothing"
        );
        rooms.leave("lobby", 2);
        assert_eq!(rooms.publish(1, "lobby", b"x"), Ok(0));
        rooms.leave("lobby", 1);
        assert_eq!(rooms.size(), (0, 0));
    }

    #[test]
    fn a_member_that_never_reads_is_cut_off_at_its_backlog() {
        let rooms = Rooms::new(64 * 1024);
        let (slow, _never_read) = pair(1);
        rooms.join("r", &slow).unwrap();
        let chunk = vec![b'x'; 16 * 1024];
        let mut cut = false;
        // The socket buffers take megabytes first; 4,000 x 16 KiB is far more.
        for _ in 0..4000 {
            rooms.publish(2, "r", &chunk).unwrap();
            if rooms.disconnected() == 1 {
                cut = true;
                break;
            }
        }
        assert!(cut, "never cut off");
        assert!(slow.is_closed());
        assert!(rooms.members("r").is_empty());
    }

    #[test]
    fn names_and_sizes_are_checked() {
        let rooms = Rooms::new(10);
        let (a, _client) = pair(1);
        assert!(rooms.join("", &a).is_err());
        assert!(rooms.join(&"r".repeat(MAX_ROOM_NAME + 1), &a).is_err());
        rooms.join(&"r".repeat(MAX_ROOM_NAME), &a).unwrap();
        assert!(rooms.publish(2, "x", &[0; 11]).is_err());
    }
}
