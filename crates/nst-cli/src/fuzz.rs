//! Entry points for `nst-fuzz` into what the CLI reads from untrusted text: a batch file's
//! lines, the `--scales` and `--style-layers` values (through the same clap definition and
//! checks as the command line), the studio's render settings (JSON from its clients) and the
//! web view's HTTP server (raw requests on loopback).
//!
//! Each takes one input and returns whether it was accepted; an error is a fine answer, a
//! panic, a hang or a runaway allocation is what the fuzzer reports.

use crate::batch;
use crate::render::Args;
use clap::Parser;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// `nst render`'s arguments, parsed as the command line is.
#[derive(Parser)]
#[command(name = "nst render")]
struct Line {
    #[command(flatten)]
    args: Args,
}

/// The render arguments with `extra` after the required ones.
fn render_args(extra: &[&str]) -> Result<Args, clap::Error> {
    let mut argv = vec![
        "nst render",
        "--content",
        "c.png",
        "--style",
        "s.png",
        "--out",
        "o.png",
    ];
    argv.extend_from_slice(extra);
    Line::try_parse_from(argv).map(|l| l.args)
}

/// One line of a batch file: parsed into a job, its arguments through clap, and its
/// objective's settings checked.
pub fn batch_line(input: &[u8]) -> bool {
    let Ok(line) = std::str::from_utf8(input) else {
        return false;
    };
    let Ok(argv) = batch::job_argv(line, Path::new("jobs")) else {
        return false;
    };
    let Ok(line) = Line::try_parse_from(&argv) else {
        return false;
    };
    line.args.options.objective.config().is_ok() && line.args.options.schedule().is_ok()
}

/// A `--scales` value: the schedule, and its largest scale fitted to a 4:3 photo against
/// the pixel limit, as `render` checks it.
pub fn scales(input: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(input) else {
        return false;
    };
    let Ok(args) = render_args(&["--scales", text]) else {
        return false;
    };
    let Ok((sizes, _)) = args.options.schedule() else {
        return false;
    };
    let photo = nst_style::Image::new(4, 3, vec![0.0; 36]).expect("a 4x3 image");
    let long = sizes.iter().copied().max().unwrap_or(0);
    let (w, h) = photo.fitted_size(long);
    (w as u64).saturating_mul(h as u64) <= args.options.model.max_pixels
}

/// A `--style-layers` value: parsed into names and multipliers, each name looked up in
/// VGG19's layer table.
pub fn style_layers(input: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(input) else {
        return false;
    };
    let Ok(args) = render_args(&["--style-layers", text]) else {
        return false;
    };
    let Ok(cfg) = args.options.objective.config() else {
        return false;
    };
    let names: Vec<String> = nst_vgg::Arch::Vgg19
        .layers()
        .into_iter()
        .map(|l| l.name)
        .collect();
    cfg.style_layers
        .iter()
        .all(|(n, w)| w.is_finite() && names.contains(n))
}

/// A render's settings as `nst studio` takes them from a client (`POST /api/jobs`): parsed
/// and checked; an accepted one must make an `nst render` command line that clap accepts
/// (a panic otherwise: the studio would queue a render that cannot start).
pub fn studio_spec(input: &[u8]) -> bool {
    let Ok(spec) = crate::studio::spec::Spec::parse(input) else {
        return false;
    };
    let machine = crate::studio::spec::Machine {
        threads: 2,
        device: "cpu".into(),
        max_pixels: crate::io::DEFAULT_MAX_PIXELS,
        weights: None,
        checkpoint_every: "auto".into(),
    };
    let mut argv: Vec<std::ffi::OsString> = vec!["nst render".into()];
    argv.extend(spec.options(|id| format!("{id}.png").into(), &machine));
    argv.extend(["--out".into(), "o.png".into()]);
    if let Err(e) = Line::try_parse_from(&argv) {
        panic!("accepted settings make a command line clap refuses: {e}");
    }
    true
}

/// A web view serving for the whole run, with the placeholders its seeds use replaced.
struct Server {
    /// Held for the run: the server lives as long as its view.
    _view: crate::web::WebView,
    addr: String,
    token: String,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let view = crate::web::WebView::start(
            "127.0.0.1:0".parse().expect("an address"),
            "{\"fuzz\":true}".into(),
        )
        .expect("a loopback web view");
        view.progress("{\"state\":\"running\",\"step\":1}".into());
        let url = view.url().to_string();
        let addr = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .expect("an authority")
            .to_string();
        let token = url.split("token=").nth(1).unwrap_or_default().to_string();
        Server {
            _view: view,
            addr,
            token,
        }
    })
}

/// Whether `answer` holds a whole response: its head, and as much body as its
/// `Content-Length` says.
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    length.is_some_and(|n| answer.len() >= end + 4 + n)
}

/// Sends `request` and reads the first answer: until it is complete, the server closes,
/// 1 MB has come, or nothing came for 200 ms (an incomplete request waits for more).
fn exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 << 10];
    while answer.len() < 1 << 20 && !complete(&answer) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    answer
}

/// Raw bytes sent to the web view (`{HOST}` and `{TOKEN}` in the input stand for the
/// server's address and token); accepted when it answers 200. Afterwards the server must
/// still answer a well-formed request, or the input broke it (a panic here).
pub fn http(input: &[u8]) -> bool {
    let s = server();
    let mut request = Vec::with_capacity(input.len() + 64);
    let mut rest = input;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix(b"{HOST}") {
            request.extend_from_slice(s.addr.as_bytes());
            rest = r;
        } else if let Some(r) = rest.strip_prefix(b"{TOKEN}") {
            request.extend_from_slice(s.token.as_bytes());
            rest = r;
        } else {
            request.push(rest[0]);
            rest = &rest[1..];
        }
    }
    let answer = exchange(&s.addr, &request);
    let ok = answer.starts_with(b"HTTP/1.1 200");
    let probe = format!(
        "GET /progress?token={} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        s.token, s.addr
    );
    let alive = exchange(&s.addr, probe.as_bytes());
    assert!(
        alive.starts_with(b"HTTP/1.1 200"),
        "the web view stopped answering after this input (got {:?})",
        String::from_utf8_lossy(&alive[..alive.len().min(80)])
    );
    ok
}
