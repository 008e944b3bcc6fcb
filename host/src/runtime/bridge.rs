//! Rooms across a binary upgrade: while the old process serves its last
//! connections and the new one serves the rest, each listener's room is one
//! room (with `--rooms-store local`; a Redis rooms store spans both already).
//!
//! The old process hands the new one one end of a Unix socket pair with its
//! listening sockets; the two ends are the bridge. Each side tells the
//! other every join, leave and message of its own, in order, as frames; on
//! connecting, each first tells the other who is in which room. A process
//! upgraded again while its parent still drains has a bridge on each side,
//! and passes on what one side tells it to the other: generations form a
//! chain, so every message reaches each process once, in its publisher's
//! order, and never comes back. A process keeps the members the others told
//! it of, by side, for `members`; when a side's bridge closes (that process
//! exited), its members are gone, here and further along the chain.
//!
//! Nothing here waits on the other process: frames are queued for a writer
//! thread of the bridge's own, and messages past [`MAX_QUEUED_BYTES`] are
//! dropped (with a log line) rather than held without bound.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::runtime::rooms::{Elsewhere, Local, Rooms};
use crate::sys;

/// Most bytes of messages queued for the other process: past it, messages
/// are dropped rather than held without bound.
const MAX_QUEUED_BYTES: usize = 64 << 20;

/// Most frames queued for the other process: joins and leaves are never
/// dropped alone (members would be wrong), so a process that stopped
/// reading this many is taken for gone, and its bridge closed.
const MAX_QUEUED_FRAMES: usize = 1 << 20;

/// Largest frame read: a message is at most the room backlog, far less.
const MAX_FRAME: usize = 256 << 20;

/// Least time between two log lines about dropped messages.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Which process a bridge leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The process this one replaced, still serving its last connections.
    Older,
    /// The process that replaced this one.
    Newer,
}

impl Side {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Side::Older => "older",
            Side::Newer => "newer",
        }
    }
}

/// What one process tells another.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    Publish {
        listener: String,
        room: String,
        from: u64,
        data: Vec<u8>,
    },
    Join {
        listener: String,
        room: String,
        id: u64,
    },
    Leave {
        listener: String,
        room: String,
        id: u64,
    },
}

const PUBLISH: u8 = 1;
const JOIN: u8 = 2;
const LEAVE: u8 = 3;

impl Frame {
    /// Length (4 bytes), kind, listener and room (each 2 bytes of length,
    /// then the bytes), an id, then a message's bytes; numbers big-endian.
    fn encode(&self) -> Vec<u8> {
        let (kind, listener, room, id, data): (u8, &str, &str, u64, &[u8]) = match self {
            Frame::Publish {
                listener,
                room,
                from,
                data,
            } => (PUBLISH, listener, room, *from, data),
            Frame::Join { listener, room, id } => (JOIN, listener, room, *id, &[]),
            Frame::Leave { listener, room, id } => (LEAVE, listener, room, *id, &[]),
        };
        let len = 1 + 2 + listener.len() + 2 + room.len() + 8 + data.len();
        let mut frame = Vec::with_capacity(4 + len);
        frame.extend_from_slice(&(len as u32).to_be_bytes());
        frame.push(kind);
        for text in [listener, room] {
            frame.extend_from_slice(&(text.len() as u16).to_be_bytes());
            frame.extend_from_slice(text.as_bytes());
        }
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(data);
        frame
    }

    /// A frame's body (after its length), if it is one.
    fn decode(body: &[u8]) -> Option<Frame> {
        let (&kind, mut rest) = body.split_first()?;
        let mut text = || -> Option<String> {
            let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            let text = std::str::from_utf8(rest.get(2..2 + len)?).ok()?.to_string();
            rest = &rest[2 + len..];
            Some(text)
        };
        let listener = text()?;
        let room = text()?;
        let id = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let data = &rest[8..];
        match kind {
            PUBLISH => Some(Frame::Publish {
                listener,
                room,
                from: id,
                data: data.to_vec(),
            }),
            JOIN if data.is_empty() => Some(Frame::Join { listener, room, id }),
            LEAVE if data.is_empty() => Some(Frame::Leave { listener, room, id }),
            _ => None,
        }
    }
}

/// One side's bridge: frames waiting for its writer.
#[derive(Debug)]
struct Peer {
    out: Mutex<Out>,
    queued: Condvar,
    socket: UnixStream,
}

#[derive(Debug, Default)]
struct Out {
    /// Encoded frames, each with the bytes it counts in `bytes` (messages
    /// count; joins and leaves, small and never dropped, do not).
    frames: VecDeque<(Vec<u8>, usize)>,
    /// Bytes of messages in `frames`.
    bytes: usize,
    /// The bridge is gone: take nothing more.
    closed: bool,
    /// Messages dropped since the last log line about it, and when that was.
    dropped: u64,
    logged: Option<Instant>,
}

impl Peer {
    /// Queues `frame`; a message over the limit is dropped instead.
    fn send(&self, frame: &Frame, side: Side) {
        let mut out = sys::lock(&self.out);
        if out.closed {
            return;
        }
        let bytes = frame.encode();
        let mut counted = 0;
        if let Frame::Publish { .. } = frame {
            if out.bytes + bytes.len() > MAX_QUEUED_BYTES {
                out.dropped += 1;
                if out
                    .logged
                    .is_none_or(|at| at.elapsed() >= DROP_LOG_INTERVAL)
                {
                    warn!(
                        "rooms bridge to the {} process: it takes messages too slowly; {} \
                         message(s) for its members dropped",
                        side.name(),
                        out.dropped
                    );
                    out.logged = Some(Instant::now());
                    out.dropped = 0;
                }
                return;
            }
            counted = bytes.len();
            out.bytes += counted;
        }
        if out.frames.len() >= MAX_QUEUED_FRAMES {
            drop(out);
            warn!(
                "rooms bridge to the {} process: it has not read {MAX_QUEUED_FRAMES} frames; \
                 closing the bridge",
                side.name()
            );
            return self.close();
        }
        out.frames.push_back((bytes, counted));
        drop(out);
        self.queued.notify_one();
    }

    /// Takes nothing more, and ends both of its threads.
    fn close(&self) {
        let mut out = sys::lock(&self.out);
        out.closed = true;
        out.frames.clear();
        drop(out);
        self.queued.notify_one();
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Writes what is queued, in order, until the bridge closes.
    fn write(&self) {
        let mut socket = &self.socket;
        loop {
            let frame = {
                let mut out = sys::lock(&self.out);
                loop {
                    if out.closed {
                        return;
                    }
                    if let Some((frame, counted)) = out.frames.pop_front() {
                        out.bytes -= counted;
                        break frame;
                    }
                    out = match self.queued.wait(out) {
                        Ok(out) => out,
                        Err(e) => e.into_inner(),
                    };
                }
            };
            if socket.write_all(&frame).is_err() {
                self.close();
                return;
            }
        }
    }
}

/// This process's bridges to the processes of an upgrade that overlap it.
#[derive(Default)]
pub struct Bridge {
    /// Each listener's rooms, by name.
    listeners: Mutex<HashMap<String, Weak<dyn Local>>>,
    /// The bridge to each side, by [`Side::index`].
    peers: Mutex<[Option<Arc<Peer>>; 2]>,
    /// Members of other processes, by listener and room, with the side
    /// that told of them.
    remote: Mutex<HashMap<(String, String), BTreeMap<u64, Side>>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers = sys::lock(&self.peers);
        f.debug_struct("Bridge")
            .field("older", &peers[0].is_some())
            .field("newer", &peers[1].is_some())
            .finish()
    }
}

impl Bridge {
    /// No bridge yet.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The rooms of the listener called `listener`, spanning the processes
    /// this one has a bridge to; a member may have `backlog` bytes waiting.
    pub fn rooms_for(self: &Arc<Self>, listener: &str, backlog: usize) -> Arc<Rooms> {
        let rooms = Rooms::spanning(backlog, self.clone(), listener);
        sys::lock(&self.listeners).insert(listener.to_string(), rooms.local());
        rooms
    }

    /// Whether the process this one replaced still serves: then this one
    /// passes on what it and the newer process tell each other, and should
    /// outlive it.
    pub fn has_older(&self) -> bool {
        sys::lock(&self.peers)[Side::Older.index()].is_some()
    }

    /// Opens the bridge to the `side` process over `socket`: tells it who
    /// is in which room here (and on the other side), then goes on telling
    /// it every join, leave and message, and hears it.
    pub fn connect(self: &Arc<Self>, side: Side, socket: UnixStream) -> io::Result<()> {
        let reader = socket.try_clone()?;
        let peer = Arc::new(Peer {
            out: Mutex::new(Out::default()),
            queued: Condvar::new(),
            socket,
        });
        {
            // Installed and told who is here in one step, so that no join or
            // leave lands between the two and is missed, or comes first.
            let mut peers = sys::lock(&self.peers);
            if let Some(old) = peers[side.index()].take() {
                old.close();
            }
            for frame in self.everyone_but(side) {
                peer.send(&frame, side);
            }
            peers[side.index()] = Some(Arc::clone(&peer));
        }
        let writer = Arc::clone(&peer);
        thread::Builder::new()
            .name(format!("rooms-bridge-{}-out", side.name()))
            .spawn(move || writer.write())?;
        let bridge = Arc::clone(self);
        thread::Builder::new()
            .name(format!("rooms-bridge-{}-in", side.name()))
            .spawn(move || bridge.read(side, &peer, reader))?;
        info!("rooms bridge to the {} process open", side.name());
        Ok(())
    }

    /// Every member this process knows of but those `side` told it of, as
    /// joins.
    fn everyone_but(&self, side: Side) -> Vec<Frame> {
        let mut frames = Vec::new();
        let listeners: Vec<(String, Arc<dyn Local>)> = sys::lock(&self.listeners)
            .iter()
            .filter_map(|(name, rooms)| Some((name.clone(), rooms.upgrade()?)))
            .collect();
        for (listener, rooms) in listeners {
            for (room, ids) in rooms.memberships() {
                frames.extend(ids.into_iter().map(|id| Frame::Join {
                    listener: listener.clone(),
                    room: room.clone(),
                    id,
                }));
            }
        }
        for ((listener, room), members) in sys::lock(&self.remote).iter() {
            let told = members.iter().filter(|(_, from)| **from != side);
            frames.extend(told.map(|(id, _)| Frame::Join {
                listener: listener.clone(),
                room: room.clone(),
                id: *id,
            }));
        }
        frames
    }

    /// Sends `frame` to every side but `not`.
    fn send(&self, frame: &Frame, not: Option<Side>) {
        let peers = sys::lock(&self.peers).clone();
        for side in [Side::Older, Side::Newer] {
            if Some(side) != not
                && let Some(peer) = &peers[side.index()]
            {
                peer.send(frame, side);
            }
        }
    }

    /// Hears the `side` process until its bridge closes, then forgets its
    /// members (and tells the other side they are gone).
    fn read(&self, side: Side, peer: &Arc<Peer>, socket: UnixStream) {
        let mut reader = BufReader::new(socket);
        loop {
            let mut len = [0; 4];
            if reader.read_exact(&mut len).is_err() {
                break;
            }
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_FRAME {
                warn!(
                    "rooms bridge to the {} process: a frame of {len} bytes; closing it",
                    side.name()
                );
                break;
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                break;
            }
            match Frame::decode(&body) {
                Some(frame) => self.heard(side, frame),
                None => {
                    warn!(
                        "rooms bridge to the {} process: a frame it cannot read; closing it",
                        side.name()
                    );
                    break;
                }
            }
        }
        self.closed(side, peer);
    }

    /// Applies what the `side` process said, and passes it on.
    fn heard(&self, side: Side, frame: Frame) {
        match &frame {
            Frame::Publish {
                listener,
                room,
                data,
                ..
            } => {
                let rooms = sys::lock(&self.listeners)
                    .get(listener)
                    .and_then(Weak::upgrade);
                if let Some(rooms) = rooms {
                    rooms.deliver(room, data);
                }
            }
            Frame::Join { listener, room, id } => {
                let key = (listener.clone(), room.clone());
                sys::lock(&self.remote)
                    .entry(key)
                    .or_default()
                    .insert(*id, side);
            }
            Frame::Leave { listener, room, id } => {
                let key = (listener.clone(), room.clone());
                let mut remote = sys::lock(&self.remote);
                if let Some(members) = remote.get_mut(&key) {
                    members.remove(id);
                    if members.is_empty() {
                        remote.remove(&key);
                    }
                }
            }
        }
        self.send(&frame, Some(side));
    }

    /// The `side` process's bridge closed: its members, and those it told
    /// of, are gone.
    fn closed(&self, side: Side, peer: &Arc<Peer>) {
        peer.close();
        {
            let mut peers = sys::lock(&self.peers);
            if peers[side.index()]
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, peer))
            {
                peers[side.index()] = None;
            }
        }
        let mut gone = Vec::new();
        sys::lock(&self.remote).retain(|(listener, room), members| {
            members.retain(|id, from| {
                if *from == side {
                    gone.push(Frame::Leave {
                        listener: listener.clone(),
                        room: room.clone(),
                        id: *id,
                    });
                }
                *from != side
            });
            !members.is_empty()
        });
        for frame in &gone {
            self.send(frame, Some(side));
        }
        info!(
            "rooms bridge to the {} process closed; {} of its members left",
            side.name(),
            gone.len()
        );
    }
}

impl Elsewhere for Bridge {
    fn publish(&self, listener: &str, from: u64, room: &str, data: &[u8]) {
        if sys::lock(&self.peers).iter().all(Option::is_none) {
            return;
        }
        let frame = Frame::Publish {
            listener: listener.to_string(),
            room: room.to_string(),
            from,
            data: data.to_vec(),
        };
        self.send(&frame, None);
    }

    fn presence(&self, listener: &str, room: &str, id: u64, joined: bool) {
        if sys::lock(&self.peers).iter().all(Option::is_none) {
            return;
        }
        let (listener, room) = (listener.to_string(), room.to_string());
        let frame = match joined {
            true => Frame::Join { listener, room, id },
            false => Frame::Leave { listener, room, id },
        };
        self.send(&frame, None);
    }

    fn members(&self, listener: &str, room: &str) -> Option<Vec<u64>> {
        let remote = sys::lock(&self.remote);
        let key = (listener.to_string(), room.to_string());
        Some(
            remote
                .get(&key)
                .map_or_else(Vec::new, |m| m.keys().copied().collect()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_and_garbage_does_not() {
        let frames = [
            Frame::Publish {
                listener: "default".into(),
                room: "lobby".into(),
                from: 7,
                data: b"hi\n".to_vec(),
            },
            Frame::Join {
                listener: "a".into(),
                room: "r".into(),
                id: u64::MAX,
            },
            Frame::Leave {
                listener: "".into(),
                room: "r".into(),
                id: 1,
            },
        ];
        for frame in frames {
            let bytes = frame.encode();
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 4);
            assert_eq!(Frame::decode(&bytes[4..]), Some(frame));
        }
        assert_eq!(Frame::decode(&[]), None);
        assert_eq!(
            Frame::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
        assert_eq!(Frame::decode(&[JOIN, 0, 5, b'a']), None);
    }
}
