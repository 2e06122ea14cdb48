//! Per-app log capture for applications run inside the test process.
//!
//! One global `tracing` subscriber is installed (once per process) with the
//! binary's text format: the `fmt` layer, `RUST_LOG` or else `info`. Its
//! writer sends each event to the buffer of the app whose thread produced
//! it, and everything else to stderr (through `eprint!`, so the test harness
//! captures it):
//! - the app's own thread and its tokio runtime's threads (workers and
//!   blocking pool) carry the app's id in a thread-local, set when they start;
//! - actix-web's worker threads belong to the actix `System` the app's thread
//!   created, and are found through the system's id.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, Once, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

/// The text an app has logged so far.
pub type Buffer = Arc<Mutex<String>>;

#[derive(Default)]
struct Registry {
    /// App id to its buffer.
    apps: HashMap<u64, Buffer>,
    /// actix `System` id to app id.
    systems: HashMap<usize, u64>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

thread_local! {
    static APP: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Installs the global subscriber on first use; panics if another one was
/// installed first (the logs of in-process apps would not be captured).
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(RouteWriter)
            .try_init()
            .expect("the log capture of in-process apps is the only global tracing subscriber");
    });
}

/// Starts capturing the logs of app `id` into `buffer`.
pub fn register(id: u64, buffer: Buffer) {
    registry().lock().unwrap().apps.insert(id, buffer);
}

/// Marks the current thread as one of app `id`'s.
pub fn enter(id: u64) {
    APP.with(|a| a.set(Some(id)));
}

/// Routes the events of the threads of actix `System` `system` to app `id`.
pub fn register_system(system: usize, id: u64) {
    registry().lock().unwrap().systems.insert(system, id);
}

/// Stops capturing app `id`'s logs; later events of its threads go to stderr.
pub fn unregister(id: u64) {
    let mut r = registry().lock().unwrap();
    r.apps.remove(&id);
    r.systems.retain(|_, app| *app != id);
}

fn current_buffer() -> Option<Buffer> {
    let system = actix_web::rt::System::try_current().map(|s| s.id());
    let app = APP.with(|a| a.get());
    let r = registry().lock().unwrap();
    let id = app.or_else(|| system.and_then(|s| r.systems.get(&s).copied()))?;
    r.apps.get(&id).cloned()
}

struct RouteWriter;

impl<'a> MakeWriter<'a> for RouteWriter {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        match current_buffer() {
            Some(buffer) => Sink::App(buffer),
            None => Sink::Stderr,
        }
    }
}

enum Sink {
    App(Buffer),
    Stderr,
}

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        match self {
            Sink::App(b) => b.lock().unwrap_or_else(|e| e.into_inner()).push_str(&text),
            Sink::Stderr => eprint!("{text}"),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
