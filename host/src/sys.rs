//! Every call into libc, each behind a safe function that says what it does
//! and why it is sound, and the poison-tolerant lock the host uses.
//!
//! Kept in one leaf so that `unsafe` is in one place to review, and so that
//! no layer has to reach past its neighbours for a system call.

use std::ffi::{CStr, c_void};
use std::fs::File;
use std::io::{self, Seek as _, SeekFrom, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::ptr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How much lower than serving threads compiling threads run: enough that
/// the scheduler gives serving nearly all of a busy CPU, while an idle
/// server still compiles at full speed.
const BACKGROUND_NICE: libc::c_int = 10;

/// Locks a mutex whose data stays consistent even if a holder panicked.
///
/// Use it only where every critical section leaves the data valid between
/// statements (a counter, a queue, a map insert or remove): then a panic
/// elsewhere in the holder's thread is no reason to take the server down too.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lowers the calling thread to background priority (nice 10): for threads
/// that compile and validate handlers, which must not take CPU from serving.
/// Best effort: if the system refuses, the thread keeps its priority.
pub fn background_priority() {
    // SAFETY: gettid has no preconditions and cannot fail.
    let thread = unsafe { libc::gettid() } as libc::id_t;
    // SAFETY: setpriority has no memory-safety preconditions; on Linux a
    // thread id names just that thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, thread, BACKGROUND_NICE) };
}

/// The CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if read != 0 {
        // Not seen on Linux. Callers use this to stop runaway guests, and
        // charging nothing would let one run forever, so fall back to the
        // wall clock, which charges too much.
        return wall_clock_since_start();
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Time since the first call, for [`thread_cpu_time`]'s fallback.
fn wall_clock_since_start() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The id of the process that started this one.
pub fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// Takes ownership of `fd`, a file descriptor this process inherited
/// (systemd's `LISTEN_FDS`, or a parent's on an upgrade), and marks it
/// close-on-exec so that it does not leak into processes started later.
///
/// # Safety
///
/// `fd` must be open and owned by nobody else in this process.
pub unsafe fn adopt_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on an open descriptor only reads and sets its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the caller guarantees the descriptor is open and ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The first descriptor number a program gets its inherited descriptors at,
/// by systemd's convention (after stdin, stdout and stderr).
pub const FIRST_INHERITED_FD: RawFd = 3;

/// Makes `command`'s program start with `fds` as its descriptors 3, 4, ...
/// in order, and nothing else beyond stdin, stdout and stderr (every other
/// descriptor of this process is close-on-exec, as std and this module open
/// them).
pub fn pass_fds(command: &mut Command, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let first_free = FIRST_INHERITED_FD + fds.len() as RawFd;
    // Copies numbered above the target range, so that moving one into place
    // in the child never overwrites another still to be moved.
    let mut copies = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: F_DUPFD_CLOEXEC duplicates an open descriptor we borrow.
        let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, first_free) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fcntl just created it, and nothing else owns it.
        copies.push(unsafe { OwnedFd::from_raw_fd(copy) });
    }
    let moves: Vec<(RawFd, RawFd)> = copies
        .iter()
        .enumerate()
        .map(|(i, copy)| (copy.as_raw_fd(), FIRST_INHERITED_FD + i as RawFd))
        .collect();
    // dup2 leaves the new descriptor without close-on-exec, so the program
    // inherits it; the copies close at exec. The closure owns the copies, so
    // they stay open for as long as `command` can start a process, and close
    // with it.
    let move_into_place = move || {
        let _still_open = &copies;
        for &(from, to) in &moves {
            // SAFETY: dup2 reads and writes no memory of ours; `from` is a
            // copy this closure keeps open.
            if unsafe { libc::dup2(from, to) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes only dup2 calls,
    // and allocates nothing (`moves` was allocated before the fork).
    unsafe { command.pre_exec(move_into_place) };
    Ok(())
}

/// A file in memory holding `bytes`, for handing data to a child process as
/// a descriptor (`memfd_create`): it needs no directory, and disappears when
/// the last descriptor to it closes.
pub fn memory_file(name: &CStr, bytes: &[u8]) -> io::Result<File> {
    // SAFETY: memfd_create reads the name and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just created it, and nothing else owns it.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bytes)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// Asks process `pid` to stop (SIGTERM); a process already gone is not an
/// error worth reporting.
pub fn terminate(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
}

/// A resource limit's soft value, `None` when unlimited.
fn soft_limit(resource: libc::__rlimit_resource_t) -> io::Result<Option<u64>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, nothing else.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur))
}

/// The most files this process may have open (`ulimit -n`), if limited.
pub fn open_file_limit() -> io::Result<Option<u64>> {
    soft_limit(libc::RLIMIT_NOFILE)
}

/// The most processes and threads this user may have (`ulimit -u`), if
/// limited. The kernel does not apply it to root.
pub fn process_limit() -> io::Result<Option<u64>> {
    match effective_uid() {
        0 => Ok(None),
        _ => soft_limit(libc::RLIMIT_NPROC),
    }
}

/// The most address space this process may reserve (`ulimit -v`), if limited.
pub fn address_space_limit() -> io::Result<Option<u64>> {
    soft_limit(libc::RLIMIT_AS)
}

/// The largest range of free address space in this process, in bytes: the
/// most one reservation can take, however much the process may address in
/// all. Read from `/proc/self/maps`.
pub fn largest_free_address_range() -> io::Result<u64> {
    // Addresses below this are never handed out (`vm.mmap_min_addr`'s usual
    // value); the top is where user space ends with four-level page tables.
    const LOWEST: u64 = 0x1_0000;
    const USER_END: u64 = 0x7fff_ffff_f000;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut ranges: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|line| {
            let (start, end) = line.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            ))
        })
        .filter(|&(start, _)| start < USER_END)
        .collect();
    ranges.sort_unstable();
    let mut largest = 0;
    let mut free_from = LOWEST;
    for (start, end) in ranges {
        largest = largest.max(start.saturating_sub(free_from));
        free_from = free_from.max(end);
    }
    Ok(largest.max(USER_END.saturating_sub(free_from)))
}

/// Raises the soft limit on open files to the hard limit, and returns the
/// limit now in force. Each connection is a socket, so the usual soft limit
/// of 1024 would cap a server set up for `--max-connections 1000` well below
/// that; servers (and Go's runtime) raise it the same way.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        // An unlimited hard limit still cannot exceed the kernel's nr_open.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(1 << 20);
        limit.rlim_cur = limit.rlim_max.min(nr_open);
        // SAFETY: setrlimit reads the struct we pass, nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// The signal stack of each thread started with [`spawn_thread`]: the most
/// wasmtime asks for (it installs a stack of its own, in a mapping of its own,
/// on any thread whose signal stack is smaller).
pub const SIGNAL_STACK: usize = 64 * 4096;

/// A job for [`spawn_thread`].
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Starts a detached OS thread named `name` that runs `job` on a stack of
/// `stack_size` bytes, plus its [`SIGNAL_STACK`].
///
/// Why not `std::thread`: std maps a small signal stack for every thread, and
/// wasmtime maps a bigger one on every thread that runs wasm; with the thread
/// stack that is six memory mappings per connection thread, and at 10,000
/// connections the kernel's default limit of 65,530 mappings per process
/// (`vm.max_map_count`) runs out. std then aborts the whole process, since it
/// cannot start a thread without its signal stack. Here the signal stack is
/// the bottom of the thread's own stack, which costs no mapping and no memory
/// until a signal is handled on it, and a thread that cannot be started is an
/// error for the caller, never an abort.
///
/// A panic in `job` ends only its thread; the panic hook has reported it.
pub fn spawn_thread(name: &'static CStr, stack_size: usize, job: Job) -> io::Result<()> {
    let start = Box::into_raw(Box::new(Start { name, job }));
    let started = start_detached(stack_size + SIGNAL_STACK, start.cast());
    if started.is_err() {
        // SAFETY: the thread was not created, so `start` is still ours; it
        // came from `Box::into_raw` just above.
        drop(unsafe { Box::from_raw(start) });
    }
    started
}

/// What a thread from [`spawn_thread`] is handed: its name and its job.
struct Start {
    name: &'static CStr,
    job: Job,
}

/// Creates the thread, detached, running [`thread_main`] on `arg`.
fn start_detached(stack: usize, arg: *mut c_void) -> io::Result<()> {
    let os = |code: libc::c_int| match code {
        0 => Ok(()),
        code => Err(io::Error::from_raw_os_error(code)),
    };
    let page = page_size();
    let stack = stack.max(libc::PTHREAD_STACK_MIN).next_multiple_of(page);
    let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_attr_init only initialises the attributes it is
    // pointed at.
    os(unsafe { libc::pthread_attr_init(attr.as_mut_ptr()) })?;
    // Initialised from here until pthread_attr_destroy below.
    let attr = attr.as_mut_ptr();
    // SAFETY: `attr` points to initialised attributes.
    let created = os(unsafe { libc::pthread_attr_setstacksize(attr, stack) })
        .and_then(|()| {
            let detached = libc::PTHREAD_CREATE_DETACHED;
            // SAFETY: `attr` points to initialised attributes.
            os(unsafe { libc::pthread_attr_setdetachstate(attr, detached) })
        })
        .and_then(|()| {
            let mut thread = MaybeUninit::<libc::pthread_t>::uninit();
            // SAFETY: `attr` points to initialised attributes and `thread`
            // is ours to write; `thread_main` has the signature
            // pthread_create expects, and takes ownership of `arg`.
            os(unsafe { libc::pthread_create(thread.as_mut_ptr(), attr, thread_main, arg) })
        });
    // SAFETY: `attr` points to initialised attributes, not used after this
    // (pthread_create copied what it needs).
    unsafe { libc::pthread_attr_destroy(attr) };
    created
}

/// The body of a thread from [`spawn_thread`]: installs the signal stack, runs
/// the job, and keeps a panic from unwinding into C.
extern "C" fn thread_main(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `spawn_thread` passed a leaked `Box<Start>` and gave up ownership.
    let Start { name, job } = *unsafe { Box::from_raw(arg.cast::<Start>()) };
    // The thread names itself: the id its creator gets back names a detached
    // thread only until it ends, which may already have happened. A name only
    // helps `top -H` and debuggers: not worth failing over.
    // SAFETY: pthread_self has no preconditions and cannot fail.
    let me = unsafe { libc::pthread_self() };
    // SAFETY: `me` is the calling thread, alive for the call; `name` is a C
    // string that lives forever, and the kernel copies it.
    unsafe { libc::pthread_setname_np(me, name.as_ptr()) };
    let _signal_stack = SignalStack::install();
    // The panic hook has already reported a panic; the thread just ends.
    let _ = catch_unwind(AssertUnwindSafe(job));
    ptr::null_mut()
}

/// The calling thread's signal stack, in the bottom [`SIGNAL_STACK`] bytes of
/// its own stack, for as long as this value lives.
struct SignalStack;

impl SignalStack {
    /// Installs it, if the thread's stack can be found. Without it wasmtime
    /// maps a signal stack of its own, which costs mappings but still works.
    fn install() -> Option<Self> {
        let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
        let mut low: *mut c_void = ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: pthread_self has no preconditions and cannot fail.
        let me = unsafe { libc::pthread_self() };
        // SAFETY: pthread_getattr_np only initialises the attributes it is
        // pointed at, with those of the calling thread.
        if unsafe { libc::pthread_getattr_np(me, attr.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: the attributes were initialised just above, and
        // pthread_attr_getstack only writes our two variables.
        let found = unsafe { libc::pthread_attr_getstack(attr.as_ptr(), &mut low, &mut size) } == 0;
        // SAFETY: the attributes are initialised, and not used after this.
        unsafe { libc::pthread_attr_destroy(attr.as_mut_ptr()) };
        // The lowest part of the stack, just above its guard page: the thread's
        // own frames start at the top and only reach it by overflowing the
        // `stack_size` they were given.
        if !found || size < 2 * SIGNAL_STACK {
            return None;
        }
        let stack = libc::stack_t {
            ss_sp: low,
            ss_flags: 0,
            ss_size: SIGNAL_STACK,
        };
        // SAFETY: the memory is this thread's own, unused by its frames, and
        // outlives the registration, which `drop` removes before the thread ends.
        let installed = unsafe { libc::sigaltstack(&stack, ptr::null_mut()) } == 0;
        if installed {
            // What `release_stack_below` may hand back: above the signal
            // stack, below the frames.
            UNUSED_STACK_FLOOR.set(low as usize + SIGNAL_STACK);
        }
        installed.then_some(SignalStack)
    }
}

impl Drop for SignalStack {
    fn drop(&mut self) {
        let disable = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: only unregisters the calling thread's signal stack.
        unsafe { libc::sigaltstack(&disable, ptr::null_mut()) };
    }
}

thread_local! {
    /// The lowest address of the calling thread's stack that
    /// [`release_stack_below`] may hand back: just above its signal stack,
    /// on threads from [`spawn_thread`]; 0 on any other thread.
    static UNUSED_STACK_FLOOR: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Room left below the caller's frame for [`release_stack_below`]'s own
/// frame and the `madvise` stub, which need a small part of it.
const STACK_MARGIN: usize = 1024;

/// Hands the pages of the calling thread's stack below the caller's frame
/// back to the kernel. A connection's thread keeps every page its deepest
/// moment touched for as long as its client stays, and instantiating a
/// handler goes about a page deeper than the handler's reads and writes
/// ever do: called once the handler first waits for its client, this makes
/// an idle connection a page (4 KiB) cheaper. Nothing below the caller's
/// frame is live, so those pages read as zeros if touched again. Only on
/// threads from [`spawn_thread`] (elsewhere the stack's extent is not
/// known), and never their signal stack.
#[inline(never)]
pub fn release_stack_below() {
    let floor = UNUSED_STACK_FLOOR.get();
    if floor == 0 {
        return;
    }
    let marker = 0u8;
    let here = std::hint::black_box(&raw const marker) as usize;
    let page = page_size();
    let start = floor.next_multiple_of(page);
    let end = here.saturating_sub(STACK_MARGIN) & !(page - 1);
    if end > start {
        // SAFETY: [start, end) is this thread's own stack, above its signal
        // stack and below every live frame: the caller's, and this one's,
        // which the margin leaves room for. MADV_DONTNEED on private
        // anonymous memory only makes the pages read as zeros when next
        // touched; it cannot fail in a way that matters here.
        unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// The size of a memory page.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        size if size > 0 => size as usize,
        _ => 4096,
    }
}

/// Waits until one of `fds` is ready for what its `events` ask
/// (`libc::POLLIN`, `libc::POLLOUT`), or `timeout` passes (`None`: no
/// limit). Returns how many are ready: 0 means the time ran out. An
/// interrupted wait is retried with what is left of the time.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let millis = match deadline {
            None => -1,
            // Rounded up, so a 0.5 ms wait does not spin as a 0 ms one.
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                left.as_micros()
                    .div_ceil(1000)
                    .min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd
        // structs of the length given; poll writes only their `revents`.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if ready >= 0 {
            return Ok(ready as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Sends what of `data` the socket takes now, without waiting: `WouldBlock`
/// when its buffer is full. A peer that is gone is an error, never SIGPIPE.
/// For writing to a blocking socket from a thread that must not block.
pub fn send_now(socket: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `socket` is an open descriptor for the borrow's lifetime, and
    // `data` is a valid slice of the length given, which send only reads.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    match sent {
        -1 => Err(io::Error::last_os_error()),
        n => Ok(n as usize),
    }
}

/// Receives what has arrived on `socket`, without waiting: `WouldBlock`
/// when nothing has. 0 is the end of the stream.
pub fn recv_now(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `socket` is an open descriptor for the borrow's lifetime, and
    // `buf` a valid, exclusively borrowed slice of the length given.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    match received {
        -1 => Err(io::Error::last_os_error()),
        n => Ok(n as usize),
    }
}

/// The first byte waiting on `socket`, left there for the next read:
/// `None` at the end of the stream, `WouldBlock` when nothing has arrived.
pub fn peek_byte(socket: BorrowedFd<'_>) -> io::Result<Option<u8>> {
    let mut byte = 0u8;
    // SAFETY: as in `recv_now`, with a one-byte buffer on the stack.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    };
    match received {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        _ => Ok(Some(byte)),
    }
}

/// Like [`send_now`], for several buffers in one call: a TLS flight of
/// several records leaves as one segment rather than several.
pub fn send_vectored_now(socket: BorrowedFd<'_>, data: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (std guarantees it),
    // and sendmsg only reads the buffers.
    header.msg_iov = data.as_ptr().cast_mut().cast();
    header.msg_iovlen = data.len().min(libc::c_int::MAX as usize) as _;
    // SAFETY: `socket` is open for the borrow's lifetime; `header` points to
    // `data.len()` valid iovecs, each a valid slice, which send only reads.
    let sent = unsafe {
        libc::sendmsg(
            socket.as_raw_fd(),
            &header,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    match sent {
        -1 => Err(io::Error::last_os_error()),
        n => Ok(n as usize),
    }
}

/// A counter another thread can wake a [`poll`] with: an eventfd.
#[derive(Debug)]
pub struct Wakeup(OwnedFd);

impl Wakeup {
    /// A fresh eventfd, non-blocking and closed on exec.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd just returned `fd`, which nothing else owns.
        Ok(Wakeup(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the eventfd readable, waking whoever polls it. A full counter
    /// (2^64 - 2 wakes nobody read) is already readable, so errors are moot.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: the fd is open while self lives; the buffer is 8 valid bytes.
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Resets the counter, so the next poll waits for a new wake.
    pub fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: as in `wake`; a non-blocking read of an unset eventfd
        // fails with EAGAIN and changes nothing.
        unsafe { libc::read(self.0.as_raw_fd(), (&raw mut count).cast(), 8) };
    }

    /// The descriptor to poll for `POLLIN`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Touches `depth` KiB of stack below the caller, and returns a value
    /// that depends on all of it, so none of it is optimised away.
    #[inline(never)]
    fn deep(depth: usize) -> u64 {
        let mut frame = [0u8; 1024];
        for (i, byte) in frame.iter_mut().enumerate() {
            *byte = (i + depth) as u8;
        }
        let below = if depth > 1 { deep(depth - 1) } else { 0 };
        std::hint::black_box(&frame)
            .iter()
            .map(|&b| u64::from(b))
            .sum::<u64>()
            + below
    }

    /// Pages of the calling thread's stack resident now, of the `len`
    /// bytes below `top`.
    fn resident(top: usize, len: usize) -> usize {
        let page = page_size();
        let start = (top - len) & !(page - 1);
        let mut pages = vec![0u8; (top - start) / page];
        // SAFETY: the range is this thread's mapped stack; mincore writes
        // one byte per page into `pages`, which is sized for them.
        let ok = unsafe { libc::mincore(start as *mut c_void, top - start, pages.as_mut_ptr()) };
        assert_eq!(ok, 0, "{}", io::Error::last_os_error());
        pages.iter().filter(|&&p| p & 1 == 1).count()
    }

    #[test]
    fn released_stack_below_the_caller_is_given_back_and_reads_as_new() {
        let (tx, rx) = mpsc::channel();
        let job = Box::new(move || {
            let marker = 0u8;
            let here = std::hint::black_box(&raw const marker) as usize;
            let value = deep(64);
            let before = resident(here, 80 * 1024);
            release_stack_below();
            let after = resident(here, 80 * 1024);
            // The frames above are intact, and going deep again works.
            let again = deep(64);
            let _ = tx.send((before, after, value == again));
        });
        spawn_thread(c"test", 1024 * 1024, job).unwrap();
        let (before, after, same) = rx.recv().unwrap();
        assert!(before >= 16, "the deep call touched {before} pages");
        assert!(after <= 2, "{after} of {before} pages still resident");
        assert!(same);
    }
}
