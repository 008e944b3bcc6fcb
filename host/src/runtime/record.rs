//! Recording a connection (`serve --record DIR`) and replaying one
//! (`hotsock test`): the handler's nondeterministic inputs (clocks, random
//! bytes) are what make a replay of a handler whose replies hold the time
//! come out the same.
//!
//! A [`Recorder`] collects one connection's [`Transcript`] from the
//! connection's reads and writes and from WASI clocks and random generators
//! that pass real values through and write them down. A [`Replay`] feeds a
//! transcript back: the client's bytes to `read`, the recorded clock
//! readings and random bytes to the guest, each kind in its own order, and
//! keeps what the handler writes for comparing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand_core::TryRng;
use wasmtime_wasi::clocks::{MonotonicClock, WallClock};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, Rng, WasiCtxBuilder};

use crate::runtime::transcript::{Entry, Transcript};
use crate::sys;

/// Default most bytes kept in one transcript: `--record-max-bytes`.
pub const DEFAULT_RECORD_MAX_BYTES: usize = 1 << 20;

/// Where a listener's connections are recorded, and how much of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// The directory transcripts go to, one file per connection.
    pub dir: PathBuf,
    /// Most bytes of data kept per connection; then it is cut short.
    pub max_bytes: usize,
}

impl Recording {
    /// Makes the directory if it is missing (private to this user: it will
    /// hold what clients sent), and checks that it can be written to.
    pub fn prepare(&self) -> anyhow::Result<()> {
        let dir = &self.dir;
        fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("--record {}: cannot create it: {e}", dir.display()))?;
        let probe = dir.join(".hotsock-write-check");
        fs::write(&probe, b"")
            .and_then(|()| fs::remove_file(&probe))
            .map_err(|e| anyhow::anyhow!("--record {}: cannot write there: {e}", dir.display()))
    }
}

/// What feeds a store's clocks and random generators.
#[derive(Clone, Default)]
pub enum Inputs {
    /// The real ones.
    #[default]
    Real,
    /// The real ones, written down.
    Record(Arc<Recorder>),
    /// A transcript's.
    Replay(Arc<Replay>),
}

/// One connection's transcript as it is being recorded.
pub struct Recorder {
    path: PathBuf,
    max_bytes: usize,
    state: Mutex<(Transcript, usize)>,
}

impl Recorder {
    /// A recorder writing to `recording`'s directory, to a file named after
    /// the connection `id` and the time; `header` lines become its comments.
    pub fn new(recording: &Recording, id: u64, header: Vec<String>) -> Self {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!("{}-conn{id}.transcript", started.as_millis());
        Recorder {
            path: recording.dir.join(name),
            max_bytes: recording.max_bytes,
            state: Mutex::new((
                Transcript {
                    comments: header,
                    entries: Vec::new(),
                },
                0,
            )),
        }
    }

    /// Adds `entry`, unless the transcript is over its size already: then it
    /// is marked cut short, once, and nothing more is kept.
    pub fn push(&self, entry: Entry) {
        let size = match &entry {
            Entry::Client(b) | Entry::Handler(b) | Entry::Random(b) | Entry::Insecure(b) => b.len(),
            _ => 16,
        };
        let mut state = sys::lock(&self.state);
        let (transcript, bytes) = &mut *state;
        if transcript.truncated() {
            return;
        }
        if *bytes + size > self.max_bytes {
            transcript.entries.push(Entry::Truncated);
            return;
        }
        *bytes += size;
        transcript.entries.push(entry);
    }

    /// Writes the transcript out, whole or not at all (a temporary file,
    /// then renamed), and says where.
    pub fn finish(&self) -> io::Result<&Path> {
        let text = sys::lock(&self.state).0.render();
        let partial = self.path.with_extension("partial");
        let mut file = fs::File::create(&partial)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        fs::rename(&partial, &self.path)?;
        Ok(&self.path)
    }
}

/// A transcript being replayed, and what the handler wrote meanwhile.
pub struct Replay {
    state: Mutex<ReplayState>,
}

struct ReplayState {
    client: VecDeque<Vec<u8>>,
    walls: VecDeque<Duration>,
    monos: VecDeque<u64>,
    random: VecDeque<u8>,
    insecure: VecDeque<u8>,
    seed: Option<u128>,
    /// The last wall and monotonic readings handed out, and when, so that a
    /// handler asking for more than were recorded sees time move on.
    last_wall: Option<(Duration, Instant)>,
    last_mono: Option<(u64, Instant)>,
    written: Vec<Vec<u8>>,
}

impl Replay {
    /// Ready to feed `transcript` back.
    pub fn new(transcript: &Transcript) -> Self {
        let mut state = ReplayState {
            client: VecDeque::new(),
            walls: VecDeque::new(),
            monos: VecDeque::new(),
            random: VecDeque::new(),
            insecure: VecDeque::new(),
            seed: None,
            last_wall: None,
            last_mono: None,
            written: Vec::new(),
        };
        for entry in &transcript.entries {
            match entry {
                Entry::Client(bytes) => state.client.push_back(bytes.clone()),
                Entry::Handler(_) | Entry::Truncated => {}
                Entry::Wall(at) => state.walls.push_back(*at),
                Entry::Mono(nanos) => state.monos.push_back(*nanos),
                Entry::Random(bytes) => state.random.extend(bytes),
                Entry::Insecure(bytes) => state.insecure.extend(bytes),
                Entry::Seed(seed) => state.seed = Some(*seed),
            }
        }
        Replay {
            state: Mutex::new(state),
        }
    }

    /// The client's next bytes, at most `max`: empty once it has sent all.
    pub fn read(&self, max: usize) -> Vec<u8> {
        let mut state = sys::lock(&self.state);
        let Some(chunk) = state.client.front_mut() else {
            return Vec::new();
        };
        if chunk.len() <= max {
            return state.client.pop_front().unwrap_or_default();
        }
        let rest = chunk.split_off(max);
        std::mem::replace(chunk, rest)
    }

    /// Keeps what the handler wrote.
    pub fn write(&self, data: &[u8]) {
        sys::lock(&self.state).written.push(data.to_vec());
    }

    /// Everything the handler wrote, one element a write.
    pub fn written(&self) -> Vec<Vec<u8>> {
        sys::lock(&self.state).written.clone()
    }

    /// The recorded `insecure-seed`, if there was one.
    pub fn seed(&self) -> Option<u128> {
        sys::lock(&self.state).seed
    }

    fn wall(&self) -> Duration {
        let mut state = sys::lock(&self.state);
        let now = match state.walls.pop_front() {
            Some(at) => at,
            // Time moves on from the last reading, at the real pace.
            None => match state.last_wall {
                Some((at, when)) => at + when.elapsed(),
                None => WallClock::new().now(),
            },
        };
        state.last_wall = Some((now, Instant::now()));
        now
    }

    fn mono(&self) -> u64 {
        let mut state = sys::lock(&self.state);
        let now = match state.monos.pop_front() {
            Some(nanos) => nanos,
            None => match state.last_mono {
                Some((nanos, when)) => {
                    nanos.saturating_add(u64::try_from(when.elapsed().as_nanos()).unwrap_or(0))
                }
                None => 0,
            },
        };
        state.last_mono = Some((now, Instant::now()));
        now
    }

    /// Fills `dst` from the recorded bytes of one kind, and from a real
    /// generator past their end.
    fn fill(&self, insecure: bool, dst: &mut [u8]) {
        let mut state = sys::lock(&self.state);
        let stream = match insecure {
            true => &mut state.insecure,
            false => &mut state.random,
        };
        let mut real = None;
        for byte in dst.iter_mut() {
            *byte = match stream.pop_front() {
                Some(b) => b,
                None => {
                    let rng = real.get_or_insert_with(wasmtime_wasi::thread_rng);
                    let mut one = [0];
                    rng.fill_bytes(&mut one);
                    one[0]
                }
            };
        }
    }
}

impl Inputs {
    /// Gives a store's WASI these clocks and random generators.
    pub fn apply(&self, wasi: &mut WasiCtxBuilder) {
        match self {
            Inputs::Real => {}
            Inputs::Record(recorder) => {
                let taped = || Taped {
                    recorder: Arc::clone(recorder),
                    wall: WallClock::new(),
                    mono: MonotonicClock::new(),
                };
                let random = |insecure| TapedRandom {
                    recorder: Arc::clone(recorder),
                    real: wasmtime_wasi::thread_rng(),
                    insecure,
                };
                let seed: u128 = rand_seed();
                recorder.push(Entry::Seed(seed));
                wasi.wall_clock(taped())
                    .monotonic_clock(taped())
                    .secure_random(random(false))
                    .insecure_random(random(true))
                    .insecure_random_seed(seed);
            }
            Inputs::Replay(replay) => {
                let random = |insecure| ReplayedRandom {
                    replay: Arc::clone(replay),
                    insecure,
                };
                wasi.wall_clock(ReplayedClock(Arc::clone(replay)))
                    .monotonic_clock(ReplayedClock(Arc::clone(replay)))
                    .secure_random(random(false))
                    .insecure_random(random(true));
                if let Some(seed) = replay.seed() {
                    wasi.insecure_random_seed(seed);
                }
            }
        }
    }
}

/// A fresh `insecure-seed`, as wasmtime-wasi would pick one.
fn rand_seed() -> u128 {
    let mut bytes = [0; 16];
    wasmtime_wasi::thread_rng().fill_bytes(&mut bytes);
    u128::from_le_bytes(bytes)
}

/// Real clocks whose every reading is written down.
struct Taped {
    recorder: Arc<Recorder>,
    wall: WallClock,
    mono: MonotonicClock,
}

impl HostWallClock for Taped {
    fn resolution(&self) -> Duration {
        self.wall.resolution()
    }

    fn now(&self) -> Duration {
        let now = self.wall.now();
        self.recorder.push(Entry::Wall(now));
        now
    }
}

impl HostMonotonicClock for Taped {
    fn resolution(&self) -> u64 {
        self.mono.resolution()
    }

    fn now(&self) -> u64 {
        let now = self.mono.now();
        self.recorder.push(Entry::Mono(now));
        now
    }
}

/// A replay's recorded clock readings, as WASI clocks.
struct ReplayedClock(Arc<Replay>);

impl HostWallClock for ReplayedClock {
    fn resolution(&self) -> Duration {
        WallClock::new().resolution()
    }

    fn now(&self) -> Duration {
        self.0.wall()
    }
}

impl HostMonotonicClock for ReplayedClock {
    fn resolution(&self) -> u64 {
        MonotonicClock::new().resolution()
    }

    fn now(&self) -> u64 {
        self.0.mono()
    }
}

/// A real generator whose every output is written down.
struct TapedRandom {
    recorder: Arc<Recorder>,
    real: Box<dyn Rng + Send>,
    insecure: bool,
}

impl TapedRandom {
    fn tape(&self, bytes: &[u8]) {
        self.recorder.push(match self.insecure {
            true => Entry::Insecure(bytes.to_vec()),
            false => Entry::Random(bytes.to_vec()),
        });
    }
}

impl TryRng for TapedRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let value = self.real.next_u32();
        self.tape(&value.to_le_bytes());
        Ok(value)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let value = self.real.next_u64();
        self.tape(&value.to_le_bytes());
        Ok(value)
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.real.fill_bytes(dst);
        self.tape(dst);
        Ok(())
    }
}

/// Recorded random bytes, fed back in order.
struct ReplayedRandom {
    replay: Arc<Replay>,
    insecure: bool,
}

impl TryRng for ReplayedRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0; 4];
        self.replay.fill(self.insecure, &mut bytes);
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0; 8];
        self.replay.fill(self.insecure, &mut bytes);
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.replay.fill(self.insecure, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_feeds_back_what_was_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let recording = Recording {
            dir: dir.path().to_path_buf(),
            max_bytes: 1 << 20,
        };
        let recorder = Arc::new(Recorder::new(&recording, 7, vec!["conn 7".into()]));
        recorder.push(Entry::Client(b"hello\n".to_vec()));
        let wall = Taped {
            recorder: Arc::clone(&recorder),
            wall: WallClock::new(),
            mono: MonotonicClock::new(),
        };
        let wall = HostWallClock::now(&wall);
        let mut rng = TapedRandom {
            recorder: Arc::clone(&recorder),
            real: wasmtime_wasi::thread_rng(),
            insecure: false,
        };
        let drawn = rng.next_u64();
        recorder.push(Entry::Handler(b"HELLO\n".to_vec()));
        let path = recorder.finish().unwrap().to_path_buf();
        let transcript = Transcript::parse(&fs::read_to_string(path).unwrap()).unwrap();

        let replay = Arc::new(Replay::new(&transcript));
        assert_eq!(replay.read(3), b"hel");
        assert_eq!(replay.read(100), b"lo\n");
        assert_eq!(replay.read(100), b"");
        assert_eq!(replay.wall(), wall);
        // Past the recording, time goes on from the last reading.
        assert!(replay.wall() >= wall);
        let mut rng = ReplayedRandom {
            replay: Arc::clone(&replay),
            insecure: false,
        };
        assert_eq!(rng.next_u64(), drawn);
    }

    #[test]
    fn a_recording_past_its_size_is_cut_short_once() {
        let recording = Recording {
            dir: PathBuf::from("/nonexistent"),
            max_bytes: 10,
        };
        let recorder = Recorder::new(&recording, 1, Vec::new());
        recorder.push(Entry::Client(vec![0; 8]));
        recorder.push(Entry::Client(vec![0; 8]));
        recorder.push(Entry::Client(vec![0; 1]));
        let state = sys::lock(&recorder.state);
        assert_eq!(state.0.entries.len(), 2);
        assert!(state.0.truncated());
    }
}
