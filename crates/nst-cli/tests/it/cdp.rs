//! Just enough of the Chrome DevTools Protocol to drive headless Chromium from a test: one
//! page, JavaScript evaluated in it, a real mouse click, a screenshot.
//!
//! Chromium speaks the protocol over two pipes (`--remote-debugging-pipe`: it reads commands
//! on fd 3 and writes replies and events on fd 4, each message JSON ended by a NUL byte), so
//! the test needs no WebSocket client and no port.

use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long one command may take before the test fails (only a hung browser takes this long).
const REPLY: Duration = Duration::from_secs(60);

/// A headless Chromium with one page open; killed when dropped.
pub(crate) struct Chromium {
    child: Child,
    commands: File,
    replies: mpsc::Receiver<Value>,
    session: String,
    next: u64,
    profile: std::path::PathBuf,
}

/// A pipe whose two ends are at fd 10 or above and close on exec (so that putting them at 3
/// and 4 in the child cannot overwrite one with the other).
fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    fds.map(|fd| {
        // SAFETY: `fd` was just opened by pipe(2); the duplicate gets the lowest free fd ≥ 10.
        let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        assert!(high >= 10, "fcntl");
        // SAFETY: `fd` is ours and no longer used.
        unsafe { libc::close(fd) };
        high
    })
    .into()
}

impl Chromium {
    /// Starts `binary` headless with a `width x height` window and opens `url` in a page.
    pub(crate) fn open(binary: &Path, url: &str, (width, height): (u32, u32)) -> Chromium {
        let (to_read, to_write) = pipe(); // Chromium reads commands from `to_read`.
        let (from_read, from_write) = pipe(); // Chromium writes replies to `from_write`.
        let profile =
            std::env::temp_dir().join(format!("nst-chromium-{}-{to_write}", std::process::id()));
        let mut cmd = Command::new(binary);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-pipe",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec; dup2 clears
        // close-on-exec on the new descriptors, so fds 3 and 4 stay open in Chromium.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(to_read, 3) < 0 || libc::dup2(from_write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("Chromium starts");
        // SAFETY: each fd is open and owned here alone; the child has its own copies.
        let (commands, replies_file) = unsafe {
            libc::close(to_read);
            libc::close(from_write);
            (File::from_raw_fd(to_write), File::from_raw_fd(from_read))
        };
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(replies_file);
            let mut msg = Vec::new();
            while r.read_until(0, &mut msg).is_ok_and(|n| n > 0) {
                if msg.last() == Some(&0) {
                    msg.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                msg.clear();
            }
        });
        let mut browser = Chromium {
            child,
            commands,
            replies,
            session: String::new(),
            next: 0,
            profile,
        };
        let target = browser.call("Target.createTarget", json!({ "url": url }));
        let target = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser
    }

    /// Sends one command (to the page once attached) and returns its result; an error reply
    /// fails the test.
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .expect("Chromium reads commands");
        loop {
            let v = self
                .replies
                .recv_timeout(REPLY)
                .unwrap_or_else(|e| panic!("no reply to {method} from Chromium: {e}"));
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; its value (null when it has none).
    pub(crate) fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// Evaluates a JavaScript expression and waits for its promise; the value it resolves to.
    pub(crate) fn eval_async(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        );
        r["result"]["value"].clone()
    }

    /// Puts `files` in the file input `selector`, as a user picking them would (the page
    /// gets its `change` event).
    pub(crate) fn set_files(&mut self, selector: &str, files: &[&Path]) {
        let found = self.call(
            "Runtime.evaluate",
            json!({ "expression": format!("document.querySelector({selector:?})") }),
        );
        let object = found["result"]["objectId"].clone();
        assert!(object.is_string(), "no element {selector}");
        let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        self.call(
            "DOM.setFileInputFiles",
            json!({ "objectId": object, "files": files }),
        );
    }

    /// Scrolls the element `selector` into view and clicks its middle with the mouse, as a
    /// user would (so the element must be visible and on top there).
    pub(crate) fn click(&mut self, selector: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({selector:?}); \
             e.scrollIntoView({{ block: 'center', behavior: 'instant' }}); \
             const r = e.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        );
        let at = self.eval(&js);
        let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }

    /// A PNG screenshot of the page.
    pub(crate) fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64(r["data"].as_str().expect("screenshot data"))
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Decodes standard base64 (with or without padding).
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let digits: Vec<u32> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &d)| acc | d << (18 - 6 * i));
        out.extend(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes_with_and_without_padding() {
    assert_eq!(base64("bnN0"), b"nst");
    assert_eq!(base64("bnN0IQ=="), b"nst!");
    assert_eq!(base64("bnN0IQ"), b"nst!");
    assert_eq!(base64("bnN0ISE="), b"nst!!");
    assert_eq!(base64(""), b"");
}
