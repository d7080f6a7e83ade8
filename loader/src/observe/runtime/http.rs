//! One HTTP/1.1 `GET` over a unix socket (the Docker Engine API, podman's
//! Docker-compatible API), bounded by a deadline for everything: connect,
//! write, read. Bodies of `Content-Length`, chunked or read-to-close
//! responses.
use std::{
    io::{self, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use crate::sys::os;

/// Larger answers are refused (a runtime with a million containers).
const MAX_RESPONSE: usize = 64 << 20;

/// Why a `GET` gave no body.
#[derive(Debug, PartialEq, Eq)]
pub enum Fail {
    /// Nothing listens there: no socket file, or a socket nobody serves.
    Absent,
    /// Something listens but did not answer well within the bound.
    Failed(String),
}

/// `GET target` from the HTTP server on the unix socket `socket`; the body
/// of a 200 response, within `bound` or not at all.
pub fn get(socket: &Path, target: &str, bound: Duration) -> Result<Vec<u8>, Fail> {
    let deadline = Instant::now() + bound;
    let mut s = os::connect_unix(socket).map_err(|e| match e.errno() {
        Some(libc::ENOENT | libc::ECONNREFUSED | libc::ENOTDIR) => Fail::Absent,
        Some(libc::EAGAIN) => Fail::Failed(format!("{}: its listen queue is full", socket.display())),
        _ => Fail::Failed(format!("connecting to {}: {}", socket.display(), e.io_error)),
    })?;
    let failed = |what: &str, e: io::Error| {
        let e = match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                format!("no answer within {} ms", bound.as_millis())
            }
            _ => e.to_string(),
        };
        Fail::Failed(format!("{} ({what}): {e}", socket.display()))
    };
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: cgacct-pin\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    set_timeouts(&s, deadline).map_err(|e| failed("writing", e))?;
    s.write_all(request.as_bytes())
        .map_err(|e| failed("writing", e))?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        set_timeouts(&s, deadline).map_err(|e| failed("reading", e))?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed("reading", e)),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(Fail::Failed(format!(
                "{}: answer larger than {} MiB",
                socket.display(),
                MAX_RESPONSE >> 20
            )));
        }
        if let Some(body) = parse(&buf, false) {
            return body.map_err(|e| Fail::Failed(format!("{}: {e}", socket.display())));
        }
    }
    // The server closed the connection: whatever came is the answer.
    match parse(&buf, true) {
        Some(body) => body.map_err(|e| Fail::Failed(format!("{}: {e}", socket.display()))),
        None => Err(Fail::Failed(format!("{}: incomplete answer", socket.display()))),
    }
}

/// Read and write timeouts up to `deadline`; a deadline passed is a timeout.
fn set_timeouts(s: &UnixStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    s.set_read_timeout(Some(left))?;
    s.set_write_timeout(Some(left))
}

/// Parses a response. `closed`: the server closed the connection, so a
/// body without length ends here. None: not complete yet.
fn parse(buf: &[u8], closed: bool) -> Option<Result<Vec<u8>, String>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let body = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok());
    let Some(code) = code else {
        return Some(Err(format!("not an HTTP answer: {status:?}")));
    };
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        match dechunk(body) {
            Some(b) => b,
            None if closed => return Some(Err("chunked answer cut short".into())),
            None => return None,
        }
    } else if let Some(n) = length {
        match body.get(..n) {
            Some(b) => b.to_vec(),
            None if closed => return Some(Err("answer shorter than its Content-Length".into())),
            None => return None,
        }
    } else if closed {
        body.to_vec()
    } else {
        return None;
    };
    if code != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Some(Err(format!("HTTP {code}: {}", text.trim())));
    }
    Some(Ok(body))
}

/// The body of a chunked transfer, once its last chunk arrived.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::net::UnixListener,
        path::PathBuf,
        thread,
        time::{Duration, Instant},
    };

    use super::*;

    fn sock(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cgacct-http-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// Serves one connection: reads the request, writes `answer` in pieces.
    fn serve(path: &Path, answer: Vec<&'static [u8]>) -> thread::JoinHandle<String> {
        let l = UnixListener::bind(path).expect("bind");
        thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            let mut req = vec![0u8; 4096];
            let n = c.read(&mut req).expect("request");
            for piece in answer {
                c.write_all(piece).expect("write");
                thread::sleep(Duration::from_millis(5));
            }
            String::from_utf8_lossy(&req[..n]).into_owned()
        })
    }

    #[test]
    fn content_length_and_chunked_bodies() {
        let p = sock("len");
        let h = serve(
            &p,
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", b"\r\nhel", b"lo"],
        );
        let body = get(&p, "/containers/json?all=1", Duration::from_secs(5));
        assert_eq!(body.as_deref(), Ok(&b"hello"[..]));
        let req = h.join().expect("server");
        assert!(
            req.starts_with("GET /containers/json?all=1 HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nHost: "), "{req}");
        let p = sock("chunked");
        let _h = serve(
            &p,
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"3\r\n[1,\r\n",
                b"2;x=y\r\n2]\r\n0\r\n\r\n",
            ],
        );
        assert_eq!(get(&p, "/", Duration::from_secs(5)).as_deref(), Ok(&b"[1,2]"[..]));
        let p = sock("status");
        let _h = serve(
            &p,
            vec![b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno such\r\n"],
        );
        let e = get(&p, "/", Duration::from_secs(5));
        assert!(
            matches!(&e, Err(Fail::Failed(m)) if m.contains("HTTP 404")),
            "{e:?}"
        );
        let _ = std::fs::remove_file(sock("len"));
        let _ = std::fs::remove_file(sock("chunked"));
        let _ = std::fs::remove_file(sock("status"));
    }

    #[test]
    fn absent_servers_and_silent_ones_are_bounded() {
        let p = sock("absent");
        assert_eq!(get(&p, "/", Duration::from_secs(5)), Err(Fail::Absent));
        // A socket file nobody serves any more.
        drop(UnixListener::bind(&p).expect("bind"));
        assert_eq!(get(&p, "/", Duration::from_secs(5)), Err(Fail::Absent));
        let _ = std::fs::remove_file(&p);
        // Accepts (the kernel queues the connection) and never answers.
        let _l = UnixListener::bind(&p).expect("bind");
        let t = Instant::now();
        let e = get(&p, "/", Duration::from_millis(200));
        let took = t.elapsed();
        assert!(
            matches!(&e, Err(Fail::Failed(m)) if m.contains("within 200 ms")),
            "{e:?}"
        );
        assert!(took < Duration::from_millis(400), "{took:?}");
        let _ = std::fs::remove_file(&p);
    }
}
