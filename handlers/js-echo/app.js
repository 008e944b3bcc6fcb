// The default echo handler, in JavaScript: the textbook thread server's reply,
// `Echo=>DATA at TIME`, for each chunk of up to 1024 bytes, until the client
// closes. It behaves exactly like the Rust one in guest-handler/ and the Python
// one in handlers/python-echo, and passes the same tests: bytes are echoed as
// they came (a Uint8Array, never decoded as text), a trailing line ending moves
// to the end of the reply, and the time is UTC in the format of Python's
// `time.ctime()`.
//
// Build: npm ci && npm run build (writes js-echo.wasm; `make js-handlers`
// writes target/wasm32-wasip2/release/js_echo.wasm).

const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** `Mon Nov  3 04:12:00 2026`: Python's `time.ctime()`, in UTC. */
function ctime(date) {
  const two = (n) => String(n).padStart(2, "0");
  return `${DAYS[date.getUTCDay()]} ${MONTHS[date.getUTCMonth()]} ${String(date.getUTCDate()).padStart(2, " ")} ` +
    `${two(date.getUTCHours())}:${two(date.getUTCMinutes())}:${two(date.getUTCSeconds())} ${date.getUTCFullYear()}`;
}

const encoder = new TextEncoder();
const PREFIX = encoder.encode("Echo=>");

/** `Echo=>{chunk} at {time}`, with a trailing \n or \r\n of the chunk moved to the end. */
function echoReply(chunk, now) {
  const n = chunk.length;
  const eol = n >= 2 && chunk[n - 2] === 13 && chunk[n - 1] === 10 ? 2 : n >= 1 && chunk[n - 1] === 10 ? 1 : 0;
  const at = encoder.encode(` at ${ctime(now)}`);
  const reply = new Uint8Array(PREFIX.length + n + at.length);
  reply.set(PREFIX, 0);
  reply.set(chunk.subarray(0, n - eol), PREFIX.length);
  reply.set(at, PREFIX.length + n - eol);
  reply.set(chunk.subarray(n - eol), PREFIX.length + n - eol + at.length);
  return reply;
}

export const handler = {
  handle(conn) {
    for (;;) {
      // An error (end of stream, a reset or the host's idle timeout) is
      // thrown: this client is done.
      let chunk;
      try {
        chunk = conn.read(1024);
      } catch {
        return;
      }
      if (chunk.length === 0) {
        return;
      }
      try {
        conn.write(echoReply(chunk, new Date()));
      } catch {
        return;
      }
    }
  },
};
